// train_bench: the reference for `keel bench train`. One SFT step exactly as keel's trainer runs it (the same
// decoder ops as decode_bench, next-token cross-entropy through log_softmax + gather, backward, global
// gradient-norm clipping, and torch.optim.AdamW's update per parameter) straight on libtorch's C++ API.
//
// usage: train_bench HIDDEN INTER LAYERS HEADS KV_HEADS VOCAB BATCH SEQ STEPS [THREADS]
// prints: tokens_per_s=X
#include <torch/torch.h>
#include <torch/version.h>

#include "bench_ops.h"
#include "../keel_linear.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>



using keelbench::attend;
using keelbench::repeat_kv;
using keelbench::rms_norm;
using keelbench::rope;

int main(int argc, char **argv) {
  if (argc < 10) {
    std::fprintf(stderr, "usage: train_bench HIDDEN INTER LAYERS HEADS KV_HEADS VOCAB BATCH SEQ STEPS [THREADS]\n");
    return 2;
  }
  int64_t d = std::atoll(argv[1]), ff = std::atoll(argv[2]), L = std::atoll(argv[3]), H = std::atoll(argv[4]),
          KV = std::atoll(argv[5]), V = std::atoll(argv[6]), B = std::atoll(argv[7]), T = std::atoll(argv[8]), N = std::atoll(argv[9]);
  // Without a count, BLAS follows libtorch's default (as the shim does at load).
  keelbench::set_threads(argc > 10 ? std::atoi(argv[10]) : at::get_num_threads());
  int64_t hd = d / H;
  torch::manual_seed(42);
  std::vector<at::Tensor> params;
  auto param = [&](at::Tensor t) {
    t.set_requires_grad(true);
    params.push_back(t);
    return t;
  };
  // keel's initialisation for training from scratch (model.NewTrainable, GPT-2's): N(0, 0.02^2), the projections
  // into the residual stream scaled by 1/sqrt(2 L), norms 1. Both sides must draw the same distributions: a
  // model whose logits saturate the softmax makes denormal gradients, which cost the matrix products 4x and more.
  auto randw = [&](int64_t out, int64_t in) { return param(at::randn({out, in}) * 0.02); };
  auto resid = [&](int64_t out, int64_t in) { return param(at::randn({out, in}) * (0.02 / std::sqrt(2.0 * double(L)))); };
  auto embed = param(at::randn({V, d}) * 0.02);
  struct Layer { at::Tensor an, mn, q, k, v, o, gate, up, down; };
  std::vector<Layer> layers;
  for (int64_t i = 0; i < L; i++) {
    layers.push_back({param(at::ones({d})), param(at::ones({d})), randw(H * hd, d), randw(KV * hd, d), randw(KV * hd, d),
                      resid(d, H * hd), randw(ff, d), randw(ff, d), resid(d, ff)});
  }
  auto norm = param(at::ones({d}));
  std::vector<at::Tensor> m1, m2;
  for (auto &p : params) {
    m1.push_back(at::zeros_like(p));
    m2.push_back(at::zeros_like(p));
  }
  auto inv = 1.0 / at::pow(10000.0, at::arange(0, hd, 2, at::kFloat) / double(hd));
  auto freqs = at::outer(at::arange(T, at::kFloat), inv);
  auto emb = at::cat({freqs, freqs}, -1);
  auto cos = emb.cos().reshape({1, 1, T, hd}), sin = emb.sin().reshape({1, 1, T, hd});
  double scale = 1.0 / std::sqrt(double(hd));
  auto causal = at::ones({T, T}, at::kBool).tril(0);

  auto step = [&](int64_t s) {
    auto ids = at::randint(3, V, {B, T + 1}, at::kLong);
    auto inputs = ids.narrow(1, 0, T), targets = ids.narrow(1, 1, T).unsqueeze(-1);
    auto mask = at::ones({B, T, 1});
    auto x = at::embedding(embed, inputs);
    for (auto &l : layers) {
      auto h = rms_norm(x, l.an, 1e-5);
      auto q = rope(keel_linear(h, l.q, nullptr).reshape({B, T, H, hd}).transpose(1, 2), cos, sin);
      auto k = rope(keel_linear(h, l.k, nullptr).reshape({B, T, KV, hd}).transpose(1, 2), cos, sin);
      auto v = keel_linear(h, l.v, nullptr).reshape({B, T, KV, hd}).transpose(1, 2);
#if TORCH_VERSION_MAJOR >= 2
      auto a = at::scaled_dot_product_attention(q, repeat_kv(k, H), repeat_kv(v, H), c10::nullopt, 0.0, true, scale);
#else
      auto a = attend(q, k, v, at::logical_not(causal), scale);
#endif
      x = x + keel_linear(a.transpose(1, 2).reshape({B, T, H * hd}), l.o, nullptr);
      h = rms_norm(x, l.mn, 1e-5);
      x = x + keel_linear(at::silu(keel_linear(h, l.gate, nullptr)) * keel_linear(h, l.up, nullptr), l.down, nullptr);
    }
    auto logits = keel_linear(rms_norm(x, norm, 1e-5), embed, nullptr);
    auto lp = at::log_softmax(logits, -1);
    auto loss = -(at::gather(lp, 2, targets) * mask).sum() / at::clamp_min(mask.sum(), 1);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, 1.0);
    torch::NoGradGuard no_grad;
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    double bc1 = 1 - std::pow(b1, double(s)), bc2 = 1 - std::pow(b2, double(s));
    for (size_t i = 0; i < params.size(); i++) {
      auto &p = params[i];
      auto g = p.grad();
      m1[i].mul_(b1).add_(g, 1 - b1);
      m2[i].mul_(b2).addcmul_(g, g, 1 - b2);
      auto denom = (m2[i].sqrt() / std::sqrt(bc2)).add_(eps);
      p.addcdiv_(m1[i], denom, -lr / bc1);
      p.mutable_grad().reset();
    }
  };
  step(1);  // warm-up
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = 2; s < N + 2; s++) step(s);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tokens_per_s=%.6f\n", double(N * B * T) / secs);
  return 0;
}

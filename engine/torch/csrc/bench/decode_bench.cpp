// decode_bench: the reference for `keel bench decode`: a plain C++ loop on libtorch running the same Llama decode
// step as keel's Go decoder (RMSNorm in float32, rotate-half RoPE, a preallocated KV cache, grouped-query
// attention, SwiGLU, greedy argmax), with every projection through keel_linear as keel's are (one row on the CPU
// is a gemv), so the ratio isolates what keel's Go side and C ABI cost. The clock starts after the prefill and
// covers TOKENS decode steps, each ending with the argmax read back to the host, as keel's does.
//
// usage: decode_bench HIDDEN INTER LAYERS HEADS KV_HEADS VOCAB PROMPT TOKENS [THREADS]
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

namespace {

struct Layer {
  at::Tensor attn_norm, mlp_norm, q, k, v, o, gate, up, down;
};

}  // namespace

using keelbench::attend;
using keelbench::repeat_kv;
using keelbench::rms_norm;
using keelbench::rope;

int main(int argc, char **argv) {
  if (argc < 9) {
    std::fprintf(stderr, "usage: decode_bench HIDDEN INTER LAYERS HEADS KV_HEADS VOCAB PROMPT TOKENS [THREADS]\n");
    return 2;
  }
  int64_t d = std::atoll(argv[1]), ff = std::atoll(argv[2]), L = std::atoll(argv[3]), H = std::atoll(argv[4]),
          KV = std::atoll(argv[5]), V = std::atoll(argv[6]), P = std::atoll(argv[7]), N = std::atoll(argv[8]);
  // Without a count, BLAS follows libtorch's default (as the shim does at load).
  keelbench::set_threads(argc > 9 ? std::atoi(argv[9]) : at::get_num_threads());
  int64_t hd = d / H;
  torch::NoGradGuard no_grad;
  torch::manual_seed(42);
  auto randw = [](int64_t out, int64_t in) { return at::randn({out, in}) * (1.0 / std::sqrt(double(in))); };
  auto embed = at::randn({V, d});
  std::vector<Layer> layers;
  for (int64_t i = 0; i < L; i++) {
    layers.push_back({at::randn({d}) * 0.1 + 1, at::randn({d}) * 0.1 + 1, randw(H * hd, d), randw(KV * hd, d), randw(KV * hd, d),
                      randw(d, H * hd), randw(ff, d), randw(ff, d), randw(d, ff)});
  }
  auto norm = at::randn({d}) * 0.1 + 1;
  int64_t cap = P + N;
  std::vector<at::Tensor> kc, vc;
  for (int64_t i = 0; i < L; i++) {
    kc.push_back(at::zeros({1, KV, cap, hd}));
    vc.push_back(at::zeros({1, KV, cap, hd}));
  }
  // RoPE tables as keel builds them (float32, halves repeated).
  auto inv = 1.0 / at::pow(10000.0, at::arange(0, hd, 2, at::kFloat) / double(hd));
  auto freqs = at::outer(at::arange(cap, at::kFloat), inv);
  auto emb = at::cat({freqs, freqs}, -1);
  auto cos_t = emb.cos(), sin_t = emb.sin();
  double scale = 1.0 / std::sqrt(double(hd));

  auto step = [&](const at::Tensor &ids, int64_t start) {
    int64_t T = ids.size(1);
    auto pos = at::arange(start, start + T, at::kLong);
    auto cos = cos_t.index_select(0, pos).reshape({1, 1, T, hd});
    auto sin = sin_t.index_select(0, pos).reshape({1, 1, T, hd});
    auto x = at::embedding(embed, ids);
    for (int64_t i = 0; i < L; i++) {
      auto &l = layers[i];
      auto h = rms_norm(x, l.attn_norm, 1e-5);
      auto q = keel_linear(h, l.q, nullptr).reshape({1, T, H, hd});
      auto k = keel_linear(h, l.k, nullptr).reshape({1, T, KV, hd});
      auto v = keel_linear(h, l.v, nullptr).reshape({1, T, KV, hd});
      q = rope(q.transpose(1, 2), cos, sin);
      k = rope(k.transpose(1, 2), cos, sin);
      v = v.transpose(1, 2);
      kc[i].narrow(2, start, T).copy_(k);
      vc[i].narrow(2, start, T).copy_(v);
      at::Tensor a;
#if TORCH_VERSION_MAJOR >= 2
      a = at::scaled_dot_product_attention(q, repeat_kv(kc[i].narrow(2, 0, start + T), H), repeat_kv(vc[i].narrow(2, 0, start + T), H),
                                           c10::nullopt, 0.0, T > 1, scale);
#else
      at::Tensor hidden;
      if (T > 1) hidden = at::ones({T, start + T}, at::kBool).tril(start).logical_not();
      a = attend(q, kc[i].narrow(2, 0, start + T), vc[i].narrow(2, 0, start + T), hidden, scale);
#endif
      auto o = keel_linear(a.transpose(1, 2).reshape({1, T, H * hd}), l.o, nullptr);
      x = x + o;
      h = rms_norm(x, l.mlp_norm, 1e-5);
      x = x + keel_linear(at::silu(keel_linear(h, l.gate, nullptr)) * keel_linear(h, l.up, nullptr), l.down, nullptr);
    }
    x = x.narrow(1, T - 1, 1);
    auto logits = keel_linear(rms_norm(x, norm, 1e-5), embed, nullptr);
    return logits.argmax(-1).item<int64_t>();
  };

  auto prompt = at::randint(3, V, {1, P}, at::kLong);
  int64_t next = step(prompt, 0);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < N; i++) {
    next = step(at::full({1, 1}, next, at::kLong), P + i);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tokens_per_s=%.6f\n", double(N) / secs);
  return 0;
}

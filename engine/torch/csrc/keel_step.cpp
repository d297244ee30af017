// keel_step.cpp: a whole decoder step in one call (keel_torch.h, "Fused decode steps"), float32 on the CPU.
//
// The arithmetic is engine/model/decoder.go's, written as loops over the weights' memory (norms, RoPE, attention
// over the cache, activations, interventions, and the matrix products BLAS does worse; see linear), with no
// tensor created per token.
#include "keel_shim.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

using namespace keel_shim;

namespace {

// The least work (multiply-adds) worth handing to another thread: waking libtorch's pool costs more than the
// products of a small model (its matrices run on the calling thread).
constexpr int64_t kParallelGrain = 1 << 20;

enum Act { kSilu = KT_ACT_SILU, kGeluTanh = KT_ACT_GELU_TANH, kGelu = KT_ACT_GELU };
enum QKNorm { kNoQKNorm = KT_QKNORM_NONE, kHeadQKNorm = KT_QKNORM_HEAD, kFullQKNorm = KT_QKNORM_FULL };
enum Norms { kNormsBefore = KT_NORMS_BEFORE, kNormsSandwich = KT_NORMS_SANDWICH, kNormsAfter = KT_NORMS_AFTER };

// A weight matrix [out, in] with the views a product needs, made once.
struct Matrix {
  at::Tensor w, wt;  // wt = w^T, for mm_out
  int64_t out = 0, in = 0;
  bool defined() const { return w.defined(); }
};

struct Layer {
  at::Tensor attn_norm, mlp_norm, attn_post, mlp_post, q_norm, k_norm;
  at::Tensor q_bias, k_bias, v_bias, o_bias;
  Matrix q, k, v, o, gate, up, down;
  bool sliding = false;
};

struct Decoder {
  int64_t layers, hidden, heads, kv_heads, head_dim, inter, vocab, act, qk_norm, norms, window, local_rope;
  double eps, norm_offset, embed_mult, attn_scale, attn_softcap, final_softcap;
  at::Tensor embed, norm;
  Matrix lm_head;
  std::vector<Layer> layer;
};

struct Hook {
  int64_t layer, kind, full, dirs, ceiling;
  double tau;
  std::vector<float> vecs;
  std::vector<int64_t> rows;
  bool every_row;
  int64_t width;  // record values per row
};

struct StepHooks {
  std::vector<Hook> list;  // in forward order: by layer, then as listed
  int64_t width = 0;       // record values per row
};

const float *fdata(const at::Tensor &t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// A float32 CPU tensor of the expected element count, contiguous, or an error naming what it is.
at::Tensor checked(const at::Tensor &t, int64_t numel, const char *what, bool optional) {
  if (!t.defined()) {
    if (optional) return t;
    throw std::invalid_argument(std::string("fused step: missing ") + what);
  }
  if (!t.device().is_cpu() || t.scalar_type() != at::kFloat) throw std::invalid_argument(std::string("fused step: ") + what + " is not float32 on the CPU");
  if (!t.is_contiguous()) throw std::invalid_argument(std::string("fused step: ") + what + " is not contiguous");
  if (t.numel() != numel) throw std::invalid_argument(std::string("fused step: ") + what + " has " + std::to_string(t.numel()) + " values, expected " + std::to_string(numel));
  return t;
}

Matrix matrix(const at::Tensor &t, int64_t out, int64_t in, const char *what) {
  Matrix m;
  m.w = checked(t, out * in, what, false);
  m.wt = m.w.view({out, in}).t();
  m.out = out;
  m.in = in;
  return m;
}

// Inlined: attention over heads of 8 values calls it once per cached key.
__attribute__((always_inline)) inline float dot(const float *a, const float *b, int64_t n) {
  float acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
  return acc;
}

// The loops that carry a step's arithmetic are compiled for AVX-512, AVX2 and the baseline, chosen by the CPU's
// features at load (GCC's target_clones): the shim is built for any x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KT_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KT_VECTOR_CLONES
#endif

// y[b, r] = <W[r], x[b]> for rows [r0, r1) of W, four rows of W at a time against each input: four independent
// sums per pass over x (one sum's additions wait on each other), and a batch reads each weight row from L1
// rather than memory (BLAS's gemm packs all of W at every call, which for a few rows costs more than the product).
KT_VECTOR_CLONES void rows_times(const float *w, int64_t in, int64_t out, int64_t r0, int64_t r1, const float *x, int64_t B, float *y) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const float *__restrict w0 = w + r * in, *__restrict w1 = w0 + in, *__restrict w2 = w1 + in, *__restrict w3 = w2 + in;
    for (int64_t b = 0; b < B; b++) {
      const float *__restrict xb = x + b * in;
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t i = 0; i < in; i++) {
        a0 += w0[i] * xb[i];
        a1 += w1[i] * xb[i];
        a2 += w2[i] * xb[i];
        a3 += w3[i] * xb[i];
      }
      float *yb = y + b * out + r;
      yb[0] = a0;
      yb[1] = a1;
      yb[2] = a2;
      yb[3] = a3;
    }
  }
  for (; r < r1; r++) {
    const float *__restrict wr = w + r * in;
    for (int64_t b = 0; b < B; b++) {
      const float *__restrict xb = x + b * in;
      float acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < in; i++) acc += wr[i] * xb[i];
      y[b * out + r] = acc;
    }
  }
}

// Which products rows_times computes: one row against a matrix of up to kOwnGemv weights (BLAS's gemv costs
// more per call than their arithmetic; larger ones go to it, its threads reading memory in parallel), and batches
// of 2 to kOwnBatch rows against any matrix (gemm packs the whole matrix at each call, which for a few rows cost
// more than the product); larger batches amortise the packing.
constexpr int64_t kOwnGemv = 1 << 15;
constexpr int64_t kOwnBatch = 16;

// y[B, out] = x[B, in] W^T (+ bias).
void linear(const Matrix &m, const at::Tensor &bias, const float *x, int64_t B, float *y) {
  const float *w = m.w.data_ptr<float>();
  if (B == 1 ? m.out * m.in <= kOwnGemv : B <= kOwnBatch) {
    const int64_t grain = std::max<int64_t>(4, kParallelGrain / std::max<int64_t>(1, m.in * B));
    at::parallel_for(0, m.out, grain, [&](int64_t r0, int64_t r1) { rows_times(w, m.in, m.out, r0, r1, x, B, y); });
  } else {
    auto opts = at::TensorOptions().dtype(at::kFloat);
    if (B == 1) {
      auto yt = at::from_blob(y, {m.out}, opts);
      at::mv_out(yt, m.w, at::from_blob(const_cast<float *>(x), {m.in}, opts));
    } else {
      auto yt = at::from_blob(y, {B, m.out}, opts);
      at::mm_out(yt, at::from_blob(const_cast<float *>(x), {B, m.in}, opts), m.wt);
    }
  }
  if (bias.defined()) {
    const float *bv = bias.data_ptr<float>();
    for (int64_t b = 0; b < B; b++)
      for (int64_t r = 0; r < m.out; r++) y[b * m.out + r] += bv[r];
  }
}

// Hugging Face's RMSNorm in float32 over rows of n values: w * x/rms(x), or (offset + w) * x/rms(x).
void rms_norm(const float *x, const float *w, int64_t rows, int64_t n, double eps, double offset, float *y) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    float *yr = y + r * n;
    float ss = dot(xr, xr, n);
    float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
    if (offset != 0) {
      float off = static_cast<float>(offset);
      for (int64_t i = 0; i < n; i++) yr[i] = xr[i] * inv * (w[i] + off);
    } else {
      for (int64_t i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * inv);
    }
  }
}

// Rotate-half RoPE of one head in place: x*cos + (-x2, x1)*sin.
void rope(float *x, const float *cos, const float *sin, int64_t d) {
  int64_t half = d / 2;
  for (int64_t i = 0; i < half; i++) {
    float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

float activate(int64_t act, float x) {
  switch (act) {
    case kGeluTanh: {
      const float k = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }
    case kGelu:
      return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
  }
  return x / (1.0f + std::exp(-x));
}

bool acts_on(const Hook &h, int64_t row) {
  return h.every_row || std::find(h.rows.begin(), h.rows.end(), row) != h.rows.end();
}

// The interventions of layer l on x [B, D] (list[next...] while they are l's), writing each row's records at
// their offsets.
void run_hooks(const StepHooks &hs, int64_t l, size_t &next, float *x, int64_t B, int64_t D, float *records, int64_t &offset) {
  const int64_t width = hs.width;
  for (; next < hs.list.size() && hs.list[next].layer == l; next++) {
    const Hook &h = hs.list[next];
    for (int64_t b = 0; b < B; b++) {
      float *xb = x + b * D;
      float *rec = records + b * width + offset;
      switch (h.kind) {
        case KT_HOOK_CAPTURE:
          if (h.full) {
            std::copy(xb, xb + D, rec);
          } else {
            for (int64_t k = 0; k < h.dirs; k++) rec[k] = dot(xb, h.vecs.data() + k * D, D);
          }
          break;
        case KT_HOOK_ADD:  // the coefficient folded in
          if (acts_on(h, b))
            for (int64_t i = 0; i < D; i++) xb[i] += h.vecs[i];
          break;
        case KT_HOOK_CAP: {  // excess = <x,u> - tau, kept where it breaks the bound; x -= excess*u
          const float *u = h.vecs.data();
          float e = dot(xb, u, D) - static_cast<float>(h.tau);
          e = h.ceiling ? std::max(e, 0.0f) : std::min(e, 0.0f);
          if (!acts_on(h, b)) e = 0;
          for (int64_t i = 0; i < D; i++) xb[i] -= e * u[i];
          rec[0] = -e;
          break;
        }
      }
    }
    offset += h.width;
  }
}

}  // namespace

extern "C" {

char *kt_decoder_new(const kt_decoder_config *c, const kt_tensor *weights, int64_t nweights, kt_decoder *out) {
  KT_TRY
  auto d = std::make_unique<Decoder>();
  d->layers = c->layers;
  d->hidden = c->hidden;
  d->heads = c->heads;
  d->kv_heads = c->kv_heads;
  d->head_dim = c->head_dim;
  d->inter = c->intermediate;
  d->vocab = c->vocab;
  d->act = c->act;
  d->qk_norm = c->qk_norm;
  d->norms = c->norms;
  d->window = c->sliding_window;
  d->local_rope = c->local_rope;
  d->eps = c->rms_eps;
  d->norm_offset = c->norm_offset;
  d->embed_mult = c->embed_mult;
  d->attn_scale = c->attn_scale;
  d->attn_softcap = c->attn_softcap;
  d->final_softcap = c->final_softcap;
  if (c->sliding == nullptr) throw std::invalid_argument("fused step: no sliding flags");
  if (d->layers < 1 || d->hidden < 1 || d->heads < 1 || d->kv_heads < 1 || d->heads % d->kv_heads != 0 || d->head_dim < 2 || d->head_dim % 2 != 0)
    throw std::invalid_argument("fused step: bad decoder shape");
  if (nweights != 3 + KT_DEC_PER_LAYER * d->layers) throw std::invalid_argument("fused step: wrong number of weights");
  auto get = [&](int64_t i) -> at::Tensor { return weights[i] == nullptr ? at::Tensor() : T(weights[i]); };
  int64_t D = d->hidden, H = d->heads, KV = d->kv_heads, hd = d->head_dim, I = d->inter;
  d->embed = checked(get(0), d->vocab * D, "embed_tokens", false);
  d->norm = checked(get(1), D, "norm", false);
  d->lm_head = matrix(get(2), d->vocab, D, "lm_head");
  for (int64_t l = 0; l < d->layers; l++) {
    const int64_t o = 3 + KT_DEC_PER_LAYER * l;
    Layer L;
    L.attn_norm = checked(get(o + 0), D, "input_layernorm", d->norms == kNormsAfter);
    L.q = matrix(get(o + 1), H * hd, D, "q_proj");
    L.k = matrix(get(o + 2), KV * hd, D, "k_proj");
    L.v = matrix(get(o + 3), KV * hd, D, "v_proj");
    L.o = matrix(get(o + 4), D, H * hd, "o_proj");
    L.q_bias = checked(get(o + 5), H * hd, "q_proj bias", true);
    L.k_bias = checked(get(o + 6), KV * hd, "k_proj bias", true);
    L.v_bias = checked(get(o + 7), KV * hd, "v_proj bias", true);
    L.o_bias = checked(get(o + 8), D, "o_proj bias", true);
    bool full = d->qk_norm == kFullQKNorm;
    L.q_norm = checked(get(o + 9), full ? H * hd : hd, "q_norm", d->qk_norm == kNoQKNorm);
    L.k_norm = checked(get(o + 10), full ? KV * hd : hd, "k_norm", d->qk_norm == kNoQKNorm);
    L.mlp_norm = checked(get(o + 11), D, "post_attention_layernorm", d->norms == kNormsAfter);
    L.gate = matrix(get(o + 12), I, D, "gate_proj");
    L.up = matrix(get(o + 13), I, D, "up_proj");
    L.down = matrix(get(o + 14), D, I, "down_proj");
    L.attn_post = checked(get(o + 15), D, "post-attention norm", d->norms == kNormsBefore);
    L.mlp_post = checked(get(o + 16), D, "post-MLP norm", d->norms == kNormsBefore);
    L.sliding = c->sliding[l] != 0;
    d->layer.push_back(std::move(L));
  }
  *out = d.release();
  KT_CATCH
}

void kt_decoder_free(kt_decoder d) { delete static_cast<Decoder *>(d); }

char *kt_step_hooks_new(const int64_t *desc, int64_t n, const double *param, const float *vecs, const int64_t *rows, int64_t hidden, kt_step_hooks *out) {
  KT_TRY
  auto hs = std::make_unique<StepHooks>();
  int64_t v = 0, r = 0;
  for (int64_t i = 0; i < n; i++) {
    const int64_t *e = desc + 6 * i;
    Hook h{e[0], e[1], e[2], e[3], e[4], param[i], {}, {}, e[5] < 0, 0};
    if (h.layer < 0 || (i > 0 && h.layer < hs->list.back().layer)) throw std::invalid_argument("fused step: interventions out of layer order");
    int64_t nv = 0;
    switch (h.kind) {
      case KT_HOOK_CAPTURE:
        nv = h.full ? 0 : h.dirs * hidden;
        h.width = h.full ? hidden : h.dirs;
        break;
      case KT_HOOK_ADD:
        nv = hidden;
        break;
      case KT_HOOK_CAP:
        nv = hidden;
        h.width = 1;
        break;
      default:
        throw std::invalid_argument("fused step: unknown intervention kind " + std::to_string(h.kind));
    }
    h.vecs.assign(vecs + v, vecs + v + nv);
    v += nv;
    if (e[5] > 0) {
      h.rows.assign(rows + r, rows + r + e[5]);
      r += e[5];
    }
    hs->width += h.width;
    hs->list.push_back(std::move(h));
  }
  *out = hs.release();
  KT_CATCH
}

void kt_step_hooks_free(kt_step_hooks h) { delete static_cast<StepHooks *>(h); }

char *kt_decoder_step(kt_decoder dec, kt_step_hooks hooks, const int64_t *args, const kt_tensor *cache, const kt_tensor *ropes, float *logits, float *records) {
  KT_TRY
  at::NoGradGuard no_grad;
  const Decoder &d = *static_cast<Decoder *>(dec);
  const StepHooks *hs = static_cast<const StepHooks *>(hooks);
  const int64_t B = args[0], start = args[1];
  const int64_t *ids = args + 2, *pad = args + 2 + B, *pos = args + 2 + 2 * B;
  const int64_t D = d.hidden, H = d.heads, KV = d.kv_heads, hd = d.head_dim, I = d.inter, group = H / KV;
  if (hs != nullptr && !hs->list.empty() && hs->list.back().layer >= d.layers) throw std::invalid_argument("fused step: intervention layer out of range");
  std::vector<float> x(B * D), h(B * D), q(B * H * hd), k(B * KV * hd), v(B * KV * hd), att(B * H * hd), o(B * D);
  std::vector<float> gate(B * I), up(B * I);
  const float *embed = d.embed.data_ptr<float>();
  for (int64_t b = 0; b < B; b++) {
    if (ids[b] < 0 || ids[b] >= d.vocab) throw std::invalid_argument("fused step: token id outside the vocabulary");
    const float *e = embed + ids[b] * D;
    for (int64_t i = 0; i < D; i++) x[b * D + i] = d.embed_mult != 0 ? e[i] * static_cast<float>(d.embed_mult) : e[i];
  }
  int64_t offset = 0;
  size_t next_hook = 0;
  for (int64_t l = 0; l < d.layers; l++) {
    const Layer &L = d.layer[l];
    const float *xin = x.data();
    if (d.norms != kNormsAfter) {
      rms_norm(x.data(), fdata(L.attn_norm), B, D, d.eps, d.norm_offset, h.data());
      xin = h.data();
    }
    linear(L.q, L.q_bias, xin, B, q.data());
    linear(L.k, L.k_bias, xin, B, k.data());
    linear(L.v, L.v_bias, xin, B, v.data());
    if (d.qk_norm == kFullQKNorm) {
      rms_norm(q.data(), fdata(L.q_norm), B, H * hd, d.eps, d.norm_offset, q.data());
      rms_norm(k.data(), fdata(L.k_norm), B, KV * hd, d.eps, d.norm_offset, k.data());
    } else if (d.qk_norm == kHeadQKNorm) {
      rms_norm(q.data(), fdata(L.q_norm), B * H, hd, d.eps, d.norm_offset, q.data());
      rms_norm(k.data(), fdata(L.k_norm), B * KV, hd, d.eps, d.norm_offset, k.data());
    }
    const int64_t table = (d.local_rope && L.sliding) ? 2 : 0;
    const at::Tensor &cos_t = T(ropes[table]), &sin_t = T(ropes[table + 1]);
    if (!cos_t.is_contiguous() || cos_t.scalar_type() != at::kFloat || cos_t.dim() != 2 || cos_t.size(1) != hd || !sin_t.is_contiguous() || sin_t.sizes() != cos_t.sizes())
      throw std::invalid_argument("fused step: RoPE tables are not float32 [positions, head_dim]");
    at::Tensor &Kc = T(cache[2 * l]), &Vc = T(cache[2 * l + 1]);
    if (Kc.scalar_type() != at::kFloat || Kc.dim() != 4 || Kc.size(0) < B || Kc.size(1) != KV || Kc.size(3) != hd || Kc.stride(3) != 1 || Kc.size(2) <= start || Vc.sizes() != Kc.sizes() || Vc.strides() != Kc.strides())
      throw std::invalid_argument("fused step: the KV cache does not fit the decoder or has no room");
    float *kc = Kc.data_ptr<float>(), *vc = Vc.data_ptr<float>();
    const int64_t sb = Kc.stride(0), sh = Kc.stride(1), sp = Kc.stride(2);
    for (int64_t b = 0; b < B; b++) {
      if (pos[b] < 0 || pos[b] >= cos_t.size(0)) throw std::invalid_argument("fused step: position beyond the RoPE table");
      const float *c = cos_t.data_ptr<float>() + pos[b] * hd, *s = sin_t.data_ptr<float>() + pos[b] * hd;
      for (int64_t i = 0; i < H; i++) rope(q.data() + (b * H + i) * hd, c, s, hd);
      for (int64_t i = 0; i < KV; i++) {
        float *kh = k.data() + (b * KV + i) * hd;
        rope(kh, c, s, hd);
        std::copy(kh, kh + hd, kc + b * sb + i * sh + start * sp);
        const float *vh = v.data() + (b * KV + i) * hd;
        std::copy(vh, vh + hd, vc + b * sb + i * sh + start * sp);
      }
    }
    // Attention of each row's one query over its cached keys: from its first real position (after the left
    // padding), and within the window on sliding layers.
    const float scale = static_cast<float>(d.attn_scale), cap = static_cast<float>(d.attn_softcap);
    at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
      std::vector<float> scores(start + 1);
      for (int64_t bh = lo; bh < hi; bh++) {
        const int64_t b = bh / H, head = bh % H, kvh = head / group;
        int64_t first = std::max<int64_t>(pad[b], 0);
        if (L.sliding && d.window > 0) first = std::max(first, start - d.window + 1);
        first = std::min(first, start);  // a query always sees itself (decoder.go's masks do the same)
        const float *qh = q.data() + bh * hd;
        const float *kb = kc + b * sb + kvh * sh, *vb = vc + b * sb + kvh * sh;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t j = first; j <= start; j++) {
          float sc = dot(qh, kb + j * sp, hd) * scale;
          if (cap > 0) sc = std::tanh(sc / cap) * cap;
          scores[j] = sc;
          top = std::max(top, sc);
        }
        float sum = 0;
        for (int64_t j = first; j <= start; j++) {
          scores[j] = std::exp(scores[j] - top);
          sum += scores[j];
        }
        float *__restrict out = att.data() + bh * hd;
        std::fill(out, out + hd, 0.0f);
        const float inv = 1.0f / sum;
        for (int64_t j = first; j <= start; j++) {
          const float p = scores[j] * inv;
          const float *__restrict vj = vb + j * sp;
#pragma omp simd
          for (int64_t i = 0; i < hd; i++) out[i] += p * vj[i];
        }
      }
    });
    linear(L.o, L.o_bias, att.data(), B, o.data());
    if (d.norms != kNormsBefore) rms_norm(o.data(), fdata(L.attn_post), B, D, d.eps, d.norm_offset, o.data());
    for (int64_t i = 0; i < B * D; i++) x[i] += o[i];
    xin = x.data();
    if (d.norms != kNormsAfter) {
      rms_norm(x.data(), fdata(L.mlp_norm), B, D, d.eps, d.norm_offset, h.data());
      xin = h.data();
    }
    linear(L.gate, at::Tensor(), xin, B, gate.data());
    linear(L.up, at::Tensor(), xin, B, up.data());
    for (int64_t i = 0; i < B * I; i++) gate[i] = activate(d.act, gate[i]) * up[i];
    linear(L.down, at::Tensor(), gate.data(), B, o.data());
    if (d.norms != kNormsBefore) rms_norm(o.data(), fdata(L.mlp_post), B, D, d.eps, d.norm_offset, o.data());
    for (int64_t i = 0; i < B * D; i++) x[i] += o[i];
    if (hs != nullptr) run_hooks(*hs, l, next_hook, x.data(), B, D, records, offset);
  }
  rms_norm(x.data(), d.norm.data_ptr<float>(), B, D, d.eps, d.norm_offset, h.data());
  linear(d.lm_head, at::Tensor(), h.data(), B, logits);
  if (d.final_softcap > 0) {
    const float cap = static_cast<float>(d.final_softcap);
    for (int64_t i = 0; i < B * d.vocab; i++) logits[i] = std::tanh(logits[i] / cap) * cap;
  }
  KT_CATCH
}

}  // extern "C"

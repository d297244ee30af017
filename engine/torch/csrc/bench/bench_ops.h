// bench_ops.h: the decoder pieces keel's C++ references share, written with the same libtorch ops, in the same
// order, as keel's Go decoder (engine/model/decoder.go and the shim's kt_rms_norm / kt_rope).
#pragma once
#include <dlfcn.h>
#include <torch/torch.h>

namespace keelbench {

// set_threads sets libtorch's thread count and OpenBLAS's own pool to match (otherwise OpenBLAS keeps one worker
// per CPU spinning in sched_yield beside a single-threaded libtorch), as the shim does.
inline void set_threads(int n) {
  at::set_num_threads(n);
  for (const char *lib : {"libopenblas.so.0", "libblas.so.3"}) {
    void *h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
    if (h == nullptr) continue;
    auto set = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads"));
    dlclose(h);
    if (set != nullptr) {
      set(n);
      return;
    }
  }
}

inline at::Tensor rms_norm(const at::Tensor &x, const at::Tensor &w, double eps) {
  return w * (x * at::rsqrt((x * x).mean(-1, true) + eps));
}

inline at::Tensor rope(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin) {
  auto half = x.size(-1) / 2;
  auto rot = at::cat({at::neg(x.narrow(-1, half, half)), x.narrow(-1, 0, half)}, -1);
  return x * cos + rot * sin;
}

// repeat_kv expands grouped key/value heads to the query heads.
inline at::Tensor repeat_kv(const at::Tensor &x, int64_t heads) {
  int64_t kv = x.size(1);
  if (kv == heads) return x;
  return x.unsqueeze(2).expand({x.size(0), kv, heads / kv, x.size(2), x.size(3)}).reshape({x.size(0), heads, x.size(2), x.size(3)});
}

// attend is softmax(q k^T * scale) v for grouped-query heads without repeating k and v: the query heads that share
// a key/value head are stacked along the query axis. hidden (bool [T, S], true = masked; undefined = none).
inline at::Tensor attend(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &hidden, double scale) {
  int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), KV = k.size(1), S = k.size(2), n = H / KV;
  auto scores = at::matmul(q.reshape({B, KV, n * T, D}), k.transpose(-2, -1)) * scale;
  if (hidden.defined()) scores = scores.view({B, KV, n, T, S}).masked_fill(hidden, -INFINITY).view({B, KV, n * T, S});
  return at::matmul(at::softmax(scores, -1, at::kFloat), v).view({B, H, T, D});
}

}  // namespace keelbench

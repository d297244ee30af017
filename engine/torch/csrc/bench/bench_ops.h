// bench_ops.h: the decoder pieces keel's C++ references share, written with the same libtorch ops, in the same
// order, as keel's Go decoder (engine/model/decoder.go and the shim's kt_rms_norm / kt_rope).
#pragma once
#include <torch/torch.h>

namespace keelbench {

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

}  // namespace keelbench

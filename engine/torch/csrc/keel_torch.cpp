// keel_torch.cpp: the implementation of keel_torch.h over libtorch's C++ API.
// One source for libtorch 1.13 (Debian) and 2.x (PyTorch wheels); the differences are behind TORCH_VERSION_MAJOR.
#include "keel_torch.h"
#include "keel_linear.h"
#include "keel_shim.h"

#include <torch/torch.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>

#include <dlfcn.h>
#include <malloc.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef KEEL_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

using namespace keel_shim;

namespace {

at::ScalarType scalar_type(int64_t code) {
  switch (code) {
    case KT_F32: return at::kFloat;
    case KT_F16: return at::kHalf;
    case KT_BF16: return at::kBFloat16;
    case KT_I64: return at::kLong;
    case KT_I32: return at::kInt;
    case KT_BOOL: return at::kBool;
    case KT_U8: return at::kByte;
    case KT_F64: return at::kDouble;
    case KT_I8: return at::kChar;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(code));
}

int64_t dtype_code(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return KT_F32;
    case at::kHalf: return KT_F16;
    case at::kBFloat16: return KT_BF16;
    case at::kLong: return KT_I64;
    case at::kInt: return KT_I32;
    case at::kBool: return KT_BOOL;
    case at::kByte: return KT_U8;
    case at::kDouble: return KT_F64;
    case at::kChar: return KT_I8;
    default: return -1;
  }
}

at::Device device(int64_t type, int64_t index) {
  if (type == 0) return at::Device(at::kCPU);
  if (type == 1) {
    if (!torch::cuda::is_available()) throw std::runtime_error("CUDA is not available in this libtorch or on this machine");
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index < 0 ? 0 : index));
  }
  throw std::invalid_argument("unknown device type " + std::to_string(type));
}

at::IntArrayRef dims(const int64_t *shape, int64_t ndim) { return at::IntArrayRef(shape, static_cast<size_t>(ndim)); }

std::vector<at::Tensor> tensors(const kt_tensor *ts, int64_t n) {
  std::vector<at::Tensor> v;
  v.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) v.push_back(T(ts[i]));
  return v;
}

#if TORCH_VERSION_MAJOR >= 2
// Repeats key/value heads so that grouped-query attention becomes ordinary multi-head attention (SDPA's input).
at::Tensor repeat_kv(const at::Tensor &x, int64_t heads) {
  int64_t kv = x.size(1);
  if (kv == heads) return x;
  if (heads % kv != 0) throw std::invalid_argument("attention heads not a multiple of key/value heads");
  auto n = heads / kv;
  return x.unsqueeze(2).expand({x.size(0), kv, n, x.size(2), x.size(3)}).reshape({x.size(0), heads, x.size(2), x.size(3)});
}
#endif

// OpenBLAS (Debian's libtorch multiplies through it) keeps a thread pool of its own, sized to the machine, whose
// idle workers spin in sched_yield. It must use libtorch's thread count: with --threads 1 on two cores its spare
// worker took a third of the CPU time of an A-LoL evaluation (perf), time the next op's thread then lacked.
void set_blas_threads(int n) {
  using setter = void (*)(int);
  for (const char *lib : {"libopenblas.so.0", "libblas.so.3"}) {
    void *h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
    if (h == nullptr) continue;
    auto set = reinterpret_cast<setter>(dlsym(h, "openblas_set_num_threads"));
    dlclose(h);
    if (set != nullptr) {
      set(n);
      return;
    }
  }
}

// At load, BLAS starts at libtorch's default thread count (the physical cores) rather than every logical CPU.
// And glibc's malloc makes no more arenas: Go calls into libtorch from whichever OS thread runs the goroutine, and
// each thread's own arena keeps its freed tensors' pages (the keel binary sets MALLOC_ARENA_MAX=1 from its start,
// see cmd/keel's boundMallocArenas; this bounds the other programs that load the shim, such as tests).
__attribute__((constructor)) void at_load() {
  set_blas_threads(at::get_num_threads());
  mallopt(M_ARENA_MAX, 1);
}

}  // namespace

extern "C" {

int64_t kt_abi_version(void) { return KT_ABI_VERSION; }

char *kt_info(char *buf, int64_t n) {
  std::string s = std::string("libtorch=") + TORCH_VERSION + " cuda=" + (torch::cuda::is_available() ? "1" : "0") +
                  " devices=" + std::to_string(torch::cuda::device_count());
#ifdef KEEL_WITH_CUDA
  s += " built_with_cuda=1";
#endif
  std::snprintf(buf, static_cast<size_t>(n), "%s", s.c_str());
  return buf;
}

void kt_free_string(char *s) { std::free(s); }
void kt_free(kt_tensor t) { delete static_cast<at::Tensor *>(t); }
void kt_free_many(const kt_tensor *ts, int64_t n) {
  for (int64_t i = 0; i < n; i++) delete static_cast<at::Tensor *>(ts[i]);
}

char *kt_set_num_threads(int64_t n) {
  KT_TRY
  at::set_num_threads(static_cast<int>(n));
  set_blas_threads(static_cast<int>(n));
  KT_CATCH
}
int64_t kt_get_num_threads(void) { return at::get_num_threads(); }

// glibc keeps freed heap memory for reuse: after a long prefill the process would hold its peak for good.
int64_t kt_trim_host_memory(void) {
#ifdef __GLIBC__
  return malloc_trim(0);
#else
  return 0;
#endif
}

char *kt_manual_seed(uint64_t seed) {
  KT_TRY
  torch::manual_seed(seed);
  KT_CATCH
}

int64_t kt_cuda_device_count(void) {
  try {
    return static_cast<int64_t>(torch::cuda::device_count());
  } catch (...) {
    return 0;
  }
}

char *kt_cuda_memory(int64_t dev, int64_t *allocated, int64_t *peak, int64_t *reserved) {
  KT_TRY
#ifdef KEEL_WITH_CUDA
  auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(dev));
  *allocated = st.allocated_bytes[0].current;
  *peak = st.allocated_bytes[0].peak;
  *reserved = st.reserved_bytes[0].current;
#else
  (void)dev;
  *allocated = *peak = *reserved = 0;
  throw std::runtime_error("this keel shim was built without CUDA");
#endif
  KT_CATCH
}

char *kt_cuda_mem_info(int64_t dev, int64_t *free_bytes, int64_t *total_bytes) {
  KT_TRY
#ifdef KEEL_WITH_CUDA
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(dev));
  size_t f = 0, t = 0;
  auto err = cudaMemGetInfo(&f, &t);
  if (err != cudaSuccess) throw std::runtime_error(std::string("cudaMemGetInfo: ") + cudaGetErrorString(err));
  *free_bytes = static_cast<int64_t>(f);
  *total_bytes = static_cast<int64_t>(t);
#else
  (void)dev;
  *free_bytes = *total_bytes = 0;
  throw std::runtime_error("this keel shim was built without CUDA");
#endif
  KT_CATCH
}

char *kt_cuda_reset_peak(int64_t dev) {
  KT_TRY
#ifdef KEEL_WITH_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(dev));
#else
  (void)dev;
  throw std::runtime_error("this keel shim was built without CUDA");
#endif
  KT_CATCH
}

char *kt_synchronize(int64_t dev) {
  KT_TRY
  if (torch::cuda::is_available()) torch::cuda::synchronize(dev);
  KT_CATCH
}

char *kt_from_data(const void *data, int64_t dtype, const int64_t *shape, int64_t ndim, int64_t dev_type, int64_t dev_index, kt_tensor *out) {
  KT_TRY
  auto opts = at::TensorOptions().dtype(scalar_type(dtype));
  auto host = torch::from_blob(const_cast<void *>(data), dims(shape, ndim), opts);
  *out = wrap(host.to(device(dev_type, dev_index), /*non_blocking=*/false, /*copy=*/true));
  KT_CATCH
}

char *kt_from_blob(void *data, int64_t dtype, const int64_t *shape, int64_t ndim, kt_tensor *out) {
  KT_TRY
  *out = wrap(torch::from_blob(data, dims(shape, ndim), at::TensorOptions().dtype(scalar_type(dtype))));
  KT_CATCH
}

char *kt_full(const int64_t *shape, int64_t ndim, const double *value, int64_t dtype, int64_t dev_type, int64_t dev_index, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::full(dims(shape, ndim), *value, at::TensorOptions().dtype(scalar_type(dtype)).device(device(dev_type, dev_index))));
  KT_CATCH
}

char *kt_randn(const int64_t *shape, int64_t ndim, int64_t dtype, int64_t dev_type, int64_t dev_index, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::randn(dims(shape, ndim), at::TensorOptions().dtype(scalar_type(dtype)).device(device(dev_type, dev_index))));
  KT_CATCH
}

char *kt_to(kt_tensor t, int64_t dtype, int64_t dev_type, int64_t dev_index, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(t).to(device(dev_type, dev_index), scalar_type(dtype)));
  KT_CATCH
}

char *kt_to_host(kt_tensor t, void *dst, int64_t nbytes) {
  KT_TRY
  auto host = T(t).detach().to(at::kCPU).contiguous();
  int64_t have = static_cast<int64_t>(host.numel() * host.element_size());
  if (have != nbytes) throw std::invalid_argument("to_host: tensor has " + std::to_string(have) + " bytes, buffer " + std::to_string(nbytes));
  std::memcpy(dst, host.data_ptr(), static_cast<size_t>(nbytes));
  KT_CATCH
}

char *kt_shape(kt_tensor t, int64_t *out_dims, int64_t cap, int64_t *ndim) {
  KT_TRY
  auto &x = T(t);
  *ndim = x.dim();
  for (int64_t i = 0; i < x.dim() && i < cap; i++) out_dims[i] = x.size(i);
  KT_CATCH
}

char *kt_meta(kt_tensor t, int64_t *dtype, int64_t *dev_type, int64_t *dev_index) {
  KT_TRY
  auto &x = T(t);
  *dtype = dtype_code(x.scalar_type());
  *dev_type = x.is_cuda() ? 1 : 0;
  *dev_index = x.is_cuda() ? x.device().index() : -1;
  KT_CATCH
}

char *kt_item(kt_tensor t, double *out) {
  KT_TRY
  *out = T(t).item<double>();
  KT_CATCH
}

char *kt_shares_storage(kt_tensor a, kt_tensor b, int64_t *out) {
  KT_TRY
  *out = T(a).data_ptr() == T(b).data_ptr() ? 1 : 0;
  KT_CATCH
}

char *kt_clone(kt_tensor t, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(t).clone());
  KT_CATCH
}

char *kt_binary(int64_t op, kt_tensor a, kt_tensor b, kt_tensor *out) {
  KT_TRY
  auto &x = T(a);
  auto &y = T(b);
  switch (op) {
    case KT_ADD: *out = wrap(x + y); break;
    case KT_SUB: *out = wrap(x - y); break;
    case KT_MUL: *out = wrap(x * y); break;
    case KT_DIV: *out = wrap(x / y); break;
    case KT_MATMUL: *out = wrap(at::matmul(x, y)); break;
    case KT_MAXIMUM: *out = wrap(at::maximum(x, y)); break;
    case KT_MINIMUM: *out = wrap(at::minimum(x, y)); break;
    case KT_POW: *out = wrap(at::pow(x, y)); break;
    case KT_EQ: *out = wrap(at::eq(x, y)); break;
    case KT_LT: *out = wrap(at::lt(x, y)); break;
    case KT_GT: *out = wrap(at::gt(x, y)); break;
    default: throw std::invalid_argument("unknown binary op " + std::to_string(op));
  }
  KT_CATCH
}

char *kt_unary(int64_t op, kt_tensor a, kt_tensor *out) {
  KT_TRY
  auto &x = T(a);
  switch (op) {
    case KT_NEG: *out = wrap(at::neg(x)); break;
    case KT_EXP: *out = wrap(at::exp(x)); break;
    case KT_LOG: *out = wrap(at::log(x)); break;
    case KT_SQRT: *out = wrap(at::sqrt(x)); break;
    case KT_RSQRT: *out = wrap(at::rsqrt(x)); break;
    case KT_TANH: *out = wrap(at::tanh(x)); break;
    case KT_SILU: *out = wrap(at::silu(x)); break;
    case KT_GELU_TANH: *out = wrap(at::gelu(x, "tanh")); break;
    case KT_GELU: *out = wrap(at::gelu(x)); break;
    case KT_SIGMOID: *out = wrap(at::sigmoid(x)); break;
    case KT_RELU: *out = wrap(at::relu(x)); break;
    case KT_ABS: *out = wrap(at::abs(x)); break;
    case KT_SQUARE: *out = wrap(x * x); break;
    case KT_SIN: *out = wrap(at::sin(x)); break;
    case KT_COS: *out = wrap(at::cos(x)); break;
    case KT_CONTIGUOUS: *out = wrap(x.contiguous()); break;
    case KT_DETACH: *out = wrap(x.detach()); break;
    case KT_LOGICAL_NOT: *out = wrap(at::logical_not(x)); break;
    default: throw std::invalid_argument("unknown unary op " + std::to_string(op));
  }
  KT_CATCH
}

char *kt_scalar(int64_t op, kt_tensor a, const double *sp, kt_tensor *out) {
  KT_TRY
  auto &x = T(a);
  double s = *sp;
  switch (op) {
    case KT_SADD: *out = wrap(x + s); break;
    case KT_SMUL: *out = wrap(x * s); break;
    case KT_SPOW: *out = wrap(at::pow(x, s)); break;
    case KT_SCLAMP_MIN: *out = wrap(at::clamp_min(x, s)); break;
    case KT_SCLAMP_MAX: *out = wrap(at::clamp_max(x, s)); break;
    case KT_SRSUB: *out = wrap(s - x); break;
    case KT_SDIV: *out = wrap(x / s); break;
    default: throw std::invalid_argument("unknown scalar op " + std::to_string(op));
  }
  KT_CATCH
}

char *kt_linear(kt_tensor x, kt_tensor w, kt_tensor b, kt_tensor *out) {
  KT_TRY
  *out = wrap(keel_linear(T(x), T(w), b == nullptr ? nullptr : &T(b)));
  KT_CATCH
}

char *kt_where(kt_tensor cond, kt_tensor a, kt_tensor b, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::where(T(cond), T(a), T(b)));
  KT_CATCH
}

char *kt_masked_fill(kt_tensor a, kt_tensor mask, const double *value, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(a).masked_fill(T(mask), *value));
  KT_CATCH
}

char *kt_reduce(int64_t op, kt_tensor a, int64_t dim, int64_t keepdim, kt_tensor *out) {
  KT_TRY
  auto &x = T(a);
  bool all = dim == KT_ALL_DIMS;
  bool kd = keepdim != 0;
  switch (op) {
    case KT_SUM: *out = wrap(all ? x.sum() : x.sum(dim, kd)); break;
    case KT_MEAN: *out = wrap(all ? x.mean() : x.mean(dim, kd)); break;
    case KT_MAX: *out = wrap(all ? x.max() : std::get<0>(x.max(dim, kd))); break;
    case KT_MIN: *out = wrap(all ? x.min() : std::get<0>(x.min(dim, kd))); break;
    case KT_LOGSUMEXP: *out = wrap(all ? at::logsumexp(x.flatten(), 0) : at::logsumexp(x, dim, kd)); break;
    case KT_ARGMAX: *out = wrap(all ? x.argmax() : x.argmax(dim, kd)); break;
    case KT_NORM: *out = wrap(all ? x.norm() : at::norm(x, 2, {dim}, kd)); break;
    default: throw std::invalid_argument("unknown reduction " + std::to_string(op));
  }
  KT_CATCH
}

char *kt_embedding(kt_tensor weight, kt_tensor ids, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::embedding(T(weight), T(ids)));
  KT_CATCH
}

char *kt_index_select(kt_tensor a, int64_t dim, kt_tensor idx, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::index_select(T(a), dim, T(idx)));
  KT_CATCH
}

char *kt_gather(kt_tensor a, int64_t dim, kt_tensor idx, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::gather(T(a), dim, T(idx)));
  KT_CATCH
}

char *kt_cat(const kt_tensor *ts, int64_t n, int64_t dim, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::cat(tensors(ts, n), dim));
  KT_CATCH
}

char *kt_narrow(kt_tensor a, int64_t dim, int64_t start, int64_t len, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(a).narrow(dim, start, len));
  KT_CATCH
}

char *kt_reshape(kt_tensor a, const int64_t *shape, int64_t ndim, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(a).reshape(dims(shape, ndim)));
  KT_CATCH
}

char *kt_expand(kt_tensor a, const int64_t *shape, int64_t ndim, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(a).expand(dims(shape, ndim)));
  KT_CATCH
}

char *kt_transpose(kt_tensor a, int64_t d0, int64_t d1, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(a).transpose(d0, d1));
  KT_CATCH
}

char *kt_permute(kt_tensor a, const int64_t *p, int64_t ndim, kt_tensor *out) {
  KT_TRY
  *out = wrap(T(a).permute(dims(p, ndim)));
  KT_CATCH
}

char *kt_copy_(kt_tensor dst, kt_tensor src) {
  KT_TRY
  T(dst).copy_(T(src));
  KT_CATCH
}

char *kt_softmax(kt_tensor a, int64_t dim, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::softmax(T(a), dim));
  KT_CATCH
}

char *kt_log_softmax(kt_tensor a, int64_t dim, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::log_softmax(T(a), dim));
  KT_CATCH
}

char *kt_rms_norm(kt_tensor x, kt_tensor w, const double *eps_offset, kt_tensor *out) {
  KT_TRY
  auto &X = T(x);
  auto &W = T(w);
  double eps = eps_offset[0], offset = eps_offset[1];
  auto dt = X.scalar_type();
  auto xf = dt == at::kFloat ? X : X.to(at::kFloat);
  auto y = xf * at::rsqrt((xf * xf).mean(-1, true) + eps);
  if (offset != 0) {
    auto wf = W.scalar_type() == at::kFloat ? W : W.to(at::kFloat);
    y = y * (wf + offset);
    *out = wrap(dt == at::kFloat ? y : y.to(dt));
  } else {
    *out = wrap(W * (dt == at::kFloat ? y : y.to(dt)));
  }
  KT_CATCH
}

char *kt_rope(kt_tensor x, kt_tensor cos, kt_tensor sin, kt_tensor *out) {
  KT_TRY
  auto &X = T(x);
  int64_t half = X.size(-1) / 2;
  auto rot = at::cat({at::neg(X.narrow(-1, half, half)), X.narrow(-1, 0, half)}, -1);
  *out = wrap(X * T(cos) + rot * T(sin));
  KT_CATCH
}

// Query rows per block of causal_blocks, and the most score elements one of its matmuls makes on the CPU.
constexpr int64_t kCausalBlock = 128;
constexpr int64_t kScoreChunk = 1 << 21;

// Grouped-query attention without repeating keys and values: the n query heads that share a key/value head are
// stacked along the query axis, so one matmul per group reads K and V (a KV cache) where they lie. Repeating them
// copied the whole cache at every decode step, 470 MB per token for a batch of 64 at 450 positions.
// hidden (bool, true = masked out; [T, S] or [B|1, 1, T, S]; undefined = none) applies to every head.
static at::Tensor grouped_attention(const at::Tensor &Q, const at::Tensor &K, const at::Tensor &V, const at::Tensor &hidden, double scale, double softcap) {
  int64_t B = Q.size(0), H = Q.size(1), T = Q.size(2), D = Q.size(3), KV = K.size(1), S = K.size(2), n = H / KV;
  auto scores = at::matmul(Q.reshape({B, KV, n * T, D}), K.transpose(-2, -1)) * scale;  // [B, KV, n*T, S]
  if (softcap > 0) scores = at::tanh(scores / softcap) * softcap;
  if (hidden.defined()) {
    auto h = hidden.dim() == 4 ? hidden.unsqueeze(1) : hidden;  // [B|1, 1, 1, T, S] against [B, KV, n, T, S]
    scores = scores.view({B, KV, n, T, S}).masked_fill(h, -std::numeric_limits<double>::infinity()).view({B, KV, n * T, S});
  }
  auto probs = at::softmax(scores, -1, at::kFloat).to(Q.scalar_type());
  return at::matmul(probs, V).view({B, H, T, V.size(3)});
}

// Explicit causal attention over blocks of queries, each block against only the keys it may see: about half the
// score matrix of one full matmul, and each block's scores stay small enough for the cache (long training
// sequences run at close to the per-token speed of short ones). allowed (bool, broadcastable to [B, H, tq, tk];
// undefined = no constraint beyond causality) is the padding or window mask, narrowed to each block: a padded batch
// of long conversations never holds the whole [B, H, T, T] score tensor.
static at::Tensor causal_blocks(const at::Tensor &Q, const at::Tensor &K, const at::Tensor &V, const at::Tensor &allowed, double scale, double softcap) {
  int64_t B = Q.size(0), H = Q.size(1), tq = Q.size(2), tk = K.size(2);
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < tq; start += kCausalBlock) {
    int64_t n = std::min(kCausalBlock, tq - start);
    int64_t first = tk - tq + start;  // absolute position of the block's first query
    int64_t keys = first + n;         // keys its last query may see
    auto later = at::ones({n, keys}, at::TensorOptions().dtype(at::kBool).device(Q.device())).tril(first).logical_not();
    // Rows go in chunks whose scores stay within kScoreChunk elements: a batch of 64 long conversations would
    // otherwise make every block's scores hundreds of MB, each allocation fresh pages (on the CPU, page faults
    // and passes over memory cost ten times the arithmetic; measured with perf on a 64 x 450 prefill).
    int64_t rows = std::max<int64_t>(1, kScoreChunk / std::max<int64_t>(1, H * n * keys));
    if (Q.is_cuda()) rows = B;  // one launch per block on a GPU
    std::vector<at::Tensor> chunks;
    for (int64_t b0 = 0; b0 < B; b0 += rows) {
      int64_t nb = std::min(rows, B - b0);
      auto hidden = later;
      if (allowed.defined()) {
        auto a = allowed.narrow(-2, start, n).narrow(-1, 0, keys);
        if (a.dim() == 4 && a.size(0) == B) a = a.narrow(0, b0, nb);
        hidden = at::logical_or(hidden, at::logical_not(a));
      }
      chunks.push_back(grouped_attention(Q.narrow(0, b0, nb).narrow(2, start, n), K.narrow(0, b0, nb).narrow(2, 0, keys),
                                         V.narrow(0, b0, nb).narrow(2, 0, keys), hidden, scale, softcap));
    }
    parts.push_back(chunks.size() == 1 ? chunks[0] : at::cat(chunks, 0));
  }
  return at::cat(parts, 2);
}

// attention computes kt_attention's result (allowed: bool, true = attend; undefined = everything).
static at::Tensor attention(const at::Tensor &Q, const at::Tensor &K, const at::Tensor &V, at::Tensor allowed, int64_t is_causal, double scale, double softcap) {
  if (Q.dim() != 4 || K.dim() != 4 || V.dim() != 4) throw std::invalid_argument("attention expects 4-d q, k, v");
  int64_t heads = Q.size(1);
  if (K.size(1) == 0 || heads % K.size(1) != 0 || V.size(1) != K.size(1)) throw std::invalid_argument("attention heads not a multiple of key/value heads");
  int64_t tq = Q.size(2), tk = K.size(2);
#if TORCH_VERSION_MAJOR >= 2
  // libtorch 2 has SDPA (flash and memory-efficient kernels). Causality alone, with as many queries as keys, goes
  // to its is_causal (the flag means top-left alignment, right only when tq == tk); a mask, or a short causal
  // block, goes with an explicit mask; long causal inputs without a mask go over blocks below.
  if (softcap <= 0 && is_causal != 0 && !allowed.defined() && tq == tk) {
    return at::scaled_dot_product_attention(Q, repeat_kv(K, heads), repeat_kv(V, heads), c10::nullopt, 0.0, true, scale);
  }
  if (softcap <= 0 && (allowed.defined() || is_causal == 0 || tq <= kCausalBlock)) {
    if (is_causal != 0) {
      auto causal = at::ones({tq, tk}, at::TensorOptions().dtype(at::kBool).device(Q.device())).tril(tk - tq);
      allowed = allowed.defined() ? at::logical_and(allowed, causal) : causal;
    }
    c10::optional<at::Tensor> m;
    if (allowed.defined()) m = allowed;
    return at::scaled_dot_product_attention(Q, repeat_kv(K, heads), repeat_kv(V, heads), m, 0.0, false, scale);
  }
#endif
  if (is_causal != 0 && tq > kCausalBlock) return causal_blocks(Q, K, V, allowed, scale, softcap);
  at::Tensor hidden;
  if (allowed.defined()) hidden = at::logical_not(allowed);
  if (is_causal != 0) {
    // Query i sits at absolute position tk - tq + i.
    auto later = at::ones({tq, tk}, at::TensorOptions().dtype(at::kBool).device(Q.device())).tril(tk - tq).logical_not();
    hidden = hidden.defined() ? at::logical_or(hidden, later) : later;
  }
  return grouped_attention(Q, K, V, hidden, scale, softcap);
}

// Attention under autograd on the CPU keeps only q, k and v for the backward pass and recomputes the scores there,
// one layer at a time: autograd would otherwise hold every layer's scores and probabilities ([B, H, T, T] twice)
// until the backward pass reaches it, 2 GB of an A-LoL step's 3.7 GB peak on the 6.4M embedded model (8 x 700
// tokens, 8 layers). The recomputation costs one more forward of the attention alone.
struct RecomputedAttention : public torch::autograd::Function<RecomputedAttention> {
  // mask: the allowed mask, or an empty tensor for none (autograd's apply takes no undefined tensors).
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &mask, int64_t is_causal, double scale, double softcap) {
    at::Tensor allowed;
    if (mask.numel() > 0) allowed = mask;
    ctx->save_for_backward({q, k, v});
    ctx->saved_data["has_mask"] = allowed.defined();
    if (allowed.defined()) ctx->saved_data["mask"] = allowed;
    ctx->saved_data["causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["softcap"] = softcap;
    return attention(q, k, v, allowed, is_causal, scale, softcap);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> in;
    for (int i = 0; i < 3; i++) in.push_back(saved[i].detach().requires_grad_(saved[i].requires_grad()));
    at::Tensor allowed;
    if (ctx->saved_data["has_mask"].toBool()) allowed = ctx->saved_data["mask"].toTensor();
    at::Tensor out;
    {
      at::AutoGradMode grad_on(true);
      out = attention(in[0], in[1], in[2], allowed, ctx->saved_data["causal"].toInt(), ctx->saved_data["scale"].toDouble(), ctx->saved_data["softcap"].toDouble());
    }
    std::vector<at::Tensor> wrt;
    for (int i = 0; i < 3; i++)
      if (in[i].requires_grad()) wrt.push_back(in[i]);
    auto g = torch::autograd::grad({out}, wrt, {grads[0]});
    torch::autograd::variable_list res(7);
    size_t j = 0;
    for (int i = 0; i < 3; i++)
      if (in[i].requires_grad()) res[i] = g[j++];
    return res;
  }
};

char *kt_attention(kt_tensor q, kt_tensor k, kt_tensor v, kt_tensor mask, int64_t is_causal, const double *scale_softcap, kt_tensor *out) {
  KT_TRY
  double scale = scale_softcap[0], softcap = scale_softcap[1];
  auto &Q = T(q);
  auto &K = T(k);
  auto &V = T(v);
  at::Tensor allowed;  // bool, true = attend; undefined = everything
  if (mask != nullptr) allowed = T(mask);
  bool grads = at::GradMode::is_enabled() && (Q.requires_grad() || K.requires_grad() || V.requires_grad());
  if (grads && Q.device().is_cpu() && Q.size(2) > 1) {
    auto mask_or_empty = allowed.defined() ? allowed : at::empty({0}, at::TensorOptions().dtype(at::kBool));
    *out = wrap(RecomputedAttention::apply(Q, K, V, mask_or_empty, is_causal, scale, softcap));
  } else {
    *out = wrap(attention(Q, K, V, allowed, is_causal, scale, softcap));
  }
  KT_CATCH
}

char *kt_cap(kt_tensor h, kt_tensor u_col, kt_tensor u_row, const double *tau, int64_t ceiling, kt_tensor *h_out, kt_tensor *excess) {
  KT_TRY
  auto &H = T(h);
  // <h,u>: one matmul kernel on CUDA; on CPU a multiply-and-sum, which skips BLAS's per-call threading cost.
  auto e = H.is_cuda() ? at::matmul(H, T(u_col)) : (H * T(u_row)).sum(-1, true);
  e.sub_(*tau);
  if (ceiling != 0) {
    e.clamp_min_(0);
  } else {
    e.clamp_max_(0);
  }
  *h_out = wrap(at::addcmul(H, e, T(u_row), -1.0));
  *excess = wrap(std::move(e));
  KT_CATCH
}

char *kt_stack(const kt_tensor *ts, int64_t n, int64_t dim, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::stack(tensors(ts, n), dim));
  KT_CATCH
}

char *kt_topk(kt_tensor a, int64_t k, int64_t dim, kt_tensor *values, kt_tensor *indices) {
  KT_TRY
  auto r = at::topk(T(a), k, dim);
  *values = wrap(std::get<0>(r));
  *indices = wrap(std::get<1>(r));
  KT_CATCH
}

char *kt_multinomial(kt_tensor probs, int64_t n, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::multinomial(T(probs), n));
  KT_CATCH
}

char *kt_set_requires_grad(kt_tensor t, int64_t flag) {
  KT_TRY
  T(t).set_requires_grad(flag != 0);
  KT_CATCH
}

char *kt_requires_grad(kt_tensor t, int64_t *out) {
  KT_TRY
  *out = T(t).requires_grad() ? 1 : 0;
  KT_CATCH
}

char *kt_backward(kt_tensor t) {
  KT_TRY
  T(t).backward();
  KT_CATCH
}

char *kt_grad(kt_tensor t, kt_tensor *out) {
  KT_TRY
  auto g = T(t).grad();
  *out = g.defined() ? wrap(g) : nullptr;
  KT_CATCH
}

int64_t kt_set_grad_enabled(int64_t enabled) {
  bool prev = at::GradMode::is_enabled();
  at::GradMode::set_enabled(enabled != 0);
  return prev ? 1 : 0;
}

int64_t kt_set_autocast(int64_t dev_type, int64_t enabled, int64_t dtype) {
  try {
    auto st = scalar_type(dtype);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    auto dev = dev_type == 1 ? at::kCUDA : at::kCPU;
    bool prev = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, st);
    at::autocast::set_autocast_enabled(dev, enabled != 0);
#else
    bool prev;
    if (dev_type == 1) {
      prev = at::autocast::is_enabled();
      at::autocast::set_autocast_gpu_dtype(st);
      at::autocast::set_enabled(enabled != 0);
    } else {
      prev = at::autocast::is_cpu_enabled();
      at::autocast::set_autocast_cpu_dtype(st);
      at::autocast::set_cpu_enabled(enabled != 0);
    }
#endif
    if (enabled == 0) at::autocast::clear_cache();
    return prev ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

char *kt_clip_grad_norm(const kt_tensor *params, int64_t n, double max_norm, double *total_norm) {
  KT_TRY
  *total_norm = torch::nn::utils::clip_grad_norm_(tensors(params, n), max_norm);
  KT_CATCH
}

char *kt_adamw_update(kt_tensor param, kt_tensor exp_avg, kt_tensor exp_avg_sq, const double *h) {
  KT_TRY
  auto &p = T(param);
  auto g = p.grad();
  if (!g.defined()) return nullptr;
  at::NoGradGuard no_grad;
  double lr = h[0], b1 = h[1], b2 = h[2], eps = h[3], wd = h[4], step = h[5];
  auto &m = T(exp_avg);
  auto &v = T(exp_avg_sq);
  if (wd != 0) p.mul_(1 - lr * wd);
  m.mul_(b1).add_(g, 1 - b1);
  v.mul_(b2).addcmul_(g, g, 1 - b2);
  double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
  auto denom = (v.sqrt() / std::sqrt(bc2)).add_(eps);
  p.addcdiv_(m, denom, -lr / bc1);
  KT_CATCH
}

char *kt_zero_grad(kt_tensor param) {
  KT_TRY
  T(param).mutable_grad().reset();
  KT_CATCH
}

char *kt_dropout(kt_tensor x, const double *p, int64_t train, kt_tensor *out) {
  KT_TRY
  *out = wrap(at::dropout(T(x), *p, train != 0));
  KT_CATCH
}

char *kt_adamw_new(const kt_tensor *params, int64_t n, double lr, double beta1, double beta2, double eps, double weight_decay, kt_optim *out) {
  KT_TRY
  auto opts = torch::optim::AdamWOptions(lr).betas({beta1, beta2}).eps(eps).weight_decay(weight_decay);
  *out = new torch::optim::AdamW(tensors(params, n), opts);
  KT_CATCH
}

char *kt_adamw_step(kt_optim o) {
  KT_TRY
  static_cast<torch::optim::AdamW *>(o)->step();
  KT_CATCH
}

char *kt_adamw_zero_grad(kt_optim o) {
  KT_TRY
  static_cast<torch::optim::AdamW *>(o)->zero_grad();
  KT_CATCH
}

char *kt_adamw_set_lr(kt_optim o, double lr) {
  KT_TRY
  for (auto &g : static_cast<torch::optim::AdamW *>(o)->param_groups()) {
    static_cast<torch::optim::AdamWOptions &>(g.options()).lr(lr);
  }
  KT_CATCH
}

void kt_adamw_free(kt_optim o) { delete static_cast<torch::optim::AdamW *>(o); }

}  // extern "C"

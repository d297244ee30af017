/* keel_torch.h: the C ABI keel reaches libtorch through.
 *
 * Conventions:
 * - A tensor handle (kt_tensor) owns one at::Tensor reference; release it with kt_free.
 * - Every entry point that can fail returns NULL on success or a malloc'd error message the caller
 *   releases with kt_free_string. Results come back through out-parameters. No entry point throws or aborts.
 * - Hot entry points take only integers and pointers (doubles by pointer) so Go can call them without
 *   reflection; the rest take doubles by value.
 * - Dtype codes: see KT_* below. Device: type 0 = CPU, 1 = CUDA; index -1 = current.
 */
#ifndef KEEL_TORCH_H
#define KEEL_TORCH_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

/* KT_ABI_VERSION names this ABI: raised whenever an entry point's arguments, layout or meaning change, so that a
 * keel binary refuses a shim built from another commit instead of calling it with the wrong arguments. */
#define KT_ABI_VERSION 2
int64_t kt_abi_version(void); /* KT_ABI_VERSION as the shim was built */

typedef void *kt_tensor;
typedef void *kt_optim;

enum { KT_F32 = 0, KT_F16 = 1, KT_BF16 = 2, KT_I64 = 3, KT_I32 = 4, KT_BOOL = 5, KT_U8 = 6, KT_F64 = 7, KT_I8 = 8 };

char *kt_info(char *buf, int64_t n); /* "libtorch=X.Y.Z cuda=0|1 cuda_version=..." */
void kt_free_string(char *s);
void kt_free(kt_tensor t);
/* Frees n handles in one call (a scope releasing a decode step's ~100 tensors). */
void kt_free_many(const kt_tensor *ts, int64_t n);
char *kt_set_num_threads(int64_t n);
int64_t kt_get_num_threads(void);
int64_t kt_trim_host_memory(void);
char *kt_manual_seed(uint64_t seed);
int64_t kt_cuda_device_count(void);
char *kt_cuda_memory(int64_t device, int64_t *allocated, int64_t *peak, int64_t *reserved);
// What the driver reports free and in total on a device (cudaMemGetInfo): other processes' use included.
char *kt_cuda_mem_info(int64_t device, int64_t *free_bytes, int64_t *total_bytes);
char *kt_cuda_reset_peak(int64_t device);
char *kt_synchronize(int64_t device);

/* creation and transfer */
char *kt_from_data(const void *data, int64_t dtype, const int64_t *shape, int64_t ndim, int64_t dev_type, int64_t dev_index, kt_tensor *out);
char *kt_from_blob(void *data, int64_t dtype, const int64_t *shape, int64_t ndim, kt_tensor *out);
char *kt_full(const int64_t *shape, int64_t ndim, const double *value, int64_t dtype, int64_t dev_type, int64_t dev_index, kt_tensor *out);
char *kt_randn(const int64_t *shape, int64_t ndim, int64_t dtype, int64_t dev_type, int64_t dev_index, kt_tensor *out);
char *kt_to(kt_tensor t, int64_t dtype, int64_t dev_type, int64_t dev_index, kt_tensor *out);
char *kt_to_host(kt_tensor t, void *dst, int64_t nbytes);
char *kt_shape(kt_tensor t, int64_t *dims, int64_t cap, int64_t *ndim);
char *kt_meta(kt_tensor t, int64_t *dtype, int64_t *dev_type, int64_t *dev_index);
char *kt_item(kt_tensor t, double *out);
char *kt_shares_storage(kt_tensor a, kt_tensor b, int64_t *out);
char *kt_clone(kt_tensor t, kt_tensor *out);

/* elementwise */
enum { KT_ADD = 0, KT_SUB, KT_MUL, KT_DIV, KT_MATMUL, KT_MAXIMUM, KT_MINIMUM, KT_POW, KT_EQ, KT_LT, KT_GT };
char *kt_binary(int64_t op, kt_tensor a, kt_tensor b, kt_tensor *out);
enum { KT_NEG = 0, KT_EXP, KT_LOG, KT_SQRT, KT_RSQRT, KT_TANH, KT_SILU, KT_GELU_TANH, KT_GELU, KT_SIGMOID, KT_RELU, KT_ABS, KT_SQUARE, KT_SIN, KT_COS, KT_CONTIGUOUS, KT_DETACH, KT_LOGICAL_NOT };
char *kt_unary(int64_t op, kt_tensor a, kt_tensor *out);
enum { KT_SADD = 0, KT_SMUL, KT_SPOW, KT_SCLAMP_MIN, KT_SCLAMP_MAX, KT_SRSUB, KT_SDIV };
char *kt_scalar(int64_t op, kt_tensor a, const double *s, kt_tensor *out);
char *kt_linear(kt_tensor x, kt_tensor w, kt_tensor b /* nullable */, kt_tensor *out);
char *kt_where(kt_tensor cond, kt_tensor a, kt_tensor b, kt_tensor *out);
char *kt_masked_fill(kt_tensor a, kt_tensor mask, const double *value, kt_tensor *out);

/* reductions: dim = KT_ALL_DIMS reduces everything */
#define KT_ALL_DIMS (-1000)
enum { KT_SUM = 0, KT_MEAN, KT_MAX, KT_MIN, KT_LOGSUMEXP, KT_ARGMAX, KT_NORM };
char *kt_reduce(int64_t op, kt_tensor a, int64_t dim, int64_t keepdim, kt_tensor *out);

/* indexing and shape */
char *kt_embedding(kt_tensor weight, kt_tensor ids, kt_tensor *out);
char *kt_index_select(kt_tensor a, int64_t dim, kt_tensor idx, kt_tensor *out);
char *kt_gather(kt_tensor a, int64_t dim, kt_tensor idx, kt_tensor *out);
char *kt_cat(const kt_tensor *ts, int64_t n, int64_t dim, kt_tensor *out);
char *kt_narrow(kt_tensor a, int64_t dim, int64_t start, int64_t len, kt_tensor *out);
char *kt_reshape(kt_tensor a, const int64_t *shape, int64_t ndim, kt_tensor *out);
char *kt_expand(kt_tensor a, const int64_t *shape, int64_t ndim, kt_tensor *out);
char *kt_transpose(kt_tensor a, int64_t d0, int64_t d1, kt_tensor *out);
char *kt_permute(kt_tensor a, const int64_t *dims, int64_t ndim, kt_tensor *out);
char *kt_copy_(kt_tensor dst, kt_tensor src);
char *kt_softmax(kt_tensor a, int64_t dim, kt_tensor *out);
char *kt_log_softmax(kt_tensor a, int64_t dim, kt_tensor *out);

/* RMSNorm as Hugging Face computes it: in float32, x * rsqrt(mean(x^2) + eps), then times w in the input dtype
 * (Llama family), or, with offset != 0, times (offset + w) in float32 before casting back (Gemma). */
char *kt_rms_norm(kt_tensor x, kt_tensor w, const double *eps_offset, kt_tensor *out);
/* Rotary embedding in the rotate-half convention: x*cos + cat(-x2, x1)*sin over the last dimension. */
char *kt_rope(kt_tensor x, kt_tensor cos, kt_tensor sin, kt_tensor *out);

/* attention: q [B,H,T,D], k/v [B,Hkv,S,D] (Hkv divides H); mask nullable, bool [B|1,1,T,S], true = attend.
 * is_causal != 0 adds causality (queries at the end of the keys), with or without a mask: long causal inputs are
 * computed over blocks of queries, so the full score matrix is never held. softcap > 0 applies cap*tanh(scores/cap) before masking (Gemma 2) and forces the explicit path. */
char *kt_attention(kt_tensor q, kt_tensor k, kt_tensor v, kt_tensor mask, int64_t is_causal, const double *scale_softcap, kt_tensor *out);

/* activation cap along a unit vector u (u_col [D,1], u_row [D]) with threshold *tau:
 * excess = <h,u> - tau clamped to <= 0 (a floor) or, with ceiling, >= 0; h_out = h - excess*u. The amount h moved
 * along u is -excess [.., 1]. */
char *kt_cap(kt_tensor h, kt_tensor u_col, kt_tensor u_row, const double *tau, int64_t ceiling, kt_tensor *h_out, kt_tensor *excess);
char *kt_stack(const kt_tensor *ts, int64_t n, int64_t dim, kt_tensor *out);

/* sampling helpers */
char *kt_topk(kt_tensor a, int64_t k, int64_t dim, kt_tensor *values, kt_tensor *indices);
char *kt_multinomial(kt_tensor probs, int64_t n, kt_tensor *out);

/* autograd */
char *kt_set_requires_grad(kt_tensor t, int64_t flag);
char *kt_requires_grad(kt_tensor t, int64_t *out);
char *kt_backward(kt_tensor t);
char *kt_grad(kt_tensor t, kt_tensor *out); /* *out = NULL when no gradient */
int64_t kt_set_grad_enabled(int64_t enabled); /* returns the previous mode (thread-local) */
/* Autocast (mixed precision) for a device type (0 CPU, 1 CUDA) on this thread: matmuls and friends run in dtype.
 * Returns the previous enabled state; disabling clears autocast's cache of cast weights. */
int64_t kt_set_autocast(int64_t dev_type, int64_t enabled, int64_t dtype);
char *kt_clip_grad_norm(const kt_tensor *params, int64_t n, double max_norm, double *total_norm);

/* One AdamW step (torch.optim.AdamW's update, no amsgrad) for a parameter whose state tensors the caller owns:
 * h = {lr, beta1, beta2, eps, weight_decay, step (1-based)}. A parameter without a gradient is left alone. */
char *kt_adamw_update(kt_tensor param, kt_tensor exp_avg, kt_tensor exp_avg_sq, const double *h);
char *kt_zero_grad(kt_tensor param);
char *kt_dropout(kt_tensor x, const double *p, int64_t train, kt_tensor *out);

/* AdamW */
char *kt_adamw_new(const kt_tensor *params, int64_t n, double lr, double beta1, double beta2, double eps, double weight_decay, kt_optim *out);
char *kt_adamw_step(kt_optim o);
char *kt_adamw_zero_grad(kt_optim o);
char *kt_adamw_set_lr(kt_optim o, double lr);
void kt_adamw_free(kt_optim o);

/* Fused decode steps (keel_step.cpp): a whole decoder step for one new token per row in one call, for float32
 * weights on the CPU, where a step of a small model is otherwise ~100 ops whose dispatch costs more than their
 * arithmetic. The op-by-op decoder (engine/model/decoder.go) stays the reference and runs everything else.
 *
 * weights: {embed, norm, lm_head, then KT_DEC_PER_LAYER per layer, NULL where the architecture has none:
 *           attn_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm, mlp_norm, gate, up, down,
 *           attn_post_norm, mlp_post_norm} */
typedef void *kt_decoder;
typedef void *kt_step_hooks;
#define KT_DEC_PER_LAYER 17
enum { KT_ACT_SILU = 0, KT_ACT_GELU_TANH = 1, KT_ACT_GELU = 2 };            /* the MLP's activation */
enum { KT_QKNORM_NONE = 0, KT_QKNORM_HEAD = 1, KT_QKNORM_FULL = 2 };       /* RMSNorm of q and k: none, per head, whole projection */
enum { KT_NORMS_BEFORE = 0, KT_NORMS_SANDWICH = 1, KT_NORMS_AFTER = 2 };   /* where a layer's RMSNorms sit */
/* The decoder's shape and numerics, one field each (engine/torch/decoder.go's cDecoderConfig mirrors it). */
typedef struct {
  int64_t layers;         /* decoder layers L */
  int64_t hidden;         /* d_model D */
  int64_t heads;          /* query heads H */
  int64_t kv_heads;       /* key/value heads KV (H % KV == 0) */
  int64_t head_dim;       /* per head, even */
  int64_t intermediate;   /* the MLP's width I */
  int64_t vocab;          /* the output rows V */
  int64_t act;            /* KT_ACT_* */
  int64_t qk_norm;        /* KT_QKNORM_* */
  int64_t norms;          /* KT_NORMS_* */
  int64_t sliding_window; /* positions a sliding layer attends to (0: none) */
  int64_t local_rope;     /* 1: sliding layers read the second RoPE table */
  const int64_t *sliding; /* [layers]: 1 for a layer that slides, else 0 */
  double rms_eps;         /* RMSNorm's epsilon */
  double norm_offset;     /* added to each RMSNorm weight (Gemma's 1), else 0 */
  double embed_mult;      /* the embeddings' scale (Gemma's sqrt(D)); 0: none */
  double attn_scale;      /* the attention logits' scale */
  double attn_softcap;    /* tanh cap of the attention logits (0: none) */
  double final_softcap;   /* tanh cap of the output logits (0: none) */
} kt_decoder_config;
char *kt_decoder_new(const kt_decoder_config *cfg, const kt_tensor *weights, int64_t nweights, kt_decoder *out);
void kt_decoder_free(kt_decoder d);
/* The interventions of a step, in the order the forward pass meets them (by layer, then listed order).
 * desc: 6 per intervention: layer, kind (KT_HOOK_*), full, directions, ceiling, rows (-1: every
 * row); param: one per intervention (a cap's tau); vecs: the vectors back to back (directions*hidden floats for a
 * capture that is not full, hidden for an add (already times its coefficient) and a cap); rows: the row lists
 * back to back. Records per row: a capture yields its directions' projections (hidden values when full), a cap
 * the signed amount it moved h along u; an add yields nothing. */
enum { KT_HOOK_CAPTURE = 0, KT_HOOK_ADD = 1, KT_HOOK_CAP = 2 }; /* an intervention's kind (engine/model's Kind) */
char *kt_step_hooks_new(const int64_t *desc, int64_t n, const double *param, const float *vecs, const int64_t *rows, int64_t hidden, kt_step_hooks *out);
void kt_step_hooks_free(kt_step_hooks h);
/* One step: args = {B, start (cache positions filled), ids[B], pad[B], rope positions[B]}; cache = {K0, V0, K1,
 * V1, ...} ([B, kv_heads, capacity, head_dim], the new position written at start); ropes = {cos, sin} tables
 * [positions, head_dim] (then the sliding layers' own, with local_rope); hooks nullable. logits: [B, vocab];
 * records: [B, the hooks' record width]. */
char *kt_decoder_step(kt_decoder d, kt_step_hooks hooks, const int64_t *args, const kt_tensor *cache, const kt_tensor *ropes, float *logits, float *records);

#ifdef __cplusplus
}
#endif
#endif

// llama2c_bench.c: the plain C reference of `keel bench decode --llama2c`: greedy decoding of a llama2.c checkpoint
// on one thread, with nothing between the loop and the arithmetic (no libtorch, no BLAS, no allocation per token).
//
// usage: keel-llama2c-bench MODEL.bin N PROMPT_IDS   (PROMPT_IDS: comma-separated, the first is BOS)
// prints: ids=ID,ID,...  (the N generated ids) and tokens_per_s=X (decode steps after the prompt, per second)
//
// The checkpoint layout (llama2.c's legacy export): 7 int32 (dim, hidden, layers, heads, kv_heads, vocab, seq_len;
// vocab > 0 when the classifier is the token embedding), then float32 arrays: embedding [vocab, dim], attention
// norms [layers, dim], wq [layers, dim, dim], wk and wv [layers, kv_dim, dim], wo [layers, dim, dim], FFN norms
// [layers, dim], w1 [layers, hidden, dim], w2 [layers, dim, hidden], w3 [layers, hidden, dim], final norm [dim],
// two RoPE tables [seq_len, head_size/2] (recomputed here), then the classifier when it is not shared.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  int dim, hidden, layers, heads, kv_heads, vocab, seq;
} Shape;

typedef struct {
  const float *embed, *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w1, *w2, *w3, *final_norm, *cls;
} Weights;

static void rms_norm(float *out, const float *x, const float *w, int n) {
  float ss = 0;
  for (int i = 0; i < n; i++) ss += x[i] * x[i];
  float inv = 1.0f / sqrtf(ss / (float)n + 1e-5f);
  for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

// out[d] = W[d, n] x[n]
static void gemv(float *out, const float *x, const float *w, int n, int d) {
  for (int i = 0; i < d; i++) {
    const float *row = w + (size_t)i * n;
    float s = 0;
    for (int j = 0; j < n; j++) s += row[j] * x[j];
    out[i] = s;
  }
}

// Interleaved RoPE (llama2.c's pairing): each (even, odd) pair of a head rotates by pos * theta^(-i/head_size).
static void rope(float *v, int n, int head_size, int pos) {
  for (int i = 0; i < n; i += 2) {
    int k = i % head_size;
    float angle = (float)pos * powf(10000.0f, -(float)k / (float)head_size);
    float c = cosf(angle), s = sinf(angle), a = v[i], b = v[i + 1];
    v[i] = a * c - b * s;
    v[i + 1] = a * s + b * c;
  }
}

typedef struct {
  float *x, *h, *q, *k, *v, *att, *o, *g, *u, *logits, *kcache, *vcache;
} State;

// step runs token at position pos through the model and returns the argmax of the next-token logits.
static int step(const Shape *c, const Weights *w, State *s, int token, int pos) {
  int D = c->dim, hs = c->dim / c->heads, kvd = hs * c->kv_heads, group = c->heads / c->kv_heads;
  memcpy(s->x, w->embed + (size_t)token * D, sizeof(float) * D);
  for (int l = 0; l < c->layers; l++) {
    rms_norm(s->h, s->x, w->attn_norm + (size_t)l * D, D);
    float *kc = s->kcache + (size_t)l * c->seq * kvd, *vc = s->vcache + (size_t)l * c->seq * kvd;
    gemv(s->q, s->h, w->wq + (size_t)l * D * D, D, D);
    gemv(kc + (size_t)pos * kvd, s->h, w->wk + (size_t)l * kvd * D, D, kvd);
    gemv(vc + (size_t)pos * kvd, s->h, w->wv + (size_t)l * kvd * D, D, kvd);
    rope(s->q, D, hs, pos);
    rope(kc + (size_t)pos * kvd, kvd, hs, pos);
    float scale = 1.0f / sqrtf((float)hs);
    for (int hd = 0; hd < c->heads; hd++) {
      const float *q = s->q + hd * hs;
      int kvh = hd / group;
      float top = -INFINITY;
      for (int t = 0; t <= pos; t++) {
        const float *k = kc + (size_t)t * kvd + kvh * hs;
        float dot = 0;
        for (int i = 0; i < hs; i++) dot += q[i] * k[i];
        s->att[t] = dot * scale;
        if (s->att[t] > top) top = s->att[t];
      }
      float sum = 0;
      for (int t = 0; t <= pos; t++) {
        s->att[t] = expf(s->att[t] - top);
        sum += s->att[t];
      }
      float *o = s->o + hd * hs;
      memset(o, 0, sizeof(float) * hs);
      for (int t = 0; t <= pos; t++) {
        const float *v = vc + (size_t)t * kvd + kvh * hs;
        float a = s->att[t] / sum;
        for (int i = 0; i < hs; i++) o[i] += a * v[i];
      }
    }
    gemv(s->h, s->o, w->wo + (size_t)l * D * D, D, D);
    for (int i = 0; i < D; i++) s->x[i] += s->h[i];
    rms_norm(s->h, s->x, w->ffn_norm + (size_t)l * D, D);
    gemv(s->g, s->h, w->w1 + (size_t)l * c->hidden * D, D, c->hidden);
    gemv(s->u, s->h, w->w3 + (size_t)l * c->hidden * D, D, c->hidden);
    for (int i = 0; i < c->hidden; i++) s->g[i] = s->g[i] / (1.0f + expf(-s->g[i])) * s->u[i];
    gemv(s->h, s->g, w->w2 + (size_t)l * D * c->hidden, c->hidden, D);
    for (int i = 0; i < D; i++) s->x[i] += s->h[i];
  }
  rms_norm(s->h, s->x, w->final_norm, D);
  gemv(s->logits, s->h, w->cls, D, c->vocab);
  int best = 0;
  for (int i = 1; i < c->vocab; i++)
    if (s->logits[i] > s->logits[best]) best = i;
  return best;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL.bin N PROMPT_IDS\n", argv[0]);
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  if (f == NULL) {
    fprintf(stderr, "open %s failed\n", argv[1]);
    return 1;
  }
  int32_t hdr[7];
  if (fread(hdr, sizeof(int32_t), 7, f) != 7) {
    fprintf(stderr, "%s: short header\n", argv[1]);
    return 1;
  }
  Shape c = {hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], abs(hdr[5]), hdr[6]};
  int shared = hdr[5] > 0;
  if (c.dim <= 0 || c.layers <= 0 || c.heads <= 0 || c.kv_heads <= 0 || c.heads % c.kv_heads != 0 || c.dim % c.heads != 0 || c.seq <= 0) {
    fprintf(stderr, "%s: not a llama2.c checkpoint header\n", argv[1]);
    return 1;
  }
  fseek(f, 0, SEEK_END);
  long bytes = ftell(f) - 7 * (long)sizeof(int32_t);
  fseek(f, 7 * (long)sizeof(int32_t), SEEK_SET);
  float *data = malloc((size_t)bytes);
  if (data == NULL || fread(data, 1, (size_t)bytes, f) != (size_t)bytes) {
    fprintf(stderr, "%s: read failed\n", argv[1]);
    return 1;
  }
  fclose(f);
  int D = c.dim, hs = D / c.heads, kvd = hs * c.kv_heads;
  size_t L = (size_t)c.layers;
  Weights w;
  const float *p = data;
  w.embed = p, p += (size_t)c.vocab * D;
  w.attn_norm = p, p += L * D;
  w.wq = p, p += L * D * D;
  w.wk = p, p += L * kvd * D;
  w.wv = p, p += L * kvd * D;
  w.wo = p, p += L * D * D;
  w.ffn_norm = p, p += L * D;
  w.w1 = p, p += L * c.hidden * D;
  w.w2 = p, p += L * D * c.hidden;
  w.w3 = p, p += L * c.hidden * D;
  w.final_norm = p, p += D;
  p += (size_t)c.seq * hs;  // the two RoPE tables, recomputed in rope()
  w.cls = shared ? w.embed : p;
  if ((size_t)((const char *)(shared ? p : p + (size_t)c.vocab * D) - (const char *)data) > (size_t)bytes) {
    fprintf(stderr, "%s: truncated weights\n", argv[1]);
    return 1;
  }

  int n = atoi(argv[2]);
  int prompt[4096], np = 0;
  for (char *tok = strtok(argv[3], ","); tok != NULL && np < 4096; tok = strtok(NULL, ",")) prompt[np++] = atoi(tok);
  if (n <= 0 || np == 0 || np + n > c.seq) {
    fprintf(stderr, "need N > 0 and 1..%d prompt + N positions\n", c.seq);
    return 2;
  }
  State s;
  s.x = calloc(D, sizeof(float)), s.h = calloc(D, sizeof(float)), s.q = calloc(D, sizeof(float));
  s.o = calloc(D, sizeof(float)), s.att = calloc(c.seq, sizeof(float));
  s.g = calloc(c.hidden, sizeof(float)), s.u = calloc(c.hidden, sizeof(float)), s.logits = calloc(c.vocab, sizeof(float));
  s.kcache = calloc(L * c.seq * kvd, sizeof(float)), s.vcache = calloc(L * c.seq * kvd, sizeof(float));
  int next = 0;
  for (int i = 0; i < np; i++) next = step(&c, &w, &s, prompt[i], i);
  int *out = malloc(sizeof(int) * n);
  out[0] = next;  // the prefill's choice is the first generated token; the clock times the N-1 steps after it
  double t0 = now();
  for (int i = 1; i < n; i++) out[i] = next = step(&c, &w, &s, next, np + i - 1);
  double secs = now() - t0;
  printf("ids=");
  for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", out[i]);
  printf("\ntokens_per_s=%.3f\n", secs > 0 ? (double)(n - 1) / secs : 0.0);
  return 0;
}

// cvec_driver: llama.cpp's next-token log-probabilities at every position of the token ids on stdin, with a
// control vector loaded by llama.cpp's own loader (node-llama-cpp has no control-vector call). It is compiled
// against the llama.cpp source and shared libraries that node-llama-cpp ships (see keel's gguf tests).
//
// usage: cvec_driver BACKEND_DIR MODEL.gguf CONTROL_VECTOR.gguf|- LAYER_START LAYER_END < ids
// prints: one JSON line per position: [[id, logprob], ...] (top 20)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

// llama.cpp's common library (libllama-common) loads control vector files; these mirror its declarations.
struct common_control_vector_data {
  int n_embd;
  std::vector<float> data;
};
struct common_control_vector_load_info {
  float strength;
  std::string fname;
};
common_control_vector_data common_control_vector_load(const std::vector<common_control_vector_load_info> &load_infos);

int main(int argc, char **argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: cvec_driver BACKEND_DIR MODEL.gguf CONTROL_VECTOR.gguf|- LAYER_START LAYER_END < ids\n");
    return 2;
  }
  std::vector<llama_token> ids;
  for (int id; std::scanf("%d", &id) == 1;) ids.push_back(id);
  if (ids.empty()) {
    std::fprintf(stderr, "no token ids on stdin\n");
    return 2;
  }
  ggml_backend_load_all_from_path(argv[1]);
  llama_backend_init();
  auto mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model *model = llama_model_load_from_file(argv[2], mp);
  if (!model) {
    std::fprintf(stderr, "cannot load %s\n", argv[2]);
    return 1;
  }
  auto cp = llama_context_default_params();
  cp.n_ctx = cp.n_batch = cp.n_ubatch = ids.size() + 8;
  cp.type_k = cp.type_v = GGML_TYPE_F32;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context *ctx = llama_init_from_model(model, cp);
  if (!ctx) {
    std::fprintf(stderr, "cannot create a context\n");
    return 1;
  }
  if (std::string(argv[3]) != "-") {
    auto cv = common_control_vector_load({{1.0f, argv[3]}});
    if (cv.n_embd < 0) {
      std::fprintf(stderr, "cannot load control vector %s\n", argv[3]);
      return 1;
    }
    if (llama_set_adapter_cvec(ctx, cv.data.data(), cv.data.size(), cv.n_embd, std::atoi(argv[4]), std::atoi(argv[5])) != 0) {
      std::fprintf(stderr, "cannot apply the control vector\n");
      return 1;
    }
  }
  llama_batch batch = llama_batch_init(ids.size(), 0, 1);
  for (size_t i = 0; i < ids.size(); i++) {
    batch.token[i] = ids[i];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  batch.n_tokens = ids.size();
  if (llama_decode(ctx, batch) != 0) {
    std::fprintf(stderr, "llama_decode failed\n");
    return 1;
  }
  int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  for (size_t i = 0; i < ids.size(); i++) {
    const float *lg = llama_get_logits_ith(ctx, i);
    double mx = -INFINITY, sum = 0;
    for (int v = 0; v < n_vocab; v++) mx = std::max(mx, double(lg[v]));
    for (int v = 0; v < n_vocab; v++) sum += std::exp(double(lg[v]) - mx);
    std::vector<int> order(n_vocab);
    for (int v = 0; v < n_vocab; v++) order[v] = v;
    std::partial_sort(order.begin(), order.begin() + std::min(20, n_vocab), order.end(), [&](int a, int b) { return lg[a] > lg[b]; });
    std::printf("[");
    for (int k = 0; k < std::min(20, n_vocab); k++) {
      std::printf("%s[%d,%.9g]", k ? "," : "", order[k], double(lg[order[k]]) - mx - std::log(sum));
    }
    std::printf("]\n");
  }
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

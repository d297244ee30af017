// keel_shim.h: what every source of the shim shares: error strings for the C ABI and tensor handles.
#pragma once
#include "keel_torch.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace keel_shim {

inline char *dup_error(const std::string &msg) {
  // Keep only the first line of libtorch's messages: the rest is a C++ backtrace.
  std::string first = msg.substr(0, msg.find('\n'));
  char *s = static_cast<char *>(std::malloc(first.size() + 1));
  if (s == nullptr) return nullptr;
  std::memcpy(s, first.c_str(), first.size() + 1);
  return s;
}

inline at::Tensor &T(kt_tensor t) {
  if (t == nullptr) throw std::invalid_argument("null tensor handle");
  return *static_cast<at::Tensor *>(t);
}

inline kt_tensor wrap(at::Tensor t) { return new at::Tensor(std::move(t)); }

}  // namespace keel_shim

// An entry point's body goes between KT_TRY and KT_CATCH: any exception becomes the returned error string.
#define KT_TRY try {
#define KT_CATCH                                            \
  }                                                         \
  catch (const c10::Error &e) {                             \
    return keel_shim::dup_error(e.what_without_backtrace()); \
  }                                                         \
  catch (const std::exception &e) {                         \
    return keel_shim::dup_error(e.what());                  \
  }                                                         \
  catch (...) {                                             \
    return keel_shim::dup_error("unknown C++ exception");   \
  }                                                         \
  return nullptr;

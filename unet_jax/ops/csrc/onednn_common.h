// What the oneDNN-backed kernels share (onednn_conv.cc, winograd_conv.cc): one CPU engine, a
// stream per thread, and per-thread scratch buffers.
#ifndef UNET_JAX_OPS_CSRC_ONEDNN_COMMON_H_
#define UNET_JAX_OPS_CSRC_ONEDNN_COMMON_H_

#include <cstddef>
#include <cstdlib>

#include "oneapi/dnnl/dnnl.hpp"

namespace unet {

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

inline dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// A per-thread scratch buffer (grown, never shrunk), slot 0 or 1. Kernels run one at a time
// (unet_kernel_mutex), so no two use a slot at once.
inline void* Scratch(size_t bytes, int slot) {
  struct Buffer { void* data = nullptr; size_t size = 0; };
  thread_local Buffer buffers[2];
  Buffer& b = buffers[slot];
  if (b.size < bytes) {
    std::free(b.data);
    b.size = (bytes + 4095) / 4096 * 4096;
    b.data = std::aligned_alloc(64, b.size);
  }
  return b.data;
}

}  // namespace unet

#endif  // UNET_JAX_OPS_CSRC_ONEDNN_COMMON_H_

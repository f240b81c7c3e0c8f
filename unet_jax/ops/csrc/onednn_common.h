// What the oneDNN-backed kernels share (onednn_conv.cc, winograd_conv.cc): one CPU engine, a
// stream per thread, per-thread scratch buffers, and primitives that take their scratchpad
// from the caller.
#ifndef UNET_JAX_OPS_CSRC_ONEDNN_COMMON_H_
#define UNET_JAX_OPS_CSRC_ONEDNN_COMMON_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

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

// A per-thread scratch buffer (grown, never shrunk), slot 0, 1 or 2 (kScratchpadSlot).
// Kernels run one at a time (unet_kernel_mutex), so no two use a slot at once.
constexpr int kScratchpadSlot = 2;
inline void* Scratch(size_t bytes, int slot) {
  struct Buffer { void* data = nullptr; size_t size = 0; };
  thread_local Buffer buffers[3];
  Buffer& b = buffers[slot];
  if (b.size < bytes) {
    std::free(b.data);
    b.size = (bytes + 4095) / 4096 * 4096;
    b.data = std::aligned_alloc(64, b.size);
  }
  return b.data;
}

// Attributes for every primitive we cache: scratchpad_mode::user. With oneDNN's default
// (library mode, one global scratchpad per thread sized when a primitive is created) a
// primitive run on a thread other than the one that created it reads the running thread's
// scratchpad, which may be smaller or absent: XLA calls a handler from any of its pool
// threads, and the GEMM (im2col) convolutions oneDNN picks on AVX2-only CPUs then crashed.
inline dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// The scratchpad a primitive built with UserScratchpad() asks for, in this thread's slot.
// Primitives run one after another on a thread, so they share the slot.
inline dnnl::memory Scratchpad(const dnnl::memory::desc& md) {
  return dnnl::memory(md, Engine(), Scratch(md.get_size() ? md.get_size() : 1, kScratchpadSlot));
}

// A cached matmul and the scratchpad it asks its caller for.
struct CachedMatmul {
  dnnl::matmul prim;
  dnnl::memory::desc scratchpad_md;
};

// The matmul cached under `key`, built from `make()` the first time (thread-safe); shared by
// the Winograd kernels and the matmul weight gradient.
inline std::shared_ptr<CachedMatmul> CachedMatmulFor(
    const std::string& key, const std::function<dnnl::matmul::primitive_desc()>& make) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<CachedMatmul>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto pd = make();
  auto cached =
      std::make_shared<CachedMatmul>(CachedMatmul{dnnl::matmul(pd), pd.scratchpad_desc()});
  cache.emplace(key, cached);
  return cached;
}

// A convolution's shape for the kernels outside onednn_conv.cc: x (N, H, W, C) NHWC, kernel
// (KH, KW, C, O), output (N, OH, OW, O); strides and top/left padding.
struct ConvDims {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pl;
  bool bf16;
};

// The weight gradient as one im2col matmul (filter_grad_matmul.cc), where it beats oneDNN's
// direct kernel; UNET_JAX_FILTER_GRAD=direct|matmul forces either (tests, benchmarks).
bool UseMatmulFilterGrad(const ConvDims& d);
// `key`: the convolution's cache key (any string that names its shape and dtype).
void MatmulFilterGrad(const ConvDims& d, const std::string& key, const void* x,
                      const void* dy, float* dw);

}  // namespace unet

#endif  // UNET_JAX_OPS_CSRC_ONEDNN_COMMON_H_

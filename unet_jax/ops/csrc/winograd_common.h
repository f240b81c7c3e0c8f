// What the Winograd F(2x2,3x3) kernels share: winograd_conv.cc (the kernel transform, the
// convolution and its transpose) and winograd_filter_grad.cc (the weight gradient). bf16
// conversions, the tiling, the input transform and a cache of oneDNN matmuls.
#ifndef UNET_JAX_OPS_CSRC_WINOGRAD_COMMON_H_
#define UNET_JAX_OPS_CSRC_WINOGRAD_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"

namespace unet_winograd {

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t F32ToBf16(float f) {  // Round to nearest even; NaN stays NaN.
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return uint16_t(bits >> 16);
}

// The transposed convolution reads U[k]^T at the rotated index: 4x4 rows and columns 0 <-> 3.
inline int Slot(int k, bool transpose) {
  if (!transpose) return k;
  static const int p[4] = {3, 1, 2, 0};
  return p[k / 4] * 4 + p[k % 4];
}

// x (n, h, w, ci) -> y (n, oh, ow, co); tile (ti, tj) reads input rows 2ti - pt .. 2ti - pt + 3.
struct Problem {
  int64_t n, h, w, ci, oh, ow, co, pt, pl;
  bool transpose;
  int64_t TilesH() const { return (oh + 1) / 2; }
  int64_t TilesW() const { return (ow + 1) / 2; }
  int64_t Tiles() const { return n * TilesH() * TilesW(); }
  // Tiles per chunk whose transformed buffers (`per_tile` bytes a tile) fit ~24 MiB, so big
  // images run in pieces instead of allocating 16x their activations.
  int64_t Chunk(int64_t per_tile) const {
    return std::max<int64_t>(1, std::min(Tiles(), (int64_t(24) << 20) / per_tile));
  }
  // Output tile t: where its top-left element sits in (n, oh, ow, co), and whether its second
  // row and column lie inside the output (not past an odd edge).
  struct Corner {
    int64_t offset;
    bool row1, col1;
  };
  Corner OutputCorner(int64_t t) const {
    int64_t b = t / (TilesH() * TilesW()), y0 = 2 * (t / TilesW() % TilesH()),
            x0 = 2 * (t % TilesW());
    return {((b * oh + y0) * ow + x0) * co, y0 + 1 < oh, x0 + 1 < ow};
  }
};

// A cached matmul and the scratchpad it asks its caller for.
struct CachedMatmul {
  dnnl::matmul prim;
  dnnl::memory::desc scratchpad_md;
};

// The matmul cached under `key`, built from `make()` the first time (thread-safe).
std::shared_ptr<CachedMatmul> CachedMatmulFor(
    const std::string& key, const std::function<dnnl::matmul::primitive_desc()>& make);

// The per-tile and per-row loops are compiled for AVX-512, AVX2 and the baseline, picked at
// load time (the rest of the build targets the baseline x86-64).
#define UNET_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// V = B^T d B for tile t of the input, every channel, into row r of the chunk's [16][rows][ci]
// (at the rotated index when p.transpose).
void InputTile(const Problem& p, const uint16_t* x, const uint16_t* zeros, uint16_t* v,
               int64_t rows, int64_t t, int64_t r);

}  // namespace unet_winograd

#endif  // UNET_JAX_OPS_CSRC_WINOGRAD_COMMON_H_

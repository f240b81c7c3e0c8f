// What the Winograd F(2x2,3x3) kernels share: winograd_conv.cc (the kernel transform, the
// convolution and its transpose) and winograd_filter_grad.cc (the weight gradient). The
// element types (bf16 as its uint16_t bits, or float32), the tiling, the input transform and
// a cache of oneDNN matmuls.
#ifndef UNET_JAX_OPS_CSRC_WINOGRAD_COMMON_H_
#define UNET_JAX_OPS_CSRC_WINOGRAD_COMMON_H_

#include <algorithm>
#include <chrono>
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

// Activations and transformed tiles are bf16 (E = uint16_t, its bits) or float32 (E = float);
// the transforms compute in float32 either way.
inline float ToF32(uint16_t v) { return Bf16ToF32(v); }
inline float ToF32(float v) { return v; }
template <typename E>
inline E FromF32(float f) {
  if constexpr (sizeof(E) == 2) return F32ToBf16(f);
  else return f;
}
template <typename E>
constexpr dnnl::memory::data_type DnnlType() {
  return sizeof(E) == 2 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}
template <typename E>
const char* TypeName() {
  return sizeof(E) == 2 ? "bf16" : "f32";
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
  // Tiles per chunk: big images run in pieces instead of allocating 16x their activations.
  // The chunk's transformed buffers (`per_tile` bytes a tile) take as many bytes as the
  // transformed kernel (`u_bytes`, which the matmul reads again for every chunk), within 4-24
  // MiB. Float32, 2-core AVX2 EPYC (32 MiB L3), summed over a U-Net's layers, best per pass:
  // 16-256 channels 4 MiB 486 ms, 24 MiB 538 (512 KiB 570); 64-1024 channels 4 MiB 1303 ms,
  // 8 MiB 1229, 24 MiB 1268, where the 512- and 1024-channel layers want the most.
  int64_t Chunk(int64_t per_tile, int64_t u_bytes) const {
    const int64_t bytes = std::clamp<int64_t>(u_bytes, int64_t(4) << 20, int64_t(24) << 20);
    return std::max<int64_t>(1, std::min(Tiles(), bytes / per_tile));
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

// The distance in elements between the 16 planes of a chunk's transformed tiles ([16][rows][c]):
// rows * c, padded by one cache line. Unpadded it is a multiple of 4 KiB whenever the tile and
// channel counts are powers of two (most U-Net layers), and the transforms' 16 streams then
// fall into the same L1 sets and evict each other.
inline int64_t PlaneStride(int64_t rows, int64_t c, size_t element_size) {
  return rows * c + int64_t(64 / element_size);
}

using unet::CachedMatmul;  // onednn_common.h: the cache of oneDNN matmuls.
using unet::CachedMatmulFor;

// The best seconds of `repeats` calls of `work` (the autotune's measurements), or -1 if
// oneDNN fails.
template <typename Work>
double BestSeconds(int repeats, const Work& work) {
  double best = 1e30;
  try {
    for (int i = 0; i < repeats; ++i) {
      auto start = std::chrono::steady_clock::now();
      work();
      best = std::min(best, std::chrono::duration<double>(
          std::chrono::steady_clock::now() - start).count());
    }
  } catch (const dnnl::error&) {
    return -1.0;
  }
  return best;
}

// The per-tile and per-row loops are compiled for AVX-512, AVX2 and the baseline, picked at
// load time (the rest of the build targets the baseline x86-64).
#define UNET_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// V = B^T d B for tile t of the input, every channel, into row r of the chunk's [16][rows][ci]
// (planes `plane` elements apart; at the rotated index when p.transpose). Its loop body;
// InputTile is it compiled per ISA.
template <typename E>
inline void InputTileBody(const Problem& p, const E* x, const E* zeros, E* v, int64_t plane,
                          int64_t t, int64_t r) {
  const int64_t C = p.ci, th = p.TilesH(), tw = p.TilesW();
  int64_t b = t / (th * tw), ti = t / tw % th, tj = t % tw;
  const E* src[16];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      int64_t yy = 2 * ti - p.pt + i, xx = 2 * tj - p.pl + j;
      src[i * 4 + j] = (yy < 0 || yy >= p.h || xx < 0 || xx >= p.w)
                           ? zeros : x + ((b * p.h + yy) * p.w + xx) * C;
    }
  E* dst[16];
  for (int k = 0; k < 16; ++k) dst[k] = v + Slot(k, p.transpose) * plane + r * C;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    float d[4][4], e[4][4];
    for (int k = 0; k < 16; ++k) d[k / 4][k % 4] = ToF32(src[k][c]);
    for (int j = 0; j < 4; ++j) {  // B^T d.
      e[0][j] = d[0][j] - d[2][j];
      e[1][j] = d[1][j] + d[2][j];
      e[2][j] = d[2][j] - d[1][j];
      e[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; ++i) {  // (B^T d) B.
      dst[i * 4 + 0][c] = FromF32<E>(e[i][0] - e[i][2]);
      dst[i * 4 + 1][c] = FromF32<E>(e[i][1] + e[i][2]);
      dst[i * 4 + 2][c] = FromF32<E>(e[i][2] - e[i][1]);
      dst[i * 4 + 3][c] = FromF32<E>(e[i][1] - e[i][3]);
    }
  }
}
void InputTile(const Problem& p, const uint16_t* x, const uint16_t* zeros, uint16_t* v,
               int64_t plane, int64_t t, int64_t r);
void InputTile(const Problem& p, const float* x, const float* zeros, float* v, int64_t plane,
               int64_t t, int64_t r);

}  // namespace unet_winograd

#endif  // UNET_JAX_OPS_CSRC_WINOGRAD_COMMON_H_

// The loops of norm_pool.cc, compiled once per instruction set: a norm_pool_<isa>.cc defines
// UNET_ISA (the namespace) and a `#pragma GCC target`, then includes this file. The loops
// are branch-free so the compiler vectorises them (bf16 <-> f32 conversions included).
//
// Activations are (rows, c) row-major (NHWC flattened); per-channel values are float32.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifndef UNET_ISA
#error "define UNET_ISA before including norm_pool_kernels.h"
#endif

namespace unet_kernels {
namespace UNET_ISA {
namespace {

inline float Load(const float* __restrict p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* __restrict p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void Store(float* __restrict p, int64_t i, float v) { p[i] = v; }
inline void Store(uint16_t* __restrict p, int64_t i, float v) {
  // Round to nearest even, as XLA's convert does; NaN stays a (quiet) NaN.
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  uint32_t nan = (bits >> 16) | 0x40u;
  p[i] = static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

constexpr int64_t kBlockRows = 64;  // float32 partial sums per block, added up in double.

// Per-channel sums over (rows, c): out0 = sum of f0(r, j), out1 = sum of f1(r, j).
template <typename Row>
void ChannelSums(int64_t rows, int64_t c, Row row, float* out0, float* out1) {
  const int threads = omp_get_max_threads();
  std::vector<double> totals(2 * c * threads, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    double* t0 = &totals[2 * c * t];
    double* t1 = t0 + c;
    std::vector<float> block0(c), block1(c);
    float* __restrict b0 = block0.data();
    float* __restrict b1 = block1.data();
    const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      std::fill(b0, b0 + c, 0.f);
      std::fill(b1, b1 + c, 0.f);
      const int64_t end = std::min(rows, (blk + 1) * kBlockRows);
      for (int64_t r = blk * kBlockRows; r < end; ++r) row(r * c, b0, b1);
      for (int64_t j = 0; j < c; ++j) { t0[j] += b0[j]; t1[j] += b1[j]; }
    }
  }
  for (int64_t j = 0; j < c; ++j) {
    double s0 = 0, s1 = 0;
    for (int t = 0; t < threads; ++t) {
      s0 += totals[2 * c * t + j];
      s1 += totals[2 * c * t + c + j];
    }
    out0[j] = static_cast<float>(s0);
    out1[j] = static_cast<float>(s1);
  }
}

template <typename T>
void StatsT(const T* __restrict x, int64_t rows, int64_t c, float* sum, float* sumsq) {
  ChannelSums(rows, c, [=](int64_t base, float* __restrict b0, float* __restrict b1) {
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float v = Load(x, base + j);
      b0[j] += v;
      b1[j] += v * v;
    }
  }, sum, sumsq);
}

// The forward's pre-activation x * scale + shift, computed by the same expression in every
// pass so that the backward recomputes the ReLU's mask bit for bit instead of reading y.
inline float Affine(float x, float scale, float shift) { return x * scale + shift; }

// y = x * scale + shift, then max(y, 0) when relu.
template <typename T>
void ApplyT(const T* __restrict x, const float* __restrict scale, const float* __restrict shift,
            int64_t rows, int64_t c, bool relu, T* __restrict y) {
  const float floor = relu ? 0.f : -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float v = Affine(Load(x, base + j), scale[j], shift[j]);
      Store(y, base + j, v < floor ? floor : v);  // NaN passes through, as in XLA's max.
    }
  }
}

// dz = dy where x * scale + shift > floor (the ReLU's mask; every element without relu),
// else 0. sum_dz = sum dz, sum_dz_x = sum dz * x.
template <typename T>
void BackwardSumsT(const T* __restrict dy, const T* __restrict x, const float* __restrict scale,
                   const float* __restrict shift, int64_t rows, int64_t c, bool relu,
                   float* sum_dz, float* sum_dz_x) {
  const float floor = relu ? 0.f : -std::numeric_limits<float>::infinity();
  ChannelSums(rows, c, [=](int64_t base, float* __restrict b0, float* __restrict b1) {
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float g = Load(dy, base + j);  // Loaded unconditionally: the select vectorises.
      const float v = Load(x, base + j);
      const float dz = Affine(v, scale[j], shift[j]) > floor ? g : 0.f;
      b0[j] += dz;
      b1[j] += dz * v;
    }
  }, sum_dz, sum_dz_x);
}

// dx = scale * dz + b * x + c (scale, the forward's multiplier, is dx's coefficient of dz).
template <typename T>
void BackwardApplyT(const T* __restrict dy, const T* __restrict x, const float* __restrict scale,
                    const float* __restrict shift, const float* __restrict b,
                    const float* __restrict cc, int64_t rows, int64_t c, bool relu,
                    T* __restrict dx) {
  const float floor = relu ? 0.f : -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float g = Load(dy, base + j);  // Loaded unconditionally: the select vectorises.
      const float v = Load(x, base + j);
      const float dz = Affine(v, scale[j], shift[j]) > floor ? g : 0.f;
      Store(dx, base + j, scale[j] * dz + b[j] * v + cc[j]);
    }
  }
}

// 2x2 stride-2 max-pool of (n, h, w, c) into (n, h/2, w/2, c); odd edges dropped (VALID).
template <typename T>
void MaxPoolT(const T* __restrict x, int64_t n, int64_t h, int64_t w, int64_t c,
              T* __restrict y) {
  const int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t jw = 0; jw < ow; ++jw) {
        const int64_t r0 = ((b * h + 2 * i) * w + 2 * jw) * c, r1 = r0 + w * c;
        const int64_t out = ((b * oh + i) * ow + jw) * c;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          const float top = std::max(Load(x, r0 + k), Load(x, r0 + c + k));
          const float bottom = std::max(Load(x, r1 + k), Load(x, r1 + c + k));
          Store(y, out + k, std::max(top, bottom));
        }
      }
}

// Each window's gradient goes to its first maximum in row-major order (XLA's
// select-and-scatter with >= picks the same one); the rest of the window, and odd dropped
// edges, get 0.
template <typename T>
void MaxPoolBackwardT(const T* __restrict x, const T* __restrict dy, int64_t n, int64_t h,
                      int64_t w, int64_t c, T* __restrict dx) {
  const int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < oh; ++i) {
      for (int64_t jw = 0; jw < ow; ++jw) {
        const int64_t r0 = ((b * h + 2 * i) * w + 2 * jw) * c, r1 = r0 + w * c;
        const int64_t out = ((b * oh + i) * ow + jw) * c;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          const float v00 = Load(x, r0 + k), v01 = Load(x, r0 + c + k);
          const float v10 = Load(x, r1 + k), v11 = Load(x, r1 + c + k);
          const float m = std::max(std::max(v00, v01), std::max(v10, v11));
          const float g = Load(dy, out + k);
          // Non-short-circuit logic, so the loop has no branches and vectorises.
          const bool e00 = v00 == m, e01 = v01 == m, e10 = v10 == m;
          const bool p00 = e00, p01 = e01 & !e00, p10 = e10 & !(e00 | e01);
          const bool p11 = !(e00 | e01 | e10);
          Store(dx, r0 + k, p00 ? g : 0.f);
          Store(dx, r0 + c + k, p01 ? g : 0.f);
          Store(dx, r1 + k, p10 ? g : 0.f);
          Store(dx, r1 + c + k, p11 ? g : 0.f);
        }
      }
      if (w > 2 * ow) {  // The dropped odd last column of both rows.
        std::memset(dx + ((b * h + 2 * i) * w + 2 * ow) * c, 0, sizeof(T) * c);
        std::memset(dx + ((b * h + 2 * i + 1) * w + 2 * ow) * c, 0, sizeof(T) * c);
      }
    }
  if (h > 2 * oh)  // The dropped odd last row of every image.
    for (int64_t b = 0; b < n; ++b)
      std::memset(dx + ((b * h + 2 * oh) * w) * c, 0, sizeof(T) * w * c);
}

// Squeeze-excitation's per-sample passes over (n, hw, c) activations; the per-(sample,
// channel) operands and results, (n, c), are float32.
constexpr int64_t kChunkRows = 1024;  // Rows a work item sums (samples split for few of them).

// out[s, j] = sum over sample s's rows of a[., j], or of a[., j] * b[., j] when `product`.
template <typename T>
void SampleSumsT(const T* __restrict a, const T* __restrict b, bool product, int64_t n,
                 int64_t hw, int64_t c, float* __restrict out) {
  const int64_t chunks = (hw + kChunkRows - 1) / kChunkRows;
  std::vector<float> partial(n * chunks * c);
#pragma omp parallel
  {
    std::vector<float> block(c);
    float* __restrict acc = block.data();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < n * chunks; ++item) {
      const int64_t s = item / chunks, first = (item % chunks) * kChunkRows;
      const int64_t end = std::min(hw, first + kChunkRows);
      float* __restrict sums = &partial[item * c];
      std::fill(sums, sums + c, 0.f);
      for (int64_t r0 = first; r0 < end; r0 += kBlockRows) {
        std::fill(acc, acc + c, 0.f);
        for (int64_t r = r0; r < std::min(end, r0 + kBlockRows); ++r) {
          const int64_t base = (s * hw + r) * c;
          if (product) {
#pragma omp simd
            for (int64_t j = 0; j < c; ++j) acc[j] += Load(a, base + j) * Load(b, base + j);
          } else {
#pragma omp simd
            for (int64_t j = 0; j < c; ++j) acc[j] += Load(a, base + j);
          }
        }
        for (int64_t j = 0; j < c; ++j) sums[j] += acc[j];
      }
    }
  }
  for (int64_t s = 0; s < n; ++s)
    for (int64_t j = 0; j < c; ++j) {
      double total = 0;
      for (int64_t k = 0; k < chunks; ++k) total += partial[(s * chunks + k) * c + j];
      out[s * c + j] = static_cast<float>(total);
    }
}

// y[s, r, j] = x[s, r, j] * scale[s, j] + shift[s, j].
template <typename T>
void SampleAffineT(const T* __restrict x, const float* __restrict scale,
                   const float* __restrict shift, int64_t n, int64_t hw, int64_t c,
                   T* __restrict y) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n * hw; ++row) {
    const float* __restrict sample_scale = scale + (row / hw) * c;
    const float* __restrict sample_shift = shift + (row / hw) * c;
    const int64_t base = row * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j)
      Store(y, base + j, Load(x, base + j) * sample_scale[j] + sample_shift[j]);
  }
}

}  // namespace

// Entry points; bf16 activations are passed as uint16_t bit patterns.
void Stats(bool bf16, const void* x, int64_t rows, int64_t c, float* sum, float* sumsq) {
  if (bf16) StatsT(static_cast<const uint16_t*>(x), rows, c, sum, sumsq);
  else StatsT(static_cast<const float*>(x), rows, c, sum, sumsq);
}
void Apply(bool bf16, const void* x, const float* scale, const float* shift, int64_t rows,
           int64_t c, bool relu, void* y) {
  if (bf16) ApplyT(static_cast<const uint16_t*>(x), scale, shift, rows, c, relu,
                   static_cast<uint16_t*>(y));
  else ApplyT(static_cast<const float*>(x), scale, shift, rows, c, relu, static_cast<float*>(y));
}
void BackwardSums(bool bf16, const void* dy, const void* x, const float* scale,
                  const float* shift, int64_t rows, int64_t c, bool relu, float* sum_dz,
                  float* sum_dz_x) {
  if (bf16) BackwardSumsT(static_cast<const uint16_t*>(dy), static_cast<const uint16_t*>(x),
                          scale, shift, rows, c, relu, sum_dz, sum_dz_x);
  else BackwardSumsT(static_cast<const float*>(dy), static_cast<const float*>(x), scale, shift,
                     rows, c, relu, sum_dz, sum_dz_x);
}
void BackwardApply(bool bf16, const void* dy, const void* x, const float* scale,
                   const float* shift, const float* b, const float* cc, int64_t rows,
                   int64_t c, bool relu, void* dx) {
  if (bf16) BackwardApplyT(static_cast<const uint16_t*>(dy), static_cast<const uint16_t*>(x),
                           scale, shift, b, cc, rows, c, relu, static_cast<uint16_t*>(dx));
  else BackwardApplyT(static_cast<const float*>(dy), static_cast<const float*>(x), scale, shift,
                      b, cc, rows, c, relu, static_cast<float*>(dx));
}
void MaxPool(bool bf16, const void* x, int64_t n, int64_t h, int64_t w, int64_t c, void* y) {
  if (bf16) MaxPoolT(static_cast<const uint16_t*>(x), n, h, w, c, static_cast<uint16_t*>(y));
  else MaxPoolT(static_cast<const float*>(x), n, h, w, c, static_cast<float*>(y));
}
void MaxPoolBackward(bool bf16, const void* x, const void* dy, int64_t n, int64_t h, int64_t w,
                     int64_t c, void* dx) {
  if (bf16) MaxPoolBackwardT(static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(dy),
                             n, h, w, c, static_cast<uint16_t*>(dx));
  else MaxPoolBackwardT(static_cast<const float*>(x), static_cast<const float*>(dy), n, h, w, c,
                        static_cast<float*>(dx));
}
void SampleSums(bool bf16, const void* a, const void* b, bool product, int64_t n, int64_t hw,
                int64_t c, float* out) {
  if (bf16) SampleSumsT(static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b),
                        product, n, hw, c, out);
  else SampleSumsT(static_cast<const float*>(a), static_cast<const float*>(b), product, n, hw,
                   c, out);
}
void SampleAffine(bool bf16, const void* x, const float* scale, const float* shift, int64_t n,
                  int64_t hw, int64_t c, void* y) {
  if (bf16) SampleAffineT(static_cast<const uint16_t*>(x), scale, shift, n, hw, c,
                          static_cast<uint16_t*>(y));
  else SampleAffineT(static_cast<const float*>(x), scale, shift, n, hw, c,
                     static_cast<float*>(y));
}

}  // namespace UNET_ISA
}  // namespace unet_kernels

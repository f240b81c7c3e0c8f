// Memory-bound passes of the U-Net block for JAX on the CPU, as XLA FFI handlers (plain
// C++ loops, vectorised by the compiler; the convolutions are oneDNN's, in onednn_conv.cc):
// BatchNorm + ReLU (statistics, normalise, and both halves of the backward pass) and the
// 2x2 stride-2 max-pool with its gradient. One pass over memory each, OpenMP over rows,
// fp32 or bf16 activations (per-channel sums and scales always fp32).
//
// BatchNorm is split at its two reductions so that, with the batch sharded over devices, the
// per-channel sums can be added across devices between the passes (the statistics and the
// gradients stay those of the global batch, as nn.BatchNorm's are under sharded jit).

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void Store(float* p, int64_t i, float v) { p[i] = v; }
inline void Store(uint16_t* p, int64_t i, float v) {  // Round to nearest even, as XLA does.
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    p[i] = static_cast<uint16_t>((bits >> 16) | 0x40);  // Quiet NaN.
    return;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  p[i] = static_cast<uint16_t>(bits >> 16);
}

constexpr int64_t kBlockRows = 64;  // fp32 partial sums per block, then added in double.

// Per-channel sums over the rows of an (rows, c) array: out0 = sum f0, out1 = sum f1.
template <typename Row>
void ChannelSums(int64_t rows, int64_t c, Row row, float* out0, float* out1) {
  int threads = omp_get_max_threads();
  std::vector<double> totals(2 * c * threads, 0.0);
#pragma omp parallel num_threads(threads)
  {
    int t = omp_get_thread_num();
    double* t0 = &totals[2 * c * t];
    double* t1 = t0 + c;
    std::vector<float> b0(c), b1(c);
    int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      std::fill(b0.begin(), b0.end(), 0.f);
      std::fill(b1.begin(), b1.end(), 0.f);
      int64_t end = std::min(rows, (blk + 1) * kBlockRows);
      for (int64_t r = blk * kBlockRows; r < end; ++r) row(r, b0.data(), b1.data());
      for (int64_t j = 0; j < c; ++j) { t0[j] += b0[j]; t1[j] += b1[j]; }
    }
  }
  for (int64_t j = 0; j < c; ++j) {
    double s0 = 0, s1 = 0;
    for (int t = 0; t < threads; ++t) { s0 += totals[2 * c * t + j]; s1 += totals[2 * c * t + c + j]; }
    out0[j] = static_cast<float>(s0);
    out1[j] = static_cast<float>(s1);
  }
}

template <typename T>
void Stats(const T* x, int64_t rows, int64_t c, float* sum, float* sumsq) {
  ChannelSums(rows, c, [&](int64_t r, float* b0, float* b1) {
    const int64_t base = r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      float v = Load(x, base + j);
      b0[j] += v;
      b1[j] += v * v;
    }
  }, sum, sumsq);
}

// y = x * scale + shift, then max(y, 0) if relu.
template <typename T>
void Apply(const T* x, const float* scale, const float* shift, int64_t rows, int64_t c, bool relu,
           T* y) {
  const float floor = relu ? 0.f : -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j)
      Store(y, base + j, std::max(Load(x, base + j) * scale[j] + shift[j], floor));
  }
}

// With dz = dy * (y > 0) (dz = dy without the ReLU): sum_dz = sum dz, sum_dz_x = sum dz * x.
template <typename T>
void BackwardSums(const T* dy, const T* y, const T* x, int64_t rows, int64_t c, bool relu,
                  float* sum_dz, float* sum_dz_x) {
  const float floor = relu ? 0.f : -std::numeric_limits<float>::infinity();
  ChannelSums(rows, c, [&](int64_t r, float* b0, float* b1) {
    const int64_t base = r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      float dz = Load(y, base + j) > floor ? Load(dy, base + j) : 0.f;
      b0[j] += dz;
      b1[j] += dz * Load(x, base + j);
    }
  }, sum_dz, sum_dz_x);
}

// dx = a * dz + b * x + c with dz as above.
template <typename T>
void BackwardApply(const T* dy, const T* y, const T* x, const float* a, const float* b,
                   const float* cc, int64_t rows, int64_t c, bool relu, T* dx) {
  const float floor = relu ? 0.f : -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      float dz = Load(y, base + j) > floor ? Load(dy, base + j) : 0.f;
      Store(dx, base + j, a[j] * dz + b[j] * Load(x, base + j) + cc[j]);
    }
  }
}

// 2x2 stride-2 max-pool of (n, h, w, c) into (n, h/2, w/2, c); odd edges are dropped (VALID).
template <typename T>
void MaxPool(const T* x, int64_t n, int64_t h, int64_t w, int64_t c, T* y) {
  const int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t jw = 0; jw < ow; ++jw) {
        const int64_t r0 = ((b * h + 2 * i) * w + 2 * jw) * c, r1 = r0 + w * c;
        const int64_t out = ((b * oh + i) * ow + jw) * c;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k)
          Store(y, out + k, std::max(std::max(Load(x, r0 + k), Load(x, r0 + c + k)),
                                     std::max(Load(x, r1 + k), Load(x, r1 + c + k))));
      }
}

// The gradient goes to the first maximum of each window in row-major order (as XLA's
// select-and-scatter with `>=` picks it); the rest of the window gets 0.
template <typename T>
void MaxPoolBackward(const T* x, const T* dy, int64_t n, int64_t h, int64_t w, int64_t c, T* dx) {
  const int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < h; ++i) {
      T* row = dx + (b * h + i) * w * c;
      if (i >= 2 * oh) {  // A dropped odd last row.
        std::memset(row, 0, sizeof(T) * w * c);
        continue;
      }
      const int64_t top = (b * h + (i & ~int64_t{1})) * w * c;
      const bool is_top = (i & 1) == 0;
      for (int64_t jw = 0; jw < ow; ++jw) {
        const int64_t r0 = top + 2 * jw * c, r1 = r0 + w * c;
        const int64_t out = ((b * oh + i / 2) * ow + jw) * c;
        for (int64_t k = 0; k < c; ++k) {
          float v00 = Load(x, r0 + k), v01 = Load(x, r0 + c + k);
          float v10 = Load(x, r1 + k), v11 = Load(x, r1 + c + k);
          float m = std::max(std::max(v00, v01), std::max(v10, v11));
          int pick = v00 == m ? 0 : v01 == m ? 1 : v10 == m ? 2 : 3;
          float g = Load(dy, out + k);
          int base = is_top ? 0 : 2;
          Store(row, 2 * jw * c + k, pick == base ? g : 0.f);
          Store(row, (2 * jw + 1) * c + k, pick == base + 1 ? g : 0.f);
        }
      }
      if (w > 2 * ow) std::memset(row + 2 * ow * c, 0, sizeof(T) * c);
    }
}

bool IsBf16(const ffi::AnyBuffer& b) { return b.element_type() == ffi::DataType::BF16; }

ffi::Error CheckActivation(const ffi::AnyBuffer& b, const char* op) {
  auto dt = b.element_type();
  if (dt != ffi::DataType::F32 && dt != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument(std::string(op) + ": only float32 and bfloat16");
  if (b.dimensions().size() < 1)
    return ffi::Error::InvalidArgument(std::string(op) + ": needs a channel axis");
  return ffi::Error::Success();
}

int64_t Channels(const ffi::AnyBuffer& b) { return b.dimensions().back(); }
int64_t Rows(const ffi::AnyBuffer& b) {
  int64_t c = Channels(b);
  return c ? static_cast<int64_t>(b.element_count()) / c : 0;
}
float* F32(ffi::AnyBuffer b) { return static_cast<float*>(b.untyped_data()); }
template <typename T>
T* Data(const ffi::AnyBuffer& b) { return static_cast<T*>(b.untyped_data()); }

ffi::Error BnStatsImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> sum,
                       ffi::Result<ffi::AnyBuffer> sumsq) {
  if (auto e = CheckActivation(x, "bn_stats"); e.failure()) return e;
  if (IsBf16(x)) Stats(Data<uint16_t>(x), Rows(x), Channels(x), F32(*sum), F32(*sumsq));
  else Stats(Data<float>(x), Rows(x), Channels(x), F32(*sum), F32(*sumsq));
  return ffi::Error::Success();
}

ffi::Error BnReluImpl(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                      ffi::Result<ffi::AnyBuffer> y, bool relu) {
  if (auto e = CheckActivation(x, "bn_relu"); e.failure()) return e;
  if (IsBf16(x))
    Apply(Data<uint16_t>(x), F32(scale), F32(shift), Rows(x), Channels(x), relu,
          Data<uint16_t>(*y));
  else
    Apply(Data<float>(x), F32(scale), F32(shift), Rows(x), Channels(x), relu, Data<float>(*y));
  return ffi::Error::Success();
}

ffi::Error BnReluBackwardSumsImpl(ffi::AnyBuffer dy, ffi::AnyBuffer y, ffi::AnyBuffer x,
                                  ffi::Result<ffi::AnyBuffer> sum_dz,
                                  ffi::Result<ffi::AnyBuffer> sum_dz_x, bool relu) {
  if (auto e = CheckActivation(x, "bn_relu_backward"); e.failure()) return e;
  if (IsBf16(x))
    BackwardSums(Data<uint16_t>(dy), Data<uint16_t>(y), Data<uint16_t>(x), Rows(x), Channels(x),
                 relu, F32(*sum_dz), F32(*sum_dz_x));
  else
    BackwardSums(Data<float>(dy), Data<float>(y), Data<float>(x), Rows(x), Channels(x), relu,
                 F32(*sum_dz), F32(*sum_dz_x));
  return ffi::Error::Success();
}

ffi::Error BnReluBackwardImpl(ffi::AnyBuffer dy, ffi::AnyBuffer y, ffi::AnyBuffer x,
                              ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer c,
                              ffi::Result<ffi::AnyBuffer> dx, bool relu) {
  if (auto e = CheckActivation(x, "bn_relu_backward"); e.failure()) return e;
  if (IsBf16(x))
    BackwardApply(Data<uint16_t>(dy), Data<uint16_t>(y), Data<uint16_t>(x), F32(a), F32(b),
                  F32(c), Rows(x), Channels(x), relu, Data<uint16_t>(*dx));
  else
    BackwardApply(Data<float>(dy), Data<float>(y), Data<float>(x), F32(a), F32(b), F32(c),
                  Rows(x), Channels(x), relu, Data<float>(*dx));
  return ffi::Error::Success();
}

ffi::Error CheckPool(const ffi::AnyBuffer& x) {
  if (auto e = CheckActivation(x, "max_pool"); e.failure()) return e;
  if (x.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("max_pool: input must be NHWC");
  return ffi::Error::Success();
}

ffi::Error MaxPoolImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (auto e = CheckPool(x); e.failure()) return e;
  auto d = x.dimensions();
  if (IsBf16(x)) MaxPool(Data<uint16_t>(x), d[0], d[1], d[2], d[3], Data<uint16_t>(*y));
  else MaxPool(Data<float>(x), d[0], d[1], d[2], d[3], Data<float>(*y));
  return ffi::Error::Success();
}

ffi::Error MaxPoolBackwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                               ffi::Result<ffi::AnyBuffer> dx) {
  if (auto e = CheckPool(x); e.failure()) return e;
  auto d = x.dimensions();
  if (IsBf16(x))
    MaxPoolBackward(Data<uint16_t>(x), Data<uint16_t>(dy), d[0], d[1], d[2], d[3],
                    Data<uint16_t>(*dx));
  else
    MaxPoolBackward(Data<float>(x), Data<float>(dy), d[0], d[1], d[2], d[3], Data<float>(*dx));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetBnStats, BnStatsImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetBnRelu, BnReluImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetBnReluBackwardSums, BnReluBackwardSumsImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetBnReluBackward, BnReluBackwardImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetMaxPool, MaxPoolImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetMaxPoolBackward, MaxPoolBackwardImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

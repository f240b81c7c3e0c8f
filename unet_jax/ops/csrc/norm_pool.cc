// Memory-bound passes of the U-Net block for JAX on the CPU, as XLA FFI handlers:
// BatchNorm + ReLU (statistics, normalise, and both halves of the backward pass) and the
// 2x2 stride-2 max-pool with its gradient, the skip connection's channel concatenation
// with its split, and squeeze-excitation's per-sample passes (the convolutions are oneDNN's:
// onednn_conv.cc).
// One pass over memory each, OpenMP over rows, fp32 or bf16 activations (per-channel sums
// and scales always fp32). The loops (norm_pool_kernels.h) are compiled for AVX-512, AVX2
// and baseline x86-64; the best the CPU supports is picked once at run time.
//
// BatchNorm is split at its two reductions so that, with the batch sharded over devices, the
// per-channel sums can be added across devices between the passes (the statistics and the
// gradients stay those of the global batch, as nn.BatchNorm's are under sharded jit).

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#define UNET_DECLARE_ISA(isa)                                                                  \
  namespace unet_kernels::isa {                                                                \
  void Stats(bool, const void*, int64_t, int64_t, float*, float*);                             \
  void Apply(bool, const void*, const float*, const float*, int64_t, int64_t, bool, void*);    \
  void BackwardSums(bool, const void*, const void*, const float*, const float*, int64_t,      \
                    int64_t, bool, float*, float*);                                            \
  void BackwardApply(bool, const void*, const void*, const float*, const float*, const float*, \
                     const float*, int64_t, int64_t, bool, void*);                             \
  void MaxPool(bool, const void*, int64_t, int64_t, int64_t, int64_t, void*);                  \
  void MaxPoolBackward(bool, const void*, const void*, int64_t, int64_t, int64_t, int64_t,     \
                       void*);                                                                 \
  void SampleSums(bool, const void*, const void*, bool, int64_t, int64_t, int64_t, float*);    \
  void SampleAffine(bool, const void*, const float*, const float*, int64_t, int64_t, int64_t,  \
                    void*);                                                                    \
  }

std::mutex& unet_kernel_mutex();  // onednn_conv.cc: one kernel at a time.

UNET_DECLARE_ISA(baseline)
#if defined(__x86_64__)
UNET_DECLARE_ISA(avx2)
UNET_DECLARE_ISA(avx512)
#endif

namespace {

struct Kernels {
  decltype(&unet_kernels::baseline::Stats) stats;
  decltype(&unet_kernels::baseline::Apply) apply;
  decltype(&unet_kernels::baseline::BackwardSums) backward_sums;
  decltype(&unet_kernels::baseline::BackwardApply) backward_apply;
  decltype(&unet_kernels::baseline::MaxPool) max_pool;
  decltype(&unet_kernels::baseline::MaxPoolBackward) max_pool_backward;
  decltype(&unet_kernels::baseline::SampleSums) sample_sums;
  decltype(&unet_kernels::baseline::SampleAffine) sample_affine;
};

#define UNET_KERNELS(isa)                                                                     \
  Kernels {                                                                                   \
    unet_kernels::isa::Stats, unet_kernels::isa::Apply, unet_kernels::isa::BackwardSums,     \
        unet_kernels::isa::BackwardApply, unet_kernels::isa::MaxPool,                         \
        unet_kernels::isa::MaxPoolBackward, unet_kernels::isa::SampleSums,                    \
        unet_kernels::isa::SampleAffine                                                       \
  }

const Kernels& Best() {
  static const Kernels kernels = [] {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return UNET_KERNELS(avx512);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return UNET_KERNELS(avx2);
#endif
    return UNET_KERNELS(baseline);
  }();
  return kernels;
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

ffi::Error BnStatsImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> sum,
                       ffi::Result<ffi::AnyBuffer> sumsq) {
  if (auto e = CheckActivation(x, "bn_stats"); e.failure()) return e;
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  Best().stats(IsBf16(x), x.untyped_data(), Rows(x), Channels(x), F32(*sum), F32(*sumsq));
  return ffi::Error::Success();
}

ffi::Error BnReluImpl(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                      ffi::Result<ffi::AnyBuffer> y, bool relu) {
  if (auto e = CheckActivation(x, "bn_relu"); e.failure()) return e;
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  Best().apply(IsBf16(x), x.untyped_data(), F32(scale), F32(shift), Rows(x), Channels(x), relu,
               y->untyped_data());
  return ffi::Error::Success();
}

// The backward reads dy and x only: the ReLU's mask is recomputed from x, scale and shift.
ffi::Error BnReluBackwardSumsImpl(ffi::AnyBuffer dy, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                                  ffi::AnyBuffer shift, ffi::Result<ffi::AnyBuffer> sum_dz,
                                  ffi::Result<ffi::AnyBuffer> sum_dz_x, bool relu) {
  if (auto e = CheckActivation(x, "bn_relu_backward"); e.failure()) return e;
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  Best().backward_sums(IsBf16(x), dy.untyped_data(), x.untyped_data(), F32(scale), F32(shift),
                       Rows(x), Channels(x), relu, F32(*sum_dz), F32(*sum_dz_x));
  return ffi::Error::Success();
}

ffi::Error BnReluBackwardImpl(ffi::AnyBuffer dy, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                              ffi::AnyBuffer shift, ffi::AnyBuffer b, ffi::AnyBuffer c,
                              ffi::Result<ffi::AnyBuffer> dx, bool relu) {
  if (auto e = CheckActivation(x, "bn_relu_backward"); e.failure()) return e;
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  Best().backward_apply(IsBf16(x), dy.untyped_data(), x.untyped_data(), F32(scale), F32(shift),
                        F32(b), F32(c), Rows(x), Channels(x), relu, dx->untyped_data());
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
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  auto d = x.dimensions();
  Best().max_pool(IsBf16(x), x.untyped_data(), d[0], d[1], d[2], d[3], y->untyped_data());
  return ffi::Error::Success();
}

ffi::Error MaxPoolBackwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                               ffi::Result<ffi::AnyBuffer> dx) {
  if (auto e = CheckPool(x); e.failure()) return e;
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  auto d = x.dimensions();
  Best().max_pool_backward(IsBf16(x), x.untyped_data(), dy.untyped_data(), d[0], d[1], d[2],
                           d[3], dx->untyped_data());
  return ffi::Error::Success();
}

// Squeeze-excitation on NHWC activations: per-sample, per-channel sums (of x for the squeeze,
// of dy * x for the gate's gradient) and the per-sample affine map (x * gate forward,
// dy * gate + dmean / hw backward), one pass each.
ffi::Error CheckSamples(const ffi::AnyBuffer& x, const char* op) {
  if (auto e = CheckActivation(x, op); e.failure()) return e;
  if (x.dimensions().size() != 4)
    return ffi::Error::InvalidArgument(std::string(op) + ": input must be NHWC");
  return ffi::Error::Success();
}

ffi::Error SampleSumsImpl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> sums,
                          bool product) {
  if (auto e = CheckSamples(a, "sample_sums"); e.failure()) return e;
  if (product && (b.element_type() != a.element_type() ||
                  b.element_count() != a.element_count()))
    return ffi::Error::InvalidArgument("sample_sums: operands differ in shape or dtype");
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  auto d = a.dimensions();
  Best().sample_sums(IsBf16(a), a.untyped_data(), b.untyped_data(), product, d[0], d[1] * d[2],
                     d[3], F32(*sums));
  return ffi::Error::Success();
}

ffi::Error SampleAffineImpl(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                            ffi::Result<ffi::AnyBuffer> y) {
  if (auto e = CheckSamples(x, "sample_affine"); e.failure()) return e;
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  auto d = x.dimensions();
  Best().sample_affine(IsBf16(x), x.untyped_data(), F32(scale), F32(shift), d[0], d[1] * d[2],
                       d[3], y->untyped_data());
  return ffi::Error::Success();
}

// Row r of `a` (a_bytes) then row r of `b` (b_bytes) -> row r of `out`, or back (split).
// Any dtype: rows are copied as bytes. XLA:CPU widens a bf16 concatenate to float32 and back.
void CopyRows(bool split, char* a, int64_t a_bytes, char* b, int64_t b_bytes, char* out,
              int64_t rows) {
  const int64_t out_bytes = a_bytes + b_bytes;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    char* row = out + r * out_bytes;
    if (split) {
      std::memcpy(a + r * a_bytes, row, a_bytes);
      std::memcpy(b + r * b_bytes, row + a_bytes, b_bytes);
    } else {
      std::memcpy(row, a + r * a_bytes, a_bytes);
      std::memcpy(row + a_bytes, b + r * b_bytes, b_bytes);
    }
  }
}

int64_t RowBytes(const ffi::AnyBuffer& x) {
  return Rows(x) ? static_cast<int64_t>(x.size_bytes()) / Rows(x) : 0;
}

ffi::Error ConcatChannelsImpl(ffi::AnyBuffer a, ffi::AnyBuffer b,
                              ffi::Result<ffi::AnyBuffer> out) {
  if (Rows(a) != Rows(b) || Rows(a) != Rows(*out) || a.element_type() != b.element_type())
    return ffi::Error::InvalidArgument("concat_channels: operands differ in rows or dtype");
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  CopyRows(false, static_cast<char*>(a.untyped_data()), RowBytes(a),
           static_cast<char*>(b.untyped_data()), RowBytes(b),
           static_cast<char*>(out->untyped_data()), Rows(a));
  return ffi::Error::Success();
}

ffi::Error SplitChannelsImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> a,
                             ffi::Result<ffi::AnyBuffer> b) {
  if (Rows(*a) != Rows(x) || Rows(*b) != Rows(x))
    return ffi::Error::InvalidArgument("split_channels: results differ in rows");
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  CopyRows(true, static_cast<char*>(a->untyped_data()), RowBytes(*a),
           static_cast<char*>(b->untyped_data()), RowBytes(*b),
           static_cast<char*>(x.untyped_data()), Rows(x));
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
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("relu"));
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetConcatChannels, ConcatChannelsImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetSplitChannels, SplitChannelsImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetSampleSums, SampleSumsImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<bool>("product"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetSampleAffine, SampleAffineImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

// 2-D convolutions for JAX on the CPU: XLA FFI handlers over oneDNN.
//
// Activations are NHWC and weights HWIO, exactly as Flax holds them; oneDNN picks its own
// weight layout (format_tag::any) and the weights are reordered inside the call. fp32 and
// bf16 (bf16 operands, f32 accumulation; the weight gradient is always returned in f32).
// With bf16 activations the weights may come in f32 (the parameters as the optimizer keeps
// them): the same reorder then also rounds them to bf16, so XLA runs no convert pass.
// Primitive descriptors, primitives and reorders are cached per shape/dtype/attributes.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

using unet::Engine;
using unet::Scratch;
using unet::Scratchpad;
using unet::Stream;
using unet::UserScratchpad;

// What a convolution is: enough to build every primitive for it.
struct ConvShape {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pl, pb, pr;
  bool bf16;
  bool f32_weights = false;  // Caller's weights are f32 while the activations are bf16.
  std::string Key(char kind) const {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%c%d%d|%ld,%ld,%ld,%ld|%ld,%ld,%ld|%ld,%ld|%ld,%ld|%ld,%ld,%ld,%ld",
                  kind, bf16, f32_weights, n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pl, pb, pr);
    return buf;
  }
  memory::data_type Dt() const { return bf16 ? memory::data_type::bf16 : memory::data_type::f32; }
  // The caller's HWIO weights, in their own dtype.
  memory::desc UserWeights() const {
    return Weights(f32_weights ? memory::data_type::f32 : Dt(), tag::hwio);
  }
  memory::desc Src() const { return memory::desc({n, c, h, w}, Dt(), tag::nhwc); }
  memory::desc Dst() const { return memory::desc({n, o, oh, ow}, Dt(), tag::nhwc); }
  memory::desc Weights(memory::data_type dt, tag t) const {
    return memory::desc({o, c, kh, kw}, dt, t);
  }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }
  unet::ConvDims Dims() const { return {n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pl, bf16}; }

  dnnl::convolution_forward::primitive_desc Forward() const {
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, Src(),
        Weights(Dt(), tag::any), Dst(), Strides(), PadL(), PadR(), UserScratchpad());
  }
};

// One cached primitive and the reorder between Flax's HWIO weights and its own layout, each
// with the scratchpad it needs from the caller.
struct Entry {
  dnnl::primitive prim;
  memory::desc weights_md;      // The primitive's weights (or weight-gradient) layout.
  memory::desc user_weights_md; // HWIO as Flax holds it.
  memory::desc scratchpad_md;
  bool reorder = false;
  dnnl::reorder reorder_prim;
  memory::desc reorder_scratchpad_md;

  void SetReorder(const memory::desc& from, const memory::desc& to) {
    dnnl::reorder::primitive_desc pd(Engine(), from, Engine(), to, UserScratchpad());
    reorder_prim = dnnl::reorder(pd);
    reorder_scratchpad_md = pd.scratchpad_desc();
  }
  void Reorder(memory& from, memory& to) const {
    reorder_prim.execute(Stream(), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                    {DNNL_ARG_SCRATCHPAD, Scratchpad(reorder_scratchpad_md)}});
  }
};

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Entry>> cache;

template <typename Build>
std::shared_ptr<Entry> Cached(const std::string& key, Build build) {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto entry = std::make_shared<Entry>(build());
  std::lock_guard<std::mutex> lock(cache_mutex);
  return cache.emplace(key, entry).first->second;
}

std::shared_ptr<Entry> ForwardEntry(const ConvShape& s) {
  return Cached(s.Key('f'), [&] {
    auto pd = s.Forward();
    Entry e{dnnl::convolution_forward(pd), pd.weights_desc(), s.UserWeights(),
            pd.scratchpad_desc()};
    e.reorder = e.weights_md != e.user_weights_md;
    if (e.reorder) e.SetReorder(e.user_weights_md, e.weights_md);
    return e;
  });
}

std::shared_ptr<Entry> BackwardDataEntry(const ConvShape& s) {
  return Cached(s.Key('d'), [&] {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, s.Src(), s.Weights(s.Dt(), tag::any),
        s.Dst(), s.Strides(), s.PadL(), s.PadR(), s.Forward(), UserScratchpad());
    Entry e{dnnl::convolution_backward_data(pd), pd.weights_desc(), s.UserWeights(),
            pd.scratchpad_desc()};
    e.reorder = e.weights_md != e.user_weights_md;
    if (e.reorder) e.SetReorder(e.user_weights_md, e.weights_md);
    return e;
  });
}

std::shared_ptr<Entry> BackwardWeightsEntry(const ConvShape& s) {
  return Cached(s.Key('w'), [&] {
    auto f32 = memory::data_type::f32;
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, s.Src(), s.Weights(f32, tag::any),
        s.Dst(), s.Strides(), s.PadL(), s.PadR(), s.Forward(), UserScratchpad());
    Entry e{dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(),
            s.Weights(f32, tag::hwio), pd.scratchpad_desc()};
    e.reorder = e.weights_md != e.user_weights_md;
    if (e.reorder) e.SetReorder(e.weights_md, e.user_weights_md);
    return e;
  });
}

}  // namespace

// One kernel at a time in this process (convolutions here, the passes of norm_pool.cc too):
// each is an OpenMP team sized for the whole machine. XLA runs independent thunks, and the
// programs of several devices in one process (--xla_force_host_platform_device_count), on
// concurrent threads; overlapping teams oversubscribe the cores, every static-schedule
// kernel then waits for its slowest thread, and a oneDNN kernel whose threads spin at a
// barrier can even starve a device that another waits for in a collective.
std::mutex& unet_kernel_mutex() {
  static std::mutex mutex;
  return mutex;
}

namespace {

// HWIO weights -> the primitive's layout (a scratch buffer), or the weights themselves.
memory PrimitiveWeights(const Entry& e, void* hwio) {
  memory user(e.user_weights_md, Engine(), hwio);
  if (!e.reorder) return user;
  memory mine(e.weights_md, Engine(), Scratch(e.weights_md.get_size(), 0));
  e.Reorder(user, mine);
  return mine;
}

void RunForward(const ConvShape& s, void* x, void* w, void* y) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  auto e = ForwardEntry(s);
  memory weights = PrimitiveWeights(*e, w);
  e->prim.execute(Stream(), {{DNNL_ARG_SRC, memory(s.Src(), Engine(), x)},
                             {DNNL_ARG_WEIGHTS, weights},
                             {DNNL_ARG_DST, memory(s.Dst(), Engine(), y)},
                             {DNNL_ARG_SCRATCHPAD, Scratchpad(e->scratchpad_md)}});
  Stream().wait();
}

void RunBackwardData(const ConvShape& s, void* dy, void* w, void* dx) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  auto e = BackwardDataEntry(s);
  memory weights = PrimitiveWeights(*e, w);
  e->prim.execute(Stream(), {{DNNL_ARG_DIFF_DST, memory(s.Dst(), Engine(), dy)},
                             {DNNL_ARG_WEIGHTS, weights},
                             {DNNL_ARG_DIFF_SRC, memory(s.Src(), Engine(), dx)},
                             {DNNL_ARG_SCRATCHPAD, Scratchpad(e->scratchpad_md)}});
  Stream().wait();
}

void RunBackwardWeights(const ConvShape& s, void* x, void* dy, void* dw) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  if (unet::UseMatmulFilterGrad(s.Dims())) {
    unet::MatmulFilterGrad(s.Dims(), s.Key('m'), x, dy, static_cast<float*>(dw));
    return;
  }
  auto e = BackwardWeightsEntry(s);
  memory user(e->user_weights_md, Engine(), dw);
  memory grad = e->reorder
      ? memory(e->weights_md, Engine(), Scratch(e->weights_md.get_size(), 1)) : user;
  e->prim.execute(Stream(), {{DNNL_ARG_SRC, memory(s.Src(), Engine(), x)},
                             {DNNL_ARG_DIFF_DST, memory(s.Dst(), Engine(), dy)},
                             {DNNL_ARG_DIFF_WEIGHTS, grad},
                             {DNNL_ARG_SCRATCHPAD, Scratchpad(e->scratchpad_md)}});
  if (e->reorder) e->Reorder(grad, user);
  Stream().wait();
}

using Dims = ffi::AnyBuffer::Dimensions;

// The shape from the buffers: activation x (N, H, W, C), kernel (KH, KW, C, O) and output
// (N, OH, OW, O); padding is (top, bottom, left, right).
ffi::Error MakeShape(const ffi::AnyBuffer& x, Dims kernel, Dims out,
                     ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                     ConvShape* s) {
  if (strides.size() != 2 || padding.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: strides needs 2 and padding 4 values");
  Dims a = x.dimensions();
  if (a.size() != 4 || kernel.size() != 4 || out.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: operands must have rank 4");
  auto dt = x.element_type();
  if (dt != ffi::DataType::F32 && dt != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("onednn conv: only float32 and bfloat16 are supported");
  *s = ConvShape{a[0], a[1], a[2], a[3], kernel[0], kernel[1], kernel[3], out[1], out[2],
                 strides[0], strides[1], padding[0], padding[2], padding[1], padding[3],
                 dt == ffi::DataType::BF16};
  return ffi::Error::Success();
}

// Weights in the activations' dtype, or f32 weights with bf16 activations.
ffi::Error SetWeightsDtype(const ffi::AnyBuffer& w, ConvShape* s) {
  auto dt = w.element_type();
  s->f32_weights = s->bf16 && dt == ffi::DataType::F32;
  if (!s->f32_weights && dt != (s->bf16 ? ffi::DataType::BF16 : ffi::DataType::F32))
    return ffi::Error::InvalidArgument(
        "onednn conv: weights must be float32 or the activations' dtype");
  return ffi::Error::Success();
}

template <typename Fn>
ffi::Error Guarded(Fn fn) {
  try {
    fn();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  ConvShape s;
  if (auto err = MakeShape(x, w.dimensions(), y->dimensions(), strides, padding, &s);
      err.failure()) return err;
  if (auto err = SetWeightsDtype(w, &s); err.failure()) return err;
  return Guarded([&] { RunForward(s, x.untyped_data(), w.untyped_data(), y->untyped_data()); });
}

ffi::Error ConvBackwardDataImpl(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                                ffi::Result<ffi::AnyBuffer> dx,
                                ffi::Span<const int64_t> strides,
                                ffi::Span<const int64_t> padding) {
  ConvShape s;
  if (auto err = MakeShape(*dx, w.dimensions(), dy.dimensions(), strides, padding, &s);
      err.failure()) return err;
  if (auto err = SetWeightsDtype(w, &s); err.failure()) return err;
  return Guarded([&] {
    RunBackwardData(s, dy.untyped_data(), w.untyped_data(), dx->untyped_data());
  });
}

ffi::Error ConvBackwardWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                                   ffi::Result<ffi::AnyBuffer> dw,
                                   ffi::Span<const int64_t> strides,
                                   ffi::Span<const int64_t> padding) {
  ConvShape s;
  if (auto err = MakeShape(x, dw->dimensions(), dy.dimensions(), strides, padding, &s);
      err.failure()) return err;
  if (dw->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("onednn conv: the weight gradient must be float32");
  return Guarded([&] {
    RunBackwardWeights(s, x.untyped_data(), dy.untyped_data(), dw->untyped_data());
  });
}

// Every convolution handler: two operands, one result, strides (2) and padding (4).
auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<ffi::Span<const int64_t>>("strides")
      .Attr<ffi::Span<const int64_t>>("padding");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetConvForward, ConvForwardImpl,
                              ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetConvBackwardData, ConvBackwardDataImpl,
                              ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetConvBackwardWeights, ConvBackwardWeightsImpl,
                              ConvBinding());

// The operand/attribute layout of every handler in this library; library.py refuses a
// build whose number differs from its ABI_VERSION (a stale in-place build after a failed
// rebuild would otherwise fail at run time), and keys conv_algo=auto's timings by it (a
// faster kernel re-times its layers). Bump both together.
extern "C" __attribute__((visibility("default"))) int unet_kernels_abi_version() { return 12; }

// 1 when oneDNN has a bfloat16 convolution for this CPU, else 0. oneDNN 3.2 computes bf16 on
// AVX-512 (natively with AVX512-BF16 or AMX, emulated on plain AVX-512) and has none on an
// AVX2-only CPU; library.py then gives bf16 models XLA's convolutions instead of failing.
extern "C" __attribute__((visibility("default"))) int unet_onednn_bf16_conv_supported() {
  ConvShape s{1, 8, 8, 16, 3, 3, 16, 8, 8, 1, 1, 1, 1, 1, 1, true};
  try {
    s.Forward();
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

// oneDNN called directly, for the benchmark's ceiling: runs `which` (0 forward, 1 backward
// data, 2 backward weights) `repeats` times on the caller's buffers and returns the best
// seconds of one call. dims = n h w c kh kw o oh ow sh sw pt pb pl pr.
extern "C" __attribute__((visibility("default"))) double unet_onednn_conv_best_seconds(const int64_t* dims, int bf16, int which,
                                                int repeats, void* a, void* b, void* out) {
  ConvShape s{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7],
              dims[8], dims[9], dims[10], dims[11], dims[13], dims[12], dims[14], bf16 != 0};
  double best = 1e30;
  try {
    for (int i = 0; i < repeats; ++i) {
      auto start = std::chrono::steady_clock::now();
      if (which == 0) RunForward(s, a, b, out);
      else if (which == 1) RunBackwardData(s, a, b, out);
      else RunBackwardWeights(s, a, b, out);
      double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (t < best) best = t;
    }
  } catch (const dnnl::error&) {
    return -1.0;
  }
  return best;
}

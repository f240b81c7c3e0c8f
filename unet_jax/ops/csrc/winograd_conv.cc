// Winograd F(2x2,3x3) convolution for JAX on the CPU: XLA FFI handlers over oneDNN's matmul.
//
// A 3x3 stride-1 convolution computed on 4x4 input tiles that give 2x2 output tiles: 16
// multiplications per tile and channel pair instead of 36 (2.25x fewer). bf16 or float32
// activations, NHWC; the kernel (HWIO) is transformed once into U = G g G^T, [16][C][O] in
// the activations' type (UnetWinogradKernel), and that one U serves the forward pass and the
// input gradient. U is held as two buffers of 8 transformed taps each: XLA allocates its
// buffers with malloc, and glibc serves a block over 32 MiB (a bf16 U of a 1024 -> 1024 layer
// is exactly that) by a fresh mmap that page-faults through all of it on every step. (A
// float32 U's halves are 32 MiB there; host_malloc=reuse keeps them on the heap.)
// Per chunk of tiles: the input transform V = B^T d B (float32, rounded to bf16 for bf16),
// the 16 transformed-domain products M[k] = V[k] U[k] as one batched oneDNN matmul (float32
// accumulation; AMX where the CPU has it) and the output transform Y = A^T M A. bf16 is for
// CPUs that compute it natively; float32 for the rest (AVX2), where direct float32
// convolutions run at a third of the bf16 rate and the saved multiplications weigh more.
//
// The input gradient is the same convolution of dy with the kernel rotated by 180 degrees and
// its channels swapped. Rotating g permutes U's 4x4 index (rows and columns 0 and 3 trade
// places, because G with its columns reversed is G with rows 0 and 3 swapped), so `transpose`
// reads U[k] as U[k]^T and stores the transformed input, and reads the products, at the
// permuted index: no second kernel transform. Padding: the forward's (top, left); the input
// gradient of a forward with padding p is the transposed convolution with padding 2 - p.
//
// The weight gradient: with V the input's transform and dM = A dy A^T the output gradient's
// (the transpose of the output transform), dU[k] = sum over tiles V[k]^T dM[k] (16 matmuls,
// float32 accumulation over chunks of tiles) and dg = G^T dU G per channel pair
// (winograd_filter_grad.cc).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_common.h"
#include "winograd_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using dt = dnnl::memory::data_type;

std::mutex& unet_kernel_mutex();  // onednn_conv.cc: one native kernel at a time.

namespace unet_winograd {

UNET_VECTOR_CLONES void InputTile(const Problem& p, const uint16_t* x, const uint16_t* zeros,
                                  uint16_t* v, int64_t plane, int64_t t, int64_t r) {
  InputTileBody(p, x, zeros, v, plane, t, r);
}

UNET_VECTOR_CLONES void InputTile(const Problem& p, const float* x, const float* zeros, float* v,
                                  int64_t plane, int64_t t, int64_t r) {
  InputTileBody(p, x, zeros, v, plane, t, r);
}

}  // namespace unet_winograd

namespace {

using namespace unet_winograd;  // NOLINT
using unet::Engine;
using unet::Scratch;
using unet::Stream;

template <typename E>
memory::desc UDesc(const Problem& p) {
  // Half of U, [8][C][O] with C, O the forward's; the transposed product reads [8][O][C].
  return p.transpose ? memory::desc({8, p.ci, p.co}, DnnlType<E>(), {p.ci * p.co, 1, p.ci})
                     : memory::desc({8, p.ci, p.co}, DnnlType<E>(), {p.ci * p.co, p.co, 1});
}

template <typename E>
memory::desc VDesc(const Problem& p, int64_t rows) {  // Half of the transformed input.
  return memory::desc({8, rows, p.ci}, DnnlType<E>(),
                      {PlaneStride(rows, p.ci, sizeof(E)), p.ci, 1});
}

memory::desc MDesc(const Problem& p, int64_t rows) {  // Half of the products.
  return memory::desc({8, rows, p.co}, dt::f32, {PlaneStride(rows, p.co, 4), p.co, 1});
}

// The batched matmul over 8 transformed taps (run once per half of U).
template <typename E>
std::shared_ptr<CachedMatmul> Matmul(const Problem& p, int64_t rows) {
  std::string key = std::string(TypeName<E>()) + "," + std::to_string(rows) + "," +
                    std::to_string(p.ci) + "," + std::to_string(p.co) + "," +
                    std::to_string(p.transpose);
  return CachedMatmulFor(key, [&] {
    return dnnl::matmul::primitive_desc(Engine(), VDesc<E>(p, rows), UDesc<E>(p),
                                        MDesc(p, rows), unet::UserScratchpad());
  });
}

// Y = A^T M A for tile t, from row r of the chunk's products [16][rows][co], NHWC.
template <typename E>
inline void OutputTileBody(const Problem& p, const float* m, E* y, int64_t plane, int64_t t,
                           int64_t r) {
  const int64_t O = p.co;
  const auto corner = p.OutputCorner(t);
  const bool y1 = corner.row1, x1 = corner.col1;
  E* q00 = y + corner.offset;
  E* q01 = q00 + O;
  E* q10 = q00 + p.ow * O;
  E* q11 = q10 + O;
  const float* src[16];
  for (int k = 0; k < 16; ++k) src[k] = m + Slot(k, p.transpose) * plane + r * O;
#pragma omp simd
  for (int64_t o = 0; o < O; ++o) {
    float a[4][4], e[2][4];
    for (int k = 0; k < 16; ++k) a[k / 4][k % 4] = src[k][o];
    for (int j = 0; j < 4; ++j) {  // A^T M.
      e[0][j] = a[0][j] + a[1][j] + a[2][j];
      e[1][j] = a[1][j] - a[2][j] - a[3][j];
    }
    q00[o] = FromF32<E>(e[0][0] + e[0][1] + e[0][2]);
    if (x1) q01[o] = FromF32<E>(e[0][1] - e[0][2] - e[0][3]);
    if (y1) q10[o] = FromF32<E>(e[1][0] + e[1][1] + e[1][2]);
    if (y1 && x1) q11[o] = FromF32<E>(e[1][1] - e[1][2] - e[1][3]);
  }
}

UNET_VECTOR_CLONES void OutputTile(const Problem& p, const float* m, uint16_t* y, int64_t plane,
                                   int64_t t, int64_t r) {
  OutputTileBody(p, m, y, plane, t, r);
}

UNET_VECTOR_CLONES void OutputTile(const Problem& p, const float* m, float* y, int64_t plane,
                                   int64_t t, int64_t r) {
  OutputTileBody(p, m, y, plane, t, r);
}

template <typename E>
void RunConv(const Problem& p, const E* x, const E* const u[2], E* y) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  const int64_t tiles = p.Tiles();
  const int64_t chunk = p.Chunk(16 * (sizeof(E) * p.ci + 4 * p.co),  // V, M float32.
                                16 * sizeof(E) * p.ci * p.co);
  auto* v = static_cast<E*>(Scratch(16 * PlaneStride(chunk, p.ci, sizeof(E)) * sizeof(E), 0));
  auto* m = static_cast<float*>(Scratch(16 * PlaneStride(chunk, p.co, 4) * 4, 1));
  std::unique_ptr<E[]> zeros(new E[p.ci]());
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t rows = std::min(chunk, tiles - t0);
    const int64_t v_plane = PlaneStride(rows, p.ci, sizeof(E));
    const int64_t m_plane = PlaneStride(rows, p.co, 4);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) InputTile(p, x, zeros.get(), v, v_plane, t0 + r, r);
    auto matmul = Matmul<E>(p, rows);
    for (int half = 0; half < 2; ++half)
      matmul->prim.execute(Stream(), {
          {DNNL_ARG_SRC, memory(VDesc<E>(p, rows), Engine(), v + half * 8 * v_plane)},
          {DNNL_ARG_WEIGHTS, memory(UDesc<E>(p), Engine(), const_cast<E*>(u[half]))},
          {DNNL_ARG_DST, memory(MDesc(p, rows), Engine(), m + half * 8 * m_plane)},
          {DNNL_ARG_SCRATCHPAD, unet::Scratchpad(matmul->scratchpad_md)}});
    Stream().wait();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) OutputTile(p, m, y, m_plane, t0 + r, r);
  }
}

// U[k][c][o] = (G g[:, :, c, o] G^T)[k], in U's type, for one input channel c of HWIO g.
template <typename T, typename E>
inline void TransformKernelRow(const T* g, int64_t c, int64_t o_count, int64_t plane, E* lo,
                               E* hi) {
#pragma omp simd
  for (int64_t o = 0; o < o_count; ++o) {
    float w[3][3], gw[4][3];
    for (int i = 0; i < 9; ++i) w[i / 3][i % 3] = ToF32(g[i * plane + c * o_count + o]);
    for (int j = 0; j < 3; ++j) {  // G g.
      gw[0][j] = w[0][j];
      gw[1][j] = 0.5f * (w[0][j] + w[1][j] + w[2][j]);
      gw[2][j] = 0.5f * (w[0][j] - w[1][j] + w[2][j]);
      gw[3][j] = w[2][j];
    }
    for (int i = 0; i < 4; ++i) {  // (G g) G^T; rows 0-1 to the first half, 2-3 the second.
      E* out = (i < 2 ? lo : hi) + ((i % 2) * 4) * plane + c * o_count + o;
      out[0] = FromF32<E>(gw[i][0]);
      out[plane] = FromF32<E>(0.5f * (gw[i][0] + gw[i][1] + gw[i][2]));
      out[2 * plane] = FromF32<E>(0.5f * (gw[i][0] - gw[i][1] + gw[i][2]));
      out[3 * plane] = FromF32<E>(gw[i][2]);
    }
  }
}

UNET_VECTOR_CLONES void TransformRow(const float* g, int64_t c, int64_t o, int64_t plane,
                                     uint16_t* lo, uint16_t* hi) {
  TransformKernelRow(g, c, o, plane, lo, hi);
}

UNET_VECTOR_CLONES void TransformRow(const uint16_t* g, int64_t c, int64_t o, int64_t plane,
                                     uint16_t* lo, uint16_t* hi) {
  TransformKernelRow(g, c, o, plane, lo, hi);
}

UNET_VECTOR_CLONES void TransformRow(const float* g, int64_t c, int64_t o, int64_t plane,
                                     float* lo, float* hi) {
  TransformKernelRow(g, c, o, plane, lo, hi);
}

// The transform of HWIO g (float32, or bf16 for a bf16 U) into U's two halves (taps 0-7 and
// 8-15), each [8][C][O].
template <typename T, typename E>
void RunKernelTransform(const T* g, int64_t c_count, int64_t o_count, E* const u[2]) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  const int64_t plane = c_count * o_count;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < c_count; ++c) TransformRow(g, c, o_count, plane, u[0], u[1]);
}

bool IsHalfOfU(const ffi::AnyBuffer& u, int64_t c, int64_t o, ffi::DataType type) {
  auto d = u.dimensions();
  return d.size() == 3 && d[0] == 8 && d[1] == c && d[2] == o && u.element_type() == type;
}

ffi::Error KernelImpl(ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> lo,
                      ffi::Result<ffi::AnyBuffer> hi) {
  auto d = g.dimensions();
  const auto g_type = g.element_type(), u_type = lo->element_type();
  const bool f32_u = u_type == ffi::DataType::F32;
  if (d.size() != 4 || d[0] != 3 || d[1] != 3 || !IsHalfOfU(*lo, d[2], d[3], u_type) ||
      !IsHalfOfU(*hi, d[2], d[3], u_type) ||
      !(g_type == ffi::DataType::F32 || (g_type == ffi::DataType::BF16 && !f32_u)) ||
      !(f32_u || u_type == ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("winograd kernel: needs a (3, 3, C, O) float32 or "
                                       "bfloat16 kernel and two (8, C, O) bfloat16 results, "
                                       "or a float32 kernel and float32 results");
  if (f32_u) {
    float* const u[2] = {static_cast<float*>(lo->untyped_data()),
                         static_cast<float*>(hi->untyped_data())};
    RunKernelTransform(static_cast<const float*>(g.untyped_data()), d[2], d[3], u);
    return ffi::Error::Success();
  }
  uint16_t* const u[2] = {static_cast<uint16_t*>(lo->untyped_data()),
                          static_cast<uint16_t*>(hi->untyped_data())};
  if (g_type == ffi::DataType::F32)
    RunKernelTransform(static_cast<const float*>(g.untyped_data()), d[2], d[3], u);
  else
    RunKernelTransform(static_cast<const uint16_t*>(g.untyped_data()), d[2], d[3], u);
  return ffi::Error::Success();
}

template <typename E>
void RunConvOn(const Problem& p, const ffi::AnyBuffer& x, const ffi::AnyBuffer& lo,
               const ffi::AnyBuffer& hi, ffi::Result<ffi::AnyBuffer>& y) {
  const E* const u[2] = {static_cast<const E*>(lo.untyped_data()),
                         static_cast<const E*>(hi.untyped_data())};
  RunConv(p, static_cast<const E*>(x.untyped_data()), u, static_cast<E*>(y->untyped_data()));
}

ffi::Error ConvImpl(ffi::AnyBuffer x, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                    ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> padding,
                    int64_t transpose) {
  auto a = x.dimensions(), k = lo.dimensions(), b = y->dimensions();
  if (padding.size() != 2 || a.size() != 4 || k.size() != 3 || b.size() != 4)
    return ffi::Error::InvalidArgument("winograd conv: x (N, H, W, C), U as two (8, C, O), "
                                       "y (N, OH, OW, O) and padding (top, left)");
  const auto type = x.element_type();
  if ((type != ffi::DataType::BF16 && type != ffi::DataType::F32) ||
      y->element_type() != type || !IsHalfOfU(lo, k[1], k[2], type) ||
      !IsHalfOfU(hi, k[1], k[2], type))
    return ffi::Error::InvalidArgument("winograd conv: bfloat16 or float32 operands, all of "
                                       "one type, U as two (8, C, O) halves");
  Problem p{a[0], a[1], a[2], a[3], b[1], b[2], b[3], padding[0], padding[1], transpose != 0};
  if (p.ci != (p.transpose ? k[2] : k[1]) || p.co != (p.transpose ? k[1] : k[2]) ||
      b[0] != a[0])
    return ffi::Error::InvalidArgument("winograd conv: channel counts do not match U");
  try {
    if (type == ffi::DataType::F32) RunConvOn<float>(p, x, lo, hi, y);
    else RunConvOn<uint16_t>(p, x, lo, hi, y);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

template <typename E>
double ConvBestSeconds(const int64_t* dims, int repeats, const float* g, E* x, E* u, E* y,
                       E* dx) {
  int64_t n = dims[0], h = dims[1], w = dims[2], c = dims[3], o = dims[4];
  int64_t pt = dims[5], pb = dims[6], pl = dims[7], pr = dims[8];
  int64_t oh = h + pt + pb - 2, ow = w + pl + pr - 2;
  Problem forward{n, h, w, c, oh, ow, o, pt, pl, false};
  Problem backward{n, oh, ow, o, h, w, c, 2 - pt, 2 - pl, true};
  E* const halves[2] = {u, u + 8 * c * o};
  const E* const readonly[2] = {halves[0], halves[1]};
  return BestSeconds(repeats, [&] {
    RunKernelTransform(g, c, o, halves);
    RunConv(forward, x, readonly, y);
    RunConv(backward, y, readonly, dx);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetWinogradKernel, KernelImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetWinogradConv, ConvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<int64_t>("transpose"));

// For the per-layer autotune (unet_jax/ops/winograd.py): the best seconds over `repeats` of
// one training step's Winograd work for a layer, the kernel transform plus the forward and
// the input gradient, on the caller's buffers, bf16 (f32 = 0) or float32. dims = n h w c o pt
// pb pl pr; x (n, h, w, c), dy and y (n, oh, ow, o), dx like x, g (3, 3, c, o) float32, u
// (16, c, o).
extern "C" __attribute__((visibility("default"))) double unet_winograd_best_seconds(
    const int64_t* dims, int f32, int repeats, void* x, void* g, void* u, void* y, void* dx) {
  if (f32)
    return ConvBestSeconds(dims, repeats, static_cast<const float*>(g), static_cast<float*>(x),
                           static_cast<float*>(u), static_cast<float*>(y),
                           static_cast<float*>(dx));
  return ConvBestSeconds(dims, repeats, static_cast<const float*>(g), static_cast<uint16_t*>(x),
                         static_cast<uint16_t*>(u), static_cast<uint16_t*>(y),
                         static_cast<uint16_t*>(dx));
}

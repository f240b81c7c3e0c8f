// Winograd F(2x2,3x3) convolution for JAX on the CPU: XLA FFI handlers over oneDNN's matmul.
//
// A 3x3 stride-1 convolution computed on 4x4 input tiles that give 2x2 output tiles: 16
// multiplications per tile and channel pair instead of 36 (2.25x fewer). bf16 activations,
// NHWC; the kernel (HWIO) is transformed once into U = G g G^T, [16][C][O] bf16
// (UnetWinogradKernel), and that one U serves the forward pass and the input gradient. U is
// held as two buffers of 8 transformed taps each: XLA allocates its buffers with malloc, and
// glibc serves a block over 32 MiB (U of a 1024 -> 1024 layer is exactly that) by a fresh
// mmap that page-faults through all of it on every step.
// Per chunk of tiles: the input transform V = B^T d B (float32, rounded to bf16), the 16
// transformed-domain products M[k] = V[k] U[k] as one batched oneDNN bf16 matmul (float32
// accumulation; AMX where the CPU has it) and the output transform Y = A^T M A.
//
// The input gradient is the same convolution of dy with the kernel rotated by 180 degrees and
// its channels swapped. Rotating g permutes U's 4x4 index (rows and columns 0 and 3 trade
// places, because G with its columns reversed is G with rows 0 and 3 swapped), so `transpose`
// reads U[k] as U[k]^T and stores the transformed input, and reads the products, at the
// permuted index: no second kernel transform. Padding: the forward's (top, left); the input
// gradient of a forward with padding p is the transposed convolution with padding 2 - p.
//
// The weight gradient: with V the input's transform and dM = A dy A^T the output gradient's
// (the transpose of the output transform), dU[k] = sum over tiles V[k]^T dM[k] (16 bf16
// matmuls, float32 accumulation over chunks of tiles) and dg = G^T dU G per channel pair
// (winograd_filter_grad.cc).

#include <algorithm>
#include <chrono>
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

std::shared_ptr<CachedMatmul> CachedMatmulFor(
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

UNET_VECTOR_CLONES void InputTile(const Problem& p, const uint16_t* x, const uint16_t* zeros,
                                  uint16_t* v, int64_t rows, int64_t t, int64_t r) {
  const int64_t C = p.ci, th = p.TilesH(), tw = p.TilesW();
  int64_t b = t / (th * tw), ti = t / tw % th, tj = t % tw;
  const uint16_t* src[16];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      int64_t yy = 2 * ti - p.pt + i, xx = 2 * tj - p.pl + j;
      src[i * 4 + j] = (yy < 0 || yy >= p.h || xx < 0 || xx >= p.w)
                           ? zeros : x + ((b * p.h + yy) * p.w + xx) * C;
    }
  uint16_t* dst[16];
  for (int k = 0; k < 16; ++k) dst[k] = v + (Slot(k, p.transpose) * rows + r) * C;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    float d[4][4], e[4][4];
    for (int k = 0; k < 16; ++k) d[k / 4][k % 4] = Bf16ToF32(src[k][c]);
    for (int j = 0; j < 4; ++j) {  // B^T d.
      e[0][j] = d[0][j] - d[2][j];
      e[1][j] = d[1][j] + d[2][j];
      e[2][j] = d[2][j] - d[1][j];
      e[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; ++i) {  // (B^T d) B.
      dst[i * 4 + 0][c] = F32ToBf16(e[i][0] - e[i][2]);
      dst[i * 4 + 1][c] = F32ToBf16(e[i][1] + e[i][2]);
      dst[i * 4 + 2][c] = F32ToBf16(e[i][2] - e[i][1]);
      dst[i * 4 + 3][c] = F32ToBf16(e[i][1] - e[i][3]);
    }
  }
}

}  // namespace unet_winograd

namespace {

using namespace unet_winograd;  // NOLINT
using unet::Engine;
using unet::Scratch;
using unet::Stream;

memory::desc UDesc(const Problem& p) {
  // Half of U, [8][C][O] with C, O the forward's; the transposed product reads [8][O][C].
  return p.transpose ? memory::desc({8, p.ci, p.co}, dt::bf16, {p.ci * p.co, 1, p.ci})
                     : memory::desc({8, p.ci, p.co}, dt::bf16, {p.ci * p.co, p.co, 1});
}

memory::desc VDesc(const Problem& p, int64_t rows) {  // Half of the transformed input.
  return memory::desc({8, rows, p.ci}, dt::bf16, {rows * p.ci, p.ci, 1});
}

memory::desc MDesc(const Problem& p, int64_t rows) {  // Half of the products.
  return memory::desc({8, rows, p.co}, dt::f32, {rows * p.co, p.co, 1});
}

// The batched matmul over 8 transformed taps (run once per half of U).
std::shared_ptr<CachedMatmul> Matmul(const Problem& p, int64_t rows) {
  std::string key = std::to_string(rows) + "," + std::to_string(p.ci) + "," +
                    std::to_string(p.co) + "," + std::to_string(p.transpose);
  return CachedMatmulFor(key, [&] {
    return dnnl::matmul::primitive_desc(Engine(), VDesc(p, rows), UDesc(p), MDesc(p, rows),
                                        unet::UserScratchpad());
  });
}

// Y = A^T M A for tile t, from row r of the chunk's products [16][rows][co], as bf16 NHWC.
UNET_VECTOR_CLONES void OutputTile(const Problem& p, const float* m, uint16_t* y, int64_t rows,
                                   int64_t t, int64_t r) {
  const int64_t O = p.co;
  const auto corner = p.OutputCorner(t);
  const bool y1 = corner.row1, x1 = corner.col1;
  uint16_t* q00 = y + corner.offset;
  uint16_t* q01 = q00 + O;
  uint16_t* q10 = q00 + p.ow * O;
  uint16_t* q11 = q10 + O;
  const float* src[16];
  for (int k = 0; k < 16; ++k) src[k] = m + (Slot(k, p.transpose) * rows + r) * O;
#pragma omp simd
  for (int64_t o = 0; o < O; ++o) {
    float a[4][4], e[2][4];
    for (int k = 0; k < 16; ++k) a[k / 4][k % 4] = src[k][o];
    for (int j = 0; j < 4; ++j) {  // A^T M.
      e[0][j] = a[0][j] + a[1][j] + a[2][j];
      e[1][j] = a[1][j] - a[2][j] - a[3][j];
    }
    q00[o] = F32ToBf16(e[0][0] + e[0][1] + e[0][2]);
    if (x1) q01[o] = F32ToBf16(e[0][1] - e[0][2] - e[0][3]);
    if (y1) q10[o] = F32ToBf16(e[1][0] + e[1][1] + e[1][2]);
    if (y1 && x1) q11[o] = F32ToBf16(e[1][1] - e[1][2] - e[1][3]);
  }
}

void RunConv(const Problem& p, const uint16_t* x, const uint16_t* const u[2], uint16_t* y) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  const int64_t tiles = p.Tiles();
  const int64_t chunk = p.Chunk(16 * (2 * p.ci + 4 * p.co));  // V bf16, M float32.
  auto* v = static_cast<uint16_t*>(Scratch(16 * chunk * p.ci * 2 + 64, 0));
  auto* m = static_cast<float*>(Scratch(16 * chunk * p.co * 4, 1));
  std::unique_ptr<uint16_t[]> zeros(new uint16_t[p.ci]());
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t rows = std::min(chunk, tiles - t0);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) InputTile(p, x, zeros.get(), v, rows, t0 + r, r);
    auto matmul = Matmul(p, rows);
    for (int half = 0; half < 2; ++half)
      matmul->prim.execute(Stream(), {
          {DNNL_ARG_SRC, memory(VDesc(p, rows), Engine(), v + half * 8 * rows * p.ci)},
          {DNNL_ARG_WEIGHTS, memory(UDesc(p), Engine(), const_cast<uint16_t*>(u[half]))},
          {DNNL_ARG_DST, memory(MDesc(p, rows), Engine(), m + half * 8 * rows * p.co)},
          {DNNL_ARG_SCRATCHPAD, unet::Scratchpad(matmul->scratchpad_md)}});
    Stream().wait();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) OutputTile(p, m, y, rows, t0 + r, r);
  }
}

// U[k][c][o] = (G g[:, :, c, o] G^T)[k], bf16, for one input channel c of HWIO g.
template <typename T>
inline void TransformKernelRow(const T* g, int64_t c, int64_t o_count, int64_t plane,
                               uint16_t* lo, uint16_t* hi) {
#pragma omp simd
  for (int64_t o = 0; o < o_count; ++o) {
    float w[3][3], gw[4][3];
    for (int i = 0; i < 9; ++i) {
      T value = g[i * plane + c * o_count + o];
      if constexpr (sizeof(T) == 2) w[i / 3][i % 3] = Bf16ToF32(value);
      else w[i / 3][i % 3] = value;
    }
    for (int j = 0; j < 3; ++j) {  // G g.
      gw[0][j] = w[0][j];
      gw[1][j] = 0.5f * (w[0][j] + w[1][j] + w[2][j]);
      gw[2][j] = 0.5f * (w[0][j] - w[1][j] + w[2][j]);
      gw[3][j] = w[2][j];
    }
    for (int i = 0; i < 4; ++i) {  // (G g) G^T; rows 0-1 to the first half, 2-3 the second.
      uint16_t* out = (i < 2 ? lo : hi) + ((i % 2) * 4) * plane + c * o_count + o;
      out[0] = F32ToBf16(gw[i][0]);
      out[plane] = F32ToBf16(0.5f * (gw[i][0] + gw[i][1] + gw[i][2]));
      out[2 * plane] = F32ToBf16(0.5f * (gw[i][0] - gw[i][1] + gw[i][2]));
      out[3 * plane] = F32ToBf16(gw[i][2]);
    }
  }
}

UNET_VECTOR_CLONES void TransformRowF32(const float* g, int64_t c, int64_t o, int64_t plane,
                                        uint16_t* lo, uint16_t* hi) {
  TransformKernelRow(g, c, o, plane, lo, hi);
}

UNET_VECTOR_CLONES void TransformRowBf16(const uint16_t* g, int64_t c, int64_t o,
                                         int64_t plane, uint16_t* lo, uint16_t* hi) {
  TransformKernelRow(g, c, o, plane, lo, hi);
}

// The transform into U's two halves (taps 0-7 and 8-15), each [8][C][O].
void RunKernelTransform(const void* g, bool f32, int64_t c_count, int64_t o_count,
                        uint16_t* const u[2]) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  const int64_t plane = c_count * o_count;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < c_count; ++c) {
    if (f32) TransformRowF32(static_cast<const float*>(g), c, o_count, plane, u[0], u[1]);
    else TransformRowBf16(static_cast<const uint16_t*>(g), c, o_count, plane, u[0], u[1]);
  }
}

bool IsHalfOfU(const ffi::AnyBuffer& u, int64_t c, int64_t o) {
  auto d = u.dimensions();
  return d.size() == 3 && d[0] == 8 && d[1] == c && d[2] == o &&
         u.element_type() == ffi::DataType::BF16;
}

ffi::Error KernelImpl(ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> lo,
                      ffi::Result<ffi::AnyBuffer> hi) {
  auto d = g.dimensions();
  bool f32 = g.element_type() == ffi::DataType::F32;
  if (d.size() != 4 || d[0] != 3 || d[1] != 3 || !IsHalfOfU(*lo, d[2], d[3]) ||
      !IsHalfOfU(*hi, d[2], d[3]) || (!f32 && g.element_type() != ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("winograd kernel: needs a (3, 3, C, O) float32 or "
                                       "bfloat16 kernel and two (8, C, O) bfloat16 results");
  uint16_t* const u[2] = {static_cast<uint16_t*>(lo->untyped_data()),
                          static_cast<uint16_t*>(hi->untyped_data())};
  RunKernelTransform(g.untyped_data(), f32, d[2], d[3], u);
  return ffi::Error::Success();
}

ffi::Error ConvImpl(ffi::AnyBuffer x, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                    ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> padding,
                    int64_t transpose) {
  auto a = x.dimensions(), k = lo.dimensions(), b = y->dimensions();
  if (padding.size() != 2 || a.size() != 4 || k.size() != 3 || b.size() != 4)
    return ffi::Error::InvalidArgument("winograd conv: x (N, H, W, C), U as two (8, C, O), "
                                       "y (N, OH, OW, O) and padding (top, left)");
  if (x.element_type() != ffi::DataType::BF16 || y->element_type() != ffi::DataType::BF16 ||
      !IsHalfOfU(lo, k[1], k[2]) || !IsHalfOfU(hi, k[1], k[2]))
    return ffi::Error::InvalidArgument("winograd conv: bfloat16 operands only, U as two "
                                       "(8, C, O) halves");
  Problem p{a[0], a[1], a[2], a[3], b[1], b[2], b[3], padding[0], padding[1], transpose != 0};
  if (p.ci != (p.transpose ? k[2] : k[1]) || p.co != (p.transpose ? k[1] : k[2]) ||
      b[0] != a[0])
    return ffi::Error::InvalidArgument("winograd conv: channel counts do not match U");
  const uint16_t* const u[2] = {static_cast<const uint16_t*>(lo.untyped_data()),
                                static_cast<const uint16_t*>(hi.untyped_data())};
  try {
    RunConv(p, static_cast<const uint16_t*>(x.untyped_data()), u,
            static_cast<uint16_t*>(y->untyped_data()));
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
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
// the input gradient, on the caller's bf16 buffers. dims = n h w c o pt pb pl pr;
// x (n, h, w, c), dy and y (n, oh, ow, o), dx like x, g (3, 3, c, o) float32, u (16, c, o).
extern "C" __attribute__((visibility("default"))) double unet_winograd_best_seconds(
    const int64_t* dims, int repeats, void* x, void* g, void* u, void* y, void* dx) {
  int64_t n = dims[0], h = dims[1], w = dims[2], c = dims[3], o = dims[4];
  int64_t pt = dims[5], pb = dims[6], pl = dims[7], pr = dims[8];
  int64_t oh = h + pt + pb - 2, ow = w + pl + pr - 2;
  Problem forward{n, h, w, c, oh, ow, o, pt, pl, false};
  Problem backward{n, oh, ow, o, h, w, c, 2 - pt, 2 - pl, true};
  uint16_t* const halves[2] = {static_cast<uint16_t*>(u),
                               static_cast<uint16_t*>(u) + 8 * c * o};
  const uint16_t* const readonly[2] = {halves[0], halves[1]};
  double best = 1e30;
  try {
    for (int i = 0; i < repeats; ++i) {
      auto start = std::chrono::steady_clock::now();
      RunKernelTransform(g, true, c, o, halves);
      RunConv(forward, static_cast<uint16_t*>(x), readonly, static_cast<uint16_t*>(y));
      RunConv(backward, static_cast<uint16_t*>(y), readonly, static_cast<uint16_t*>(dx));
      best = std::min(best, std::chrono::duration<double>(
          std::chrono::steady_clock::now() - start).count());
    }
  } catch (const dnnl::error&) {
    return -1.0;
  }
  return best;
}


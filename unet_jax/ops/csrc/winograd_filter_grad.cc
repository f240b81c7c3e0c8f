// The weight gradient of the Winograd F(2x2,3x3) convolution (winograd_conv.cc), an XLA FFI
// handler. With V = B^T d B the input's transform and dM = A dy A^T the output gradient's
// (the output transform's transpose), dU[k] = sum over tiles V[k]^T dM[k]: 16 matmuls per
// chunk of tiles, accumulated in float32, then dg = G^T dU G per channel pair. 2.25x fewer
// multiplications than the direct weight gradient. bf16 or float32 x and dy; for bf16, V and
// dM are rounded to bf16, so its error is the forward's bf16 level, not the direct kernel's
// float32 sums of exact products.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_common.h"
#include "winograd_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using dt = dnnl::memory::data_type;

std::mutex& unet_kernel_mutex();  // onednn_conv.cc: one native kernel at a time.

namespace {

using namespace unet_winograd;  // NOLINT
using unet::Engine;
using unet::Scratch;
using unet::Stream;

// dM = A dy A^T for output tile t (its 2x2 gradient, zero past an odd edge) into row r of the
// chunk's [16][rows][co] (planes `plane` apart), in dy's type: the output transform's transpose.
template <typename E>
inline void GradTileBody(const Problem& p, const E* dy, E* dm, int64_t plane, int64_t t,
                         int64_t r) {
  const int64_t O = p.co;
  const auto corner = p.OutputCorner(t);
  const bool y1 = corner.row1, x1 = corner.col1;
  const E* q00 = dy + corner.offset;
  const E* q01 = q00 + O;
  const E* q10 = q00 + p.ow * O;
  const E* q11 = q10 + O;
  E* dst[16];
  for (int k = 0; k < 16; ++k) dst[k] = dm + k * plane + r * O;
#pragma omp simd
  for (int64_t o = 0; o < O; ++o) {
    float g00 = ToF32(q00[o]), g01 = x1 ? ToF32(q01[o]) : 0.f;
    float g10 = y1 ? ToF32(q10[o]) : 0.f, g11 = y1 && x1 ? ToF32(q11[o]) : 0.f;
    // A = [[1, 0], [1, 1], [1, -1], [0, -1]]: rows (A g), then columns ((A g) A^T).
    float e[4][2] = {{g00, g01}, {g00 + g10, g01 + g11}, {g00 - g10, g01 - g11}, {-g10, -g11}};
    for (int i = 0; i < 4; ++i) {
      dst[i * 4 + 0][o] = FromF32<E>(e[i][0]);
      dst[i * 4 + 1][o] = FromF32<E>(e[i][0] + e[i][1]);
      dst[i * 4 + 2][o] = FromF32<E>(e[i][0] - e[i][1]);
      dst[i * 4 + 3][o] = FromF32<E>(-e[i][1]);
    }
  }
}

UNET_VECTOR_CLONES void GradTile(const Problem& p, const uint16_t* dy, uint16_t* dm,
                                 int64_t plane, int64_t t, int64_t r) {
  GradTileBody(p, dy, dm, plane, t, r);
}

UNET_VECTOR_CLONES void GradTile(const Problem& p, const float* dy, float* dm, int64_t plane,
                                 int64_t t, int64_t r) {
  GradTileBody(p, dy, dm, plane, t, r);
}

template <typename E>
memory::desc VtDesc(const Problem& p, int64_t rows) {  // V [16][rows][ci] read as V^T.
  return memory::desc({16, p.ci, rows}, DnnlType<E>(),
                      {PlaneStride(rows, p.ci, sizeof(E)), 1, p.ci});
}

template <typename E>
memory::desc DmDesc(const Problem& p, int64_t rows) {  // dM [16][rows][co].
  return memory::desc({16, rows, p.co}, DnnlType<E>(),
                      {PlaneStride(rows, p.co, sizeof(E)), p.co, 1});
}

memory::desc DuDesc(const Problem& p) {  // dU [16][ci][co], float32.
  return memory::desc({16, p.ci, p.co}, dt::f32, {p.ci * p.co, p.co, 1});
}

// dU[16][ci][co] (+)= V^T dM over a chunk of `rows` tiles, one batched matmul; `accumulate`
// adds to dU (a sum post-op) instead of overwriting it.
template <typename E>
std::shared_ptr<CachedMatmul> FilterMatmul(const Problem& p, int64_t rows, bool accumulate) {
  std::string key = std::string("dw,") + TypeName<E>() + "," + std::to_string(rows) + "," +
                    std::to_string(p.ci) + "," + std::to_string(p.co) + "," +
                    std::to_string(accumulate);
  return CachedMatmulFor(key, [&] {
    auto attr = unet::UserScratchpad();
    if (accumulate) {
      dnnl::post_ops sum;
      sum.append_sum(1.f);
      attr.set_post_ops(sum);
    }
    return dnnl::matmul::primitive_desc(Engine(), VtDesc<E>(p, rows), DmDesc<E>(p, rows),
                                        DuDesc(p), attr);
  });
}

// dg[a][b][c][o] = (G^T dU[:, c, o] G)[a][b], float32 HWIO, for input channel c.
UNET_VECTOR_CLONES void FilterRow(const float* du, int64_t c, int64_t o_count, int64_t plane,
                                  float* dg) {
#pragma omp simd
  for (int64_t o = 0; o < o_count; ++o) {
    float d[4][4], t[3][4];
    for (int k = 0; k < 16; ++k) d[k / 4][k % 4] = du[k * plane + c * o_count + o];
    // G^T dU, with G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]].
    for (int j = 0; j < 4; ++j) {
      t[0][j] = d[0][j] + 0.5f * (d[1][j] + d[2][j]);
      t[1][j] = 0.5f * (d[1][j] - d[2][j]);
      t[2][j] = 0.5f * (d[1][j] + d[2][j]) + d[3][j];
    }
    for (int a = 0; a < 3; ++a) {  // (G^T dU) G.
      float* out = dg + a * 3 * plane + c * o_count + o;
      out[0] = t[a][0] + 0.5f * (t[a][1] + t[a][2]);
      out[plane] = 0.5f * (t[a][1] - t[a][2]);
      out[2 * plane] = 0.5f * (t[a][1] + t[a][2]) + t[a][3];
    }
  }
}

template <typename E>
void RunFilterGrad(const Problem& p, const E* x, const E* dy, float* dg) {
  std::lock_guard<std::mutex> lock(unet_kernel_mutex());
  const int64_t tiles = p.Tiles();
  const int64_t chunk = p.Chunk(16 * sizeof(E) * (p.ci + p.co),  // V and dM; dU float32.
                                16 * 4 * p.ci * p.co);
  auto* v = static_cast<E*>(Scratch(
      16 * (PlaneStride(chunk, p.ci, sizeof(E)) + PlaneStride(chunk, p.co, sizeof(E))) *
          sizeof(E), 0));
  auto* du = static_cast<float*>(Scratch(16 * p.ci * p.co * 4, 1));
  std::unique_ptr<E[]> zeros(new E[p.ci]());
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t rows = std::min(chunk, tiles - t0);
    const int64_t v_plane = PlaneStride(rows, p.ci, sizeof(E));
    E* dm = v + 16 * v_plane;
    const int64_t dm_plane = PlaneStride(rows, p.co, sizeof(E));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      InputTile(p, x, zeros.get(), v, v_plane, t0 + r, r);
      GradTile(p, dy, dm, dm_plane, t0 + r, r);
    }
    auto matmul = FilterMatmul<E>(p, rows, t0 > 0);
    matmul->prim.execute(Stream(), {
        {DNNL_ARG_SRC, memory(VtDesc<E>(p, rows), Engine(), v)},
        {DNNL_ARG_WEIGHTS, memory(DmDesc<E>(p, rows), Engine(), dm)},
        {DNNL_ARG_DST, memory(DuDesc(p), Engine(), du)},
        {DNNL_ARG_SCRATCHPAD, unet::Scratchpad(matmul->scratchpad_md)}});
    Stream().wait();
  }
  const int64_t plane = p.ci * p.co;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < p.ci; ++c) FilterRow(du, c, p.co, plane, dg);
}

ffi::Error FilterGradImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dg,
                          ffi::Span<const int64_t> padding) {
  auto a = x.dimensions(), b = dy.dimensions(), k = dg->dimensions();
  if (padding.size() != 2 || a.size() != 4 || b.size() != 4 || k.size() != 4 || k[0] != 3 ||
      k[1] != 3 || k[2] != a[3] || k[3] != b[3] || b[0] != a[0])
    return ffi::Error::InvalidArgument("winograd filter gradient: x (N, H, W, C), dy (N, OH, "
                                       "OW, O), dg (3, 3, C, O) and padding (top, left)");
  const auto type = x.element_type();
  if ((type != ffi::DataType::BF16 && type != ffi::DataType::F32) ||
      dy.element_type() != type || dg->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("winograd filter gradient: x and dy both bfloat16 or "
                                       "both float32, float32 dg");
  Problem p{a[0], a[1], a[2], a[3], b[1], b[2], b[3], padding[0], padding[1], false};
  auto* out = static_cast<float*>(dg->untyped_data());
  try {
    if (type == ffi::DataType::F32)
      RunFilterGrad(p, static_cast<const float*>(x.untyped_data()),
                    static_cast<const float*>(dy.untyped_data()), out);
    else
      RunFilterGrad(p, static_cast<const uint16_t*>(x.untyped_data()),
                    static_cast<const uint16_t*>(dy.untyped_data()), out);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

template <typename E>
double FilterGradBestSeconds(const int64_t* dims, int repeats, const E* x, const E* dy,
                             float* dg) {
  int64_t n = dims[0], h = dims[1], w = dims[2], c = dims[3], o = dims[4];
  int64_t pt = dims[5], pb = dims[6], pl = dims[7], pr = dims[8];
  Problem p{n, h, w, c, h + pt + pb - 2, w + pl + pr - 2, o, pt, pl, false};
  return BestSeconds(repeats, [&] { RunFilterGrad(p, x, dy, dg); });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnetWinogradFilterGrad, FilterGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("padding"));

// The same for the weight gradient alone: x (n, h, w, c), dy (n, oh, ow, o) bf16 (f32 = 0) or
// float32, dg (3, 3, c, o) float32.
extern "C" __attribute__((visibility("default"))) double
unet_winograd_filter_grad_best_seconds(const int64_t* dims, int f32, int repeats, void* x,
                                       void* dy, void* dg) {
  if (f32)
    return FilterGradBestSeconds(dims, repeats, static_cast<const float*>(x),
                                 static_cast<const float*>(dy), static_cast<float*>(dg));
  return FilterGradBestSeconds(dims, repeats, static_cast<const uint16_t*>(x),
                               static_cast<const uint16_t*>(dy), static_cast<float*>(dg));
}

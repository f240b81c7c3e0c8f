// The weight gradient of a convolution as one matmul: dW (KH*KW*C x O) = cols^T dy, where
// cols (N*OH*OW x KH*KW*C) holds each output pixel's input patch (im2col) and dy is the
// NHWC output gradient read as (N*OH*OW x O). The product lands in HWIO order, so no reorder.
//
// Why: oneDNN 3.2's direct weight-gradient kernel (brgconv_bwd_w) blocks over the output's
// width and rows; on the deepest U-Net levels (6x8 or 8x8 pixels, 256-1024 channels) it runs
// at 450-950 GFLOP/s on a 2-core AMX Xeon where its larger maps reach 1300-1700, while the
// matmul of the same products reaches 800-1150 there: 1.3-3.4x faster on those layers (the
// im2col buffer is small exactly where it wins). The products are the same exact bf16 (or
// f32) products summed in float32, in another order.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_common.h"

namespace unet {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

// Largest output map (OH*OW pixels) and smallest channel counts that take the matmul by
// default: measured on the AMX Xeon (1.07-3.4x at 48-64 pixels and 128-1024 channels; 0.5x
// at 192 pixels). Other CPUs keep oneDNN's kernel unless UNET_JAX_FILTER_GRAD says matmul.
constexpr int64_t kMaxPixels = 64;
constexpr int64_t kMinChannels = 128;

// cols^T (patch-major view of the im2col rows), dy (rows x O) and dW (patch x O, HWIO).
struct Operands {
  memory::desc cols, dy, dw;
  explicit Operands(const ConvDims& d) {
    auto dt = d.bf16 ? memory::data_type::bf16 : memory::data_type::f32;
    int64_t rows = d.n * d.oh * d.ow, patch = d.kh * d.kw * d.c;
    cols = memory::desc({patch, rows}, dt, tag::ba);
    dy = memory::desc({rows, d.o}, dt, tag::ab);
    dw = memory::desc({patch, d.o}, memory::data_type::f32, tag::ab);
  }
};

// cols[(n*OH + y)*OW + x][(i*KW + j)*C + c] = x_padded[n][y*SH + i][x*SW + j][c].
void Im2col(const ConvDims& d, const char* x, char* cols) {
  const int64_t esize = d.bf16 ? 2 : 4, pixel = d.c * esize;
  const int64_t rows = d.n * d.oh * d.ow, row_bytes = d.kh * d.kw * pixel;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / (d.oh * d.ow), y = r / d.ow % d.oh, xo = r % d.ow;
    char* out = cols + r * row_bytes;
    for (int64_t i = 0; i < d.kh; ++i) {
      const int64_t iy = y * d.sh + i - d.pt;
      for (int64_t j = 0; j < d.kw; ++j, out += pixel) {
        const int64_t ix = xo * d.sw + j - d.pl;
        if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w) std::memset(out, 0, pixel);
        else std::memcpy(out, x + ((n * d.h + iy) * d.w + ix) * pixel, pixel);
      }
    }
  }
}

enum class FilterGradAlgo { kAuto, kDirect, kMatmul };

FilterGradAlgo RequestedFilterGradAlgo() {
  const char* value = std::getenv("UNET_JAX_FILTER_GRAD");
  if (value && std::strcmp(value, "direct") == 0) return FilterGradAlgo::kDirect;
  if (value && std::strcmp(value, "matmul") == 0) return FilterGradAlgo::kMatmul;
  return FilterGradAlgo::kAuto;
}

}  // namespace

bool UseMatmulFilterGrad(const ConvDims& d) {
  switch (RequestedFilterGradAlgo()) {
    case FilterGradAlgo::kDirect: return false;
    case FilterGradAlgo::kMatmul: return true;
    case FilterGradAlgo::kAuto: break;
  }
  static const bool amx = dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_amx;
  return amx && d.bf16 && d.oh * d.ow <= kMaxPixels && d.c >= kMinChannels &&
         d.o >= kMinChannels;
}

void MatmulFilterGrad(const ConvDims& d, const std::string& key, const void* x,
                      const void* dy, float* dw) {
  Operands md(d);
  auto matmul = CachedMatmulFor(key, [&] {
    return dnnl::matmul::primitive_desc(Engine(), md.cols, md.dy, md.dw, UserScratchpad());
  });
  void* cols = Scratch(md.cols.get_size(), 1);
  Im2col(d, static_cast<const char*>(x), static_cast<char*>(cols));
  memory dy_memory(md.dy, Engine(), const_cast<void*>(dy));
  matmul->prim.execute(Stream(), {{DNNL_ARG_SRC, memory(md.cols, Engine(), cols)},
                                  {DNNL_ARG_WEIGHTS, dy_memory},
                                  {DNNL_ARG_DST, memory(md.dw, Engine(), dw)},
                                  {DNNL_ARG_SCRATCHPAD, Scratchpad(matmul->scratchpad_md)}});
  Stream().wait();
}

}  // namespace unet

// Gate prototype for issue 24: Winograd F(2x2,3x3) forward convolution vs oneDNN direct bf16.
//
// Stride 1, 3x3, SAME; NHWC bf16 input, HWIO kernel, bf16 output. The input and output
// transforms run in float32; the 16 transformed-domain products are one batched oneDNN bf16
// matmul (f32 accumulation; AMX where the CPU has it, as the direct convolution uses it).
// Tiles are processed in blocks (input transform -> 16 GEMMs -> output transform per block),
// so a block's transformed data can stay in L2; a block of all tiles is the plain 3-pass
// variant. The kernel transform (and the packing of its weights) runs once, untimed, as does
// the direct convolution's weight reorder (timed separately as "direct_reorder_ms").
//
// Usage: winograd_gate N H W C O ROUNDS BLOCK [BLOCK...]   (BLOCK 0 = all tiles)
// Prints one JSON object per run on stdout. Threads: OMP_NUM_THREADS.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

dnnl::engine engine(dnnl::engine::kind::cpu, 0);
dnnl::stream stream(engine);

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t F32ToBf16(float f) {  // Round to nearest even (no NaNs here).
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  return uint16_t(bits >> 16);
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <typename T>
T* Alloc(size_t count) {
  size_t bytes = (count * sizeof(T) + 4095) / 4096 * 4096;
  return static_cast<T*>(std::aligned_alloc(4096, bytes));
}

struct Shape {
  int64_t n, h, w, c, o;
  int64_t th() const { return (h + 1) / 2; }
  int64_t tw() const { return (w + 1) / 2; }
  int64_t tiles() const { return n * th() * tw(); }
};

// U[k][c][o] = (G g G^T)[k] for every (c, o): the transformed kernel, bf16.
std::vector<uint16_t> TransformKernel(const Shape& s, const std::vector<float>& hwio) {
  std::vector<uint16_t> u(16 * s.c * s.o);
  const float G[4][3] = {{1, 0, 0}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0, 0, 1}};
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t o = 0; o < s.o; ++o) {
      float g[3][3], gg[4][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) g[i][j] = hwio[((i * 3 + j) * s.c + c) * s.o + o];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 3; ++j)
          gg[i][j] = G[i][0] * g[0][j] + G[i][1] * g[1][j] + G[i][2] * g[2][j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
          u[((i * 4 + j) * s.c + c) * s.o + o] =
              F32ToBf16(gg[i][0] * G[j][0] + gg[i][1] * G[j][1] + gg[i][2] * G[j][2]);
    }
  return u;
}

// The Winograd convolution for one block size: buffers, the batched matmul, the timers.
// Blocked (block < tiles): one OpenMP region; each thread takes whole blocks in turn and runs
// input transform -> single-threaded matmul -> output transform on its own L2-sized buffers,
// with no barrier between the steps. 3-pass (block = tiles): each step over all tiles, the
// transforms as OpenMP loops and the matmul on all threads.
struct Winograd {
  Shape s;
  int64_t block;                       // Tiles per block.
  bool three_pass;
  int threads;
  std::vector<uint16_t*> v;            // Per thread: [16][block][c] transformed input, bf16.
  std::vector<float*> m;               // Per thread: [16][block][o] transformed output, f32.
  std::vector<void*> scratch;          // Per thread: the matmul's scratchpad.
  std::vector<dnnl::stream> streams;
  const uint16_t* zeros;               // c zeros for the padding.
  memory u_packed;                     // The transformed kernel in the matmul's layout.
  dnnl::matmul full, tail;             // For `block` tiles and for the last, shorter block.
  dnnl::matmul::primitive_desc full_pd, tail_pd;
  std::string impl;
  std::vector<double> t_in, t_gemm, t_out;  // Per thread, seconds.

  dnnl::matmul::primitive_desc Desc(int64_t rows) const {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return dnnl::matmul::primitive_desc(
        engine, memory::desc({16, rows, s.c}, dt::bf16, {block * s.c, s.c, 1}),
        memory::desc({16, s.c, s.o}, dt::bf16, tag::any),
        memory::desc({16, rows, s.o}, dt::f32, {block * s.o, s.o, 1}), attr);
  }

  Winograd(const Shape& shape, int64_t blk, const std::vector<uint16_t>& u) : s(shape) {
    block = blk <= 0 ? s.tiles() : std::min(blk, s.tiles());
    three_pass = block == s.tiles();
    threads = three_pass ? 1 : omp_get_max_threads();
    uint16_t* z = Alloc<uint16_t>(s.c);
    std::memset(z, 0, s.c * 2);
    zeros = z;
    int64_t tail_rows = s.tiles() % block;
    // Plan the blocked variant's matmuls for one thread, as each thread runs its own.
    if (!three_pass) omp_set_num_threads(1);
    full_pd = Desc(block);
    full = dnnl::matmul(full_pd);
    if (tail_rows) tail_pd = Desc(tail_rows), tail = dnnl::matmul(tail_pd);
    if (!three_pass) omp_set_num_threads(threads);
    impl = full_pd.impl_info_str();
    size_t scratch_bytes = std::max(full_pd.scratchpad_desc().get_size(),
                                    tail_rows ? tail_pd.scratchpad_desc().get_size() : 0);
    for (int i = 0; i < threads; ++i) {
      v.push_back(Alloc<uint16_t>(16 * block * s.c));
      m.push_back(Alloc<float>(16 * block * s.o));
      scratch.push_back(Alloc<char>(std::max<size_t>(scratch_bytes, 64)));
      streams.emplace_back(engine);
    }
    t_in.assign(threads, 0), t_gemm.assign(threads, 0), t_out.assign(threads, 0);
    // Pack U once (untimed): the kernel transform is reused within a step.
    memory user({{16, s.c, s.o}, dt::bf16, tag::abc}, engine, const_cast<uint16_t*>(u.data()));
    u_packed = memory(full_pd.weights_desc(), engine);
    dnnl::reorder(user, u_packed).execute(stream, user, u_packed);
    stream.wait();
  }

  // V = B^T d B per tile and channel; d is the 4x4 input patch at (2*ti-1, 2*tj-1).
  void InputTile(const uint16_t* x, uint16_t* v_block, int64_t t, int64_t r) const {
    const int64_t C = s.c, th = s.th(), tw = s.tw();
    int64_t b = t / (th * tw), ti = t / tw % th, tj = t % tw;
    const uint16_t* p[16];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) {
        int64_t y = 2 * ti - 1 + i, xx = 2 * tj - 1 + j;
        p[i * 4 + j] = (y < 0 || y >= s.h || xx < 0 || xx >= s.w)
                           ? zeros : x + ((b * s.h + y) * s.w + xx) * C;
      }
    uint16_t* out = v_block + r * C;
    const int64_t stride = block * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      float d[4][4], e[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) d[i][j] = Bf16ToF32(p[i * 4 + j][c]);
      for (int j = 0; j < 4; ++j) {  // B^T d: rows.
        e[0][j] = d[0][j] - d[2][j];
        e[1][j] = d[1][j] + d[2][j];
        e[2][j] = d[2][j] - d[1][j];
        e[3][j] = d[1][j] - d[3][j];
      }
      for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns.
        out[(i * 4 + 0) * stride + c] = F32ToBf16(e[i][0] - e[i][2]);
        out[(i * 4 + 1) * stride + c] = F32ToBf16(e[i][1] + e[i][2]);
        out[(i * 4 + 2) * stride + c] = F32ToBf16(e[i][2] - e[i][1]);
        out[(i * 4 + 3) * stride + c] = F32ToBf16(e[i][1] - e[i][3]);
      }
    }
  }

  // Y = A^T M A per tile and output channel, written as bf16 NHWC.
  void OutputTile(uint16_t* y, const float* m_block, int64_t t, int64_t r) const {
    const int64_t O = s.o, th = s.th(), tw = s.tw(), stride = block * O;
    int64_t b = t / (th * tw), ti = t / tw % th, tj = t % tw;
    int64_t y0 = 2 * ti, x0 = 2 * tj;
    bool y1ok = y0 + 1 < s.h, x1ok = x0 + 1 < s.w;
    uint16_t* q00 = y + ((b * s.h + y0) * s.w + x0) * O;
    uint16_t* q01 = q00 + O;
    uint16_t* q10 = q00 + s.w * O;
    uint16_t* q11 = q10 + O;
    const float* in = m_block + r * O;
#pragma omp simd
    for (int64_t o = 0; o < O; ++o) {
      float a[4][4], e[2][4];
      for (int k = 0; k < 16; ++k) a[k / 4][k % 4] = in[k * stride + o];
      for (int j = 0; j < 4; ++j) {  // A^T M.
        e[0][j] = a[0][j] + a[1][j] + a[2][j];
        e[1][j] = a[1][j] - a[2][j] - a[3][j];
      }
      q00[o] = F32ToBf16(e[0][0] + e[0][1] + e[0][2]);
      if (x1ok) q01[o] = F32ToBf16(e[0][1] - e[0][2] - e[0][3]);
      if (y1ok) q10[o] = F32ToBf16(e[1][0] + e[1][1] + e[1][2]);
      if (y1ok && x1ok) q11[o] = F32ToBf16(e[1][1] - e[1][2] - e[1][3]);
    }
  }

  void Gemm(int thread, int64_t rows) {
    memory::desc src({16, rows, s.c}, dt::bf16, {block * s.c, s.c, 1});
    memory::desc dst({16, rows, s.o}, dt::f32, {block * s.o, s.o, 1});
    bool is_full = rows == block;
    const auto& pd = is_full ? full_pd : tail_pd;
    (is_full ? full : tail).execute(
        streams[thread], {{DNNL_ARG_SRC, memory(src, engine, v[thread])},
                          {DNNL_ARG_WEIGHTS, u_packed},
                          {DNNL_ARG_DST, memory(dst, engine, m[thread])},
                          {DNNL_ARG_SCRATCHPAD,
                           memory(pd.scratchpad_desc(), engine, scratch[thread])}});
    streams[thread].wait();
  }

  void Run(const uint16_t* x, uint16_t* y) {
    std::fill(t_in.begin(), t_in.end(), 0.0);
    std::fill(t_gemm.begin(), t_gemm.end(), 0.0);
    std::fill(t_out.begin(), t_out.end(), 0.0);
    const int64_t T = s.tiles();
    if (three_pass) {
      double a = Now();
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < T; ++t) InputTile(x, v[0], t, t);
      double b = Now();
      Gemm(0, T);
      double c = Now();
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < T; ++t) OutputTile(y, m[0], t, t);
      double d = Now();
      t_in[0] = b - a, t_gemm[0] = c - b, t_out[0] = d - c;
      return;
    }
    const int64_t blocks = (T + block - 1) / block;
#pragma omp parallel num_threads(threads)
    {
      int thread = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t k = 0; k < blocks; ++k) {
        int64_t t0 = k * block, rows = std::min(block, T - t0);
        double a = Now();
        for (int64_t r = 0; r < rows; ++r) InputTile(x, v[thread], t0 + r, r);
        double b = Now();
        Gemm(thread, rows);
        double c = Now();
        for (int64_t r = 0; r < rows; ++r) OutputTile(y, m[thread], t0 + r, r);
        double d = Now();
        t_in[thread] += b - a, t_gemm[thread] += c - b, t_out[thread] += d - c;
      }
    }
  }

  // The split of a run's wall time: each step's share of the threads' summed busy time.
  void Split(double wall, double* in, double* gemm, double* out) const {
    double si = 0, sg = 0, so = 0;
    for (int i = 0; i < threads; ++i) si += t_in[i], sg += t_gemm[i], so += t_out[i];
    double total = si + sg + so;
    *in = wall * si / total, *gemm = wall * sg / total, *out = wall * so / total;
  }
};

// oneDNN's direct convolution as unet_jax/ops/csrc/onednn_conv.cc builds it.
struct Direct {
  Shape s;
  dnnl::convolution_forward prim;
  dnnl::reorder reorder;
  memory user_w, w;
  std::string impl;

  Direct(const Shape& shape, dt type, void* hwio) : s(shape) {
    memory::desc src({s.n, s.c, s.h, s.w}, type, tag::nhwc);
    memory::desc dst({s.n, s.o, s.h, s.w}, type, tag::nhwc);
    memory::desc wany({s.o, s.c, 3, 3}, type, tag::any);
    dnnl::convolution_forward::primitive_desc pd(
        engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wany,
        dst, {1, 1}, {1, 1}, {1, 1});
    impl = pd.impl_info_str();
    prim = dnnl::convolution_forward(pd);
    user_w = memory({{s.o, s.c, 3, 3}, type, tag::hwio}, engine, hwio);
    w = memory(pd.weights_desc(), engine);
    reorder = dnnl::reorder(user_w, w);
    Reorder();
  }
  void Reorder() {
    reorder.execute(stream, user_w, w);
    stream.wait();
  }
  void Run(void* x, void* y) {
    memory::desc src({s.n, s.c, s.h, s.w}, w.get_desc().get_data_type(), tag::nhwc);
    memory::desc dst({s.n, s.o, s.h, s.w}, w.get_desc().get_data_type(), tag::nhwc);
    prim.execute(stream, {{DNNL_ARG_SRC, memory(src, engine, x)},
                          {DNNL_ARG_WEIGHTS, w},
                          {DNNL_ARG_DST, memory(dst, engine, y)}});
    stream.wait();
  }
};

// A control: im2col (a bf16 copy, 9x the input) + one oneDNN bf16 matmul [N*H*W, 9C] x [9C, O]
// (HWIO flattened is exactly that [9C, O] matrix; packed once, untimed). It separates what
// Winograd gains by doing fewer multiplications from what any GEMM gains over the direct
// convolution on a small image.
struct Im2col {
  Shape s;
  uint16_t* cols;
  memory w_packed;
  dnnl::matmul prim;
  std::string impl;
  double t_copy = 0, t_gemm = 0;

  Im2col(const Shape& shape, uint16_t* hwio) : s(shape) {
    int64_t rows = s.n * s.h * s.w, k = 9 * s.c;
    cols = Alloc<uint16_t>(rows * k);
    dnnl::matmul::primitive_desc pd(engine, memory::desc({rows, k}, dt::bf16, tag::ab),
                                    memory::desc({k, s.o}, dt::bf16, tag::any),
                                    memory::desc({rows, s.o}, dt::bf16, tag::ab));
    impl = pd.impl_info_str();
    prim = dnnl::matmul(pd);
    memory user({{k, s.o}, dt::bf16, tag::ab}, engine, hwio);
    w_packed = memory(pd.weights_desc(), engine);
    dnnl::reorder(user, w_packed).execute(stream, user, w_packed);
    stream.wait();
  }

  void Run(const uint16_t* x, uint16_t* y) {
    const int64_t C = s.c, rows = s.n * s.h * s.w;
    double a = Now();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t b = r / (s.h * s.w), i = r / s.w % s.h, j = r % s.w;
      for (int di = 0; di < 3; ++di)
        for (int dj = 0; dj < 3; ++dj) {
          int64_t yy = i + di - 1, xx = j + dj - 1;
          uint16_t* dst = cols + (r * 9 + di * 3 + dj) * C;
          if (yy < 0 || yy >= s.h || xx < 0 || xx >= s.w)
            std::memset(dst, 0, C * 2);
          else
            std::memcpy(dst, x + ((b * s.h + yy) * s.w + xx) * C, C * 2);
        }
    }
    double b = Now();
    prim.execute(stream, {{DNNL_ARG_SRC, memory({{rows, 9 * C}, dt::bf16, tag::ab}, engine, cols)},
                          {DNNL_ARG_WEIGHTS, w_packed},
                          {DNNL_ARG_DST, memory({{rows, s.o}, dt::bf16, tag::ab}, engine, y)}});
    stream.wait();
    t_copy = b - a, t_gemm = Now() - b;
  }
};

double RelativeError(const std::vector<float>& ref, const uint16_t* y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double d = Bf16ToF32(y[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: %s N H W C O ROUNDS BLOCK [BLOCK...]\n", argv[0]);
    return 2;
  }
  Shape s{std::atoll(argv[1]), std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]),
          std::atoll(argv[5])};
  int rounds = std::atoi(argv[6]);
  std::vector<int64_t> blocks;
  for (int i = 7; i < argc; ++i) blocks.push_back(std::atoll(argv[i]));

  // Inputs rounded to bf16 first, so the f32 reference sees exactly the bf16 operands.
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  size_t nx = s.n * s.h * s.w * s.c, nw = 9 * s.c * s.o, ny = s.n * s.h * s.w * s.o;
  std::vector<uint16_t> xb(nx), wb(nw);
  std::vector<float> xf(nx), wf(nw);
  float wscale = 1.f / std::sqrt(9.f * s.c);
  for (size_t i = 0; i < nx; ++i) xf[i] = Bf16ToF32(xb[i] = F32ToBf16(normal(rng)));
  for (size_t i = 0; i < nw; ++i) wf[i] = Bf16ToF32(wb[i] = F32ToBf16(normal(rng) * wscale));

  std::vector<float> ref(ny);
  {
    Direct f32(s, dt::f32, wf.data());
    f32.Run(xf.data(), ref.data());
  }
  Direct direct(s, dt::bf16, wb.data());
  uint16_t* x = Alloc<uint16_t>(nx);
  std::memcpy(x, xb.data(), nx * 2);
  uint16_t* y_direct = Alloc<uint16_t>(ny);
  std::vector<uint16_t*> y_wino;
  std::vector<Winograd*> winos;
  std::vector<uint16_t> u = TransformKernel(s, wf);
  for (int64_t blk : blocks) {
    winos.push_back(new Winograd(s, blk, u));
    y_wino.push_back(Alloc<uint16_t>(ny));
  }

  Im2col im2col(s, wb.data());
  uint16_t* y_im2col = Alloc<uint16_t>(ny);

  // Warm up, then take turns: direct, direct's weight reorder, im2col, each Winograd.
  direct.Run(x, y_direct);
  im2col.Run(x, y_im2col);
  for (size_t i = 0; i < winos.size(); ++i) winos[i]->Run(x, y_wino[i]);
  const double inf = 1e30;
  std::vector<double> t_direct, t_reorder, t_im2col;
  double im2col_copy = 0, im2col_gemm = 0;
  std::vector<std::vector<double>> t_wino(winos.size());
  std::vector<double> best(winos.size(), inf), bin(winos.size()), bgemm(winos.size()),
      bout(winos.size());
  for (int r = 0; r < rounds; ++r) {
    double a = Now();
    direct.Run(x, y_direct);
    double b = Now();
    direct.Reorder();
    double c = Now();
    t_direct.push_back(b - a);
    t_reorder.push_back(c - b);
    im2col.Run(x, y_im2col);
    double d = Now() - c;
    t_im2col.push_back(d);
    if (d <= *std::min_element(t_im2col.begin(), t_im2col.end()))
      im2col_copy = im2col.t_copy, im2col_gemm = im2col.t_gemm;
    for (size_t i = 0; i < winos.size(); ++i) {
      Winograd& wg = *winos[i];
      double t = Now();
      wg.Run(x, y_wino[i]);
      t = Now() - t;
      t_wino[i].push_back(t);
      if (t < best[i]) best[i] = t, wg.Split(t, &bin[i], &bgemm[i], &bout[i]);
    }
  }
  double best_direct = *std::min_element(t_direct.begin(), t_direct.end());
  double best_reorder = *std::min_element(t_reorder.begin(), t_reorder.end());
  auto list = [](const std::vector<double>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i] * 1e3);
    return s + "]";
  };

  double flops = 2.0 * s.n * s.h * s.w * 9 * s.c * s.o;
  std::printf("{\"n\": %ld, \"h\": %ld, \"w\": %ld, \"c\": %ld, \"o\": %ld, \"threads\": %d, "
              "\"rounds\": %d, \"direct_flops\": %.0f, \"direct_ms\": %.4f, "
              "\"direct_reorder_ms\": %.4f, \"direct_impl\": \"%s\", "
              "\"direct_rel_err\": %.3e, \"direct_rounds_ms\": %s, "
              "\"im2col\": {\"ms\": %.4f, \"copy_ms\": %.4f, \"gemm_ms\": %.4f, "
              "\"matmul_impl\": \"%s\", \"rel_err\": %.3e, \"rounds_ms\": %s}, "
              "\"winograd\": [",
              s.n, s.h, s.w, s.c, s.o, omp_get_max_threads(), rounds, flops, best_direct * 1e3,
              best_reorder * 1e3, direct.impl.c_str(), RelativeError(ref, y_direct),
              list(t_direct).c_str(),
              *std::min_element(t_im2col.begin(), t_im2col.end()) * 1e3, im2col_copy * 1e3,
              im2col_gemm * 1e3, im2col.impl.c_str(), RelativeError(ref, y_im2col),
              list(t_im2col).c_str());
  for (size_t i = 0; i < winos.size(); ++i) {
    Winograd& wg = *winos[i];
    std::printf("%s{\"block\": %ld, \"tiles\": %ld, \"ms\": %.4f, \"input_ms\": %.4f, "
                "\"gemm_ms\": %.4f, \"output_ms\": %.4f, \"gemm_flops\": %.0f, "
                "\"matmul_impl\": \"%s\", \"rel_err\": %.3e, \"rounds_ms\": %s}",
                i ? ", " : "", wg.block, s.tiles(), best[i] * 1e3, bin[i] * 1e3,
                bgemm[i] * 1e3, bout[i] * 1e3, 2.0 * 16 * s.tiles() * s.c * s.o,
                wg.impl.c_str(), RelativeError(ref, y_wino[i]), list(t_wino[i]).c_str());
  }
  std::printf("]}\n");
  return 0;
}

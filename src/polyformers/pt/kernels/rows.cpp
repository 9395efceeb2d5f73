// Products of a few input rows (a decoding step, or a small batch of them) with a weight matrix that is
// read once per call: the work is bound by reading the weights, so each kernel streams every weight row
// once for up to eight input rows and keeps the partial sums in registers.
//
//   linear_bf16(x, w bfloat16 (N, K), bias?)              the weights widened to float32 in registers
//   linear_i4(x, w uint8 packed, scale_offset bfloat16 packed, group, bias?, N)
//       4-bit weight-only, w = (q - 8) * scale + offset, dequantized in registers (the packed layout is
//       described below and made by polyformers.pt.kernels.pack_i4)
//
// x is float32 (M, K), any M (taken eight rows at a time); the output is float32 (M, N) and the sums are
// float32's. Output rows are split between torch's intra-op threads. Built with -march=native by
// polyformers.pt.kernels, whose layers fall back to torch's kernels where this file cannot be built.
// (Float32 and int8 kernels of the same shape were tried: they stream no faster than oneDNN's and
// fbgemm's one-row kernels on this design's target CPUs, so torch's are kept for those.)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__)
#error "polyformers kernels need AVX-512 (F, BW, VL)"
#endif

namespace {

constexpr int64_t kTile = 8;  // input rows per pass over the weights

// A pass reads R rows of weights side by side, R short streams that the hardware prefetchers are slow to
// follow (a row of 1024 bfloat16 weights is 32 cache lines). The R rows of the next pass lie right after
// them: while a pass takes its k-th step, it asks for the k-th part of the next pass's block (the same
// number of bytes as the step reads), so that block is in the caches when the next pass starts.
template <int R, int StepBytes>
inline void prefetch_next(const void* block_end, int64_t step) {
  const char* p = static_cast<const char*>(block_end) + step * R * StepBytes;
  for (int line = 0; line < R * StepBytes; line += 64) _mm_prefetch(p + line, _MM_HINT_T0);
}

inline __mmask16 tail_mask(int64_t left) { return static_cast<__mmask16>((1u << left) - 1u); }

// Output rows computed together by one pass: enough independent sums to hide the FMA latency, few
// enough that M * R accumulators, M inputs and a weight vector fit in the 32 vector registers.
// (R divides eight, the rows of a panel of packed weights.)
template <int M> constexpr int rows_per_pass() { return M <= 3 ? 8 : M <= 6 ? 4 : 2; }

// ---- bfloat16 weights --------------------------------------------------------------------

struct BF16 {
  using T = at::BFloat16;
  static __m512 widen(__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); }
  static __m512 load(const T* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const T* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

template <class W, int M, int R>
void float_pass(const float* x, int64_t K, const typename W::T* w, int64_t n, int64_t rows, float* y,
                int64_t N, const float* bias) {
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  const typename W::T* wr = w + n * K;
  int64_t k = 0;
  const typename W::T* next = wr + R * K;
  for (; k + 16 <= K; k += 16) {
    prefetch_next<R, 16 * sizeof(typename W::T)>(next, k / 16);
    __m512 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      if (r < rows) {
        const __m512 wv = W::load(wr + r * K + k);
        for (int m = 0; m < M; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
      }
    }
  }
  if (k < K) {
    const __mmask16 mask = tail_mask(K - k);
    __m512 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x + m * K + k);
    for (int r = 0; r < R; ++r) {
      if (r < rows) {
        const __m512 wv = W::load(wr + r * K + k, mask);
        for (int m = 0; m < M; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R && r < rows; ++r)
      y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]) + (bias ? bias[n + r] : 0.0f);
}

// ---- packed 4-bit weights -------------------------------------------------------------------------------
// Stored in panels of eight output rows (the rows padded to a multiple of eight with zero weights):
// within a panel, the first step of each of the eight rows, then the second step of each, and so on, so
// that a pass over a panel reads one contiguous stream, where rows side by side would be eight short
// ones. A step is 32 weights (16 bytes). A pass over fewer than eight rows (R = 4 or 2, when more input
// rows take the registers) reads its rows' parts of each step.

constexpr int64_t kPanel = 8;

// How far ahead of a pass's reads its prefetches go: enough to cover the memory's latency at its
// bandwidth, little enough to stay in the first-level cache.
constexpr int kAhead = 4096;

template <int R, int StepBytes>
inline void prefetch_ahead(const void* step) {
  // A fixed distance ahead in the panel's stream (past its end: the next panel's first steps), long
  // enough to cover the memory's latency at its bandwidth.
  const char* p = static_cast<const char*>(step) + kAhead;
  for (int line = 0; line < R * StepBytes; line += 64) _mm_prefetch(p + line, _MM_HINT_T0);
}

// ---- 4-bit weight-only --------------------------------------------------------------------------------
// A step's 16 bytes hold 32 weights of a row, byte j weight j in its low nibble and weight j + 16 in its
// high one. scale_offset holds (scale, offset) per group, bfloat16, in panels too: for each group, the
// eight rows' pairs. w = (q - 8) * scale + offset: the sixteen values of a group's weights are computed
// once into a vector, and vpermps looks each weight up in it.

template <int M, int R>
void i4_pass(const float* x, int64_t K, const uint8_t* w, const at::BFloat16* so, int64_t group, int64_t n,
             int64_t rows, float* y, int64_t N, const float* bias) {
  const __m512 centered = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  const int64_t groups = K / group;
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  const uint8_t* first = w + (n / kPanel) * kPanel * (K / 2) + (n % kPanel) * 16;
  const at::BFloat16* pairs = so + (n / kPanel) * kPanel * groups * 2 + (n % kPanel) * 2;
  for (int64_t g = 0; g < groups; ++g) {
    __m512 values[R];
    for (int r = 0; r < R; ++r) {
      const at::BFloat16* p = pairs + g * kPanel * 2 + r * 2;
      values[r] = _mm512_fmadd_ps(centered, _mm512_set1_ps(float(p[0])), _mm512_set1_ps(float(p[1])));
    }
    for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
      const uint8_t* step = first + (k / 32) * kPanel * 16;
      prefetch_ahead<R, 16>(step);
      __m512i bytes[R];
      for (int r = 0; r < R; ++r)
        bytes[r] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(step + r * 16)));
      for (int half = 0; half < 2; ++half) {
        __m512 xv[M];
        for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k + 16 * half);
        for (int r = 0; r < R; ++r) {
          // vpermps reads the low four bits of each index: the low nibble as it is, the high one shifted.
          const __m512i index = half ? _mm512_srli_epi32(bytes[r], 4) : bytes[r];
          const __m512 wv = _mm512_permutexvar_ps(index, values[r]);
          for (int m = 0; m < M; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
        }
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R && r < rows; ++r)
      y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]) + (bias ? bias[n + r] : 0.0f);
}

// ---- driver -------------------------------------------------------------------------------------------

// Calls pass.template run<M, R>(n, rows, tile) over all N output rows, split between threads, for each
// tile of up to eight input rows.
template <class Pass>
void over_rows(int64_t Mtotal, int64_t N, const Pass& pass) {
  for (int64_t m0 = 0; m0 < Mtotal; m0 += kTile) {
    const int64_t M = std::min(kTile, Mtotal - m0);
    auto run = [&](auto tag) {
      constexpr int Mc = decltype(tag)::value;
      constexpr int R = Pass::template rows<Mc>();
      const int64_t passes = (N + R - 1) / R;
      at::parallel_for(0, passes, 1, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const int64_t n = p * R;
          pass.template run<Mc, R>(m0, n, std::min<int64_t>(R, N - n));
        }
      });
    };
    switch (M) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 4: run(std::integral_constant<int, 4>{}); break;
      case 5: run(std::integral_constant<int, 5>{}); break;
      case 6: run(std::integral_constant<int, 6>{}); break;
      case 7: run(std::integral_constant<int, 7>{}); break;
      default: run(std::integral_constant<int, 8>{}); break;
    }
  }
}

// One pass each: the arguments of a kernel, and run<M, R>(first input row, first output row, rows).
template <class W>
struct FloatPass {
  const float* x; const typename W::T* w; const float* b; float* y; int64_t N, K;
  template <int M> static constexpr int rows() { return rows_per_pass<M>(); }
  template <int M, int R> void run(int64_t m0, int64_t n, int64_t rows) const {
    float_pass<W, M, R>(x + m0 * K, K, w, n, rows, y + m0 * N, N, b);
  }
};

struct I4Pass {
  const float* x; const uint8_t* w; const at::BFloat16* so; int64_t group; const float* b; float* y; int64_t N, K;
  // The group's lookup vectors take R registers more than the float kernels' passes.
  template <int M> static constexpr int rows() { return M == 1 ? 8 : M <= 4 ? 4 : 2; }
  template <int M, int R> void run(int64_t m0, int64_t n, int64_t rows) const {
    i4_pass<M, R>(x + m0 * K, K, w, so, group, n, rows, y + m0 * N, N, b);
  }
};

void check_input(const char* op, const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2,
              op, ": x: expected a 2-D float32 CPU tensor, given ", x.scalar_type(), " of ", x.dim(), " dimensions");
  TORCH_CHECK(x.size(1) == K, op, ": x: expected ", K, " features, given ", x.size(1));
}

void check_bias(const char* op, const c10::optional<at::Tensor>& bias, int64_t N) {
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous(),
                op, ": bias: expected a contiguous float32 vector of ", N, ", given ", bias->scalar_type(), " ",
                bias->sizes());
  }
}

template <class W>
at::Tensor float_linear(const char* op, const at::Tensor& x_in, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                        at::ScalarType wtype) {
  TORCH_CHECK(w.scalar_type() == wtype && w.dim() == 2 && w.is_contiguous(), op,
              ": weight: expected a contiguous 2-D ", wtype, " tensor, given ", w.scalar_type(), " ", w.sizes());
  const int64_t N = w.size(0), K = w.size(1);
  check_input(op, x_in, K);
  check_bias(op, bias, N);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  const float* xp = x.data_ptr<float>();
  const auto* wp = reinterpret_cast<const typename W::T*>(w.data_ptr());
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  over_rows(x.size(0), N, FloatPass<W>{xp, wp, bp, yp, N, K});
  return y;
}

at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  return float_linear<BF16>("linear_bf16", x, w, bias, at::kBFloat16);
}

int64_t panels(int64_t N) { return (N + kPanel - 1) / kPanel; }

at::Tensor linear_i4(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& so, int64_t group,
                     const c10::optional<at::Tensor>& bias, int64_t N) {
  const char* op = "linear_i4";
  TORCH_CHECK(N > 0, op, ": expected out_features > 0, given ", N);
  TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 4 && w.is_contiguous() && w.size(0) == panels(N) &&
                  w.size(2) == kPanel && w.size(3) == 16,
              op, ": weight: expected a contiguous uint8 tensor of shape (", panels(N), ", in_features / 32, 8, 16), given ",
              w.scalar_type(), " ", w.sizes());
  const int64_t K = w.size(1) * 32;
  TORCH_CHECK(group > 0 && group % 32 == 0 && K % group == 0, op, ": group: expected a multiple of 32 dividing ",
              K, ", given ", group);
  TORCH_CHECK(so.scalar_type() == at::kBFloat16 && so.is_contiguous() &&
                  so.sizes() == at::IntArrayRef({panels(N), K / group, kPanel, 2}),
              op, ": scale_offset: expected a contiguous bfloat16 tensor of shape (", panels(N), ", ", K / group,
              ", 8, 2), given ", so.scalar_type(), " ", so.sizes());
  check_input(op, x_in, K);
  check_bias(op, bias, N);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  const I4Pass pass{x.data_ptr<float>(), w.data_ptr<uint8_t>(), so.data_ptr<at::BFloat16>(), group,
                    bias ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(), N, K};
  over_rows(x.size(0), N, pass);
  return y;
}

}  // namespace

TORCH_LIBRARY(polyformers, m) {
  m.def("linear_bf16(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_i4(Tensor x, Tensor weight, Tensor scale_offset, int group, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(polyformers, CPU, m) {
  m.impl("linear_bf16", &linear_bf16);
  m.impl("linear_i4", &linear_i4);
}

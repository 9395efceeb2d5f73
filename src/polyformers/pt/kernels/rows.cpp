// Products of a few input rows (a decoding step, or a small batch of them) with a weight matrix that is
// read once per call: the work is bound by reading the weights, so each kernel streams every weight row
// once for up to eight input rows and keeps the partial sums in registers.
//
//   linear_bf16(x, w bfloat16 (N, K), bias?), linear_f32(x, w float32 (N, K), bias?)
//       float32 inputs and sums, bfloat16 weights widened in registers
//   linear_i4(x, w uint8 packed, scale_offset bfloat16 packed, bias?, K, N)
//       4-bit weights, w = (q - 8) * scale + offset per group; the inputs rounded to 8 bits per row and
//       multiplied by the 4-bit integers with AVX-512 VNNI, the group's scale and offset applied to the
//       group's integer sums in float32 (the packed layout is described below and made by
//       polyformers.pt.kernels.pack_i4)
//   linear_i8(x, w int8 packed, scales, sums, bias?, K, N)
//       int8 weights with one scale per output row; each input row rounded onto 0..255 over its own
//       range and multiplied as integers with VNNI (layout below, made by polyformers.pt.kernels.pack_i8);
//       2+ rows with the tile unit (AMX) where there is one, to the same bits (set_int8_tiles)
//
// x is float32 (M, K), any M (taken eight rows at a time, sixteen on the tile unit); the output is float32
// (M, N). Output rows are split between torch's intra-op threads. Built with -march=native by
// polyformers.pt.kernels, whose layers fall back to torch's kernels where this file cannot be built.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vector_math.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512VNNI__)
#error "polyformers kernels need AVX-512 (F, BW, VL, VNNI)"
#endif

namespace {

constexpr int64_t kTile = 8;  // input rows per pass over the weights

// How the float kernels prefetch, as set_intel_prefetch said (polyformers.pt.kernels: true on Intel CPUs,
// whose second-level streamer stops at every 4 KiB boundary, huge pages or not, and whose last level keeps
// no line prefetched non-temporally). Each choice was measured where it is taken:
// - false (the AMD EPYC): the one-row pass relies on the hardware prefetchers (an 826 MB matrix at 56 GB/s,
//   the machine's sum at 66); the float32 pass of 2-8 rows prefetches the next block non-temporally (a
//   batch of 8 decodes 1.18x as fast as through oneDNN).
// - true (a 2-core Xeon, 480 MB of L3): the one-row pass also prefetches eight steps ahead of its reads: 2 KiB
//   of float32 weights (reduced MPT float32 decoding 31.4 -> 34.3-35.1 tokens/s; 1 KiB ahead 33.2, 4 KiB
//   29.2-30.4, non-temporally 14; measured again later, processes alternating, 1 KiB 31.7-32.0 against 2 KiB's
//   32.9-33.8), 1 KiB of bfloat16 ones (the reduced MPT in bfloat16, 128 tokens, 2.15-2.17 s 2 KiB ahead,
//   2.04-2.05 s 1 KiB ahead; Pegasus in float32 within 1% either way).
//   and the float32 pass of 2-8 rows prefetches the block three passes ahead into the second level (the
//   products of a reduced MPT's 49 matrices, 810 MB, with 8 rows: non-temporally 97 ms, the next pass into
//   every level 43-52, three passes ahead into the second level 36-44, median 38; with 4 rows 41 -> 34-35).
//   Three passes, but no more than 48 KiB ahead where the rows are long: a pass of three rows of 8192 float32
//   weights is 96 KiB, and three of them ahead ran past what the second level holds for the pass. A 707M MPT's
//   matrices (2048 and 8192 columns), 1.2 GB of them with 8 rows: 19.0-19.8 GB/s three passes ahead, 22.5-23.5
//   no more than 48 KiB ahead (one or two passes); the reduced MPT's shapes 22.4-22.7 either way.
std::atomic<bool> intel_prefetch{false};
constexpr int kIntelPassesAhead = 3;
constexpr int64_t kIntelAheadBytes = 48 * 1024;

void set_intel_prefetch(bool on) { intel_prefetch.store(on, std::memory_order_relaxed); }

// Asks for the cache lines of `Bytes` bytes from `p` with `Hint` (_MM_HINT_T0: into every level, T1: the
// second, NTA: past the outer levels).
template <int Hint, int Bytes>
inline void prefetch_lines(const char* p) {
  for (int line = 0; line < Bytes; line += 64) _mm_prefetch(p + line, static_cast<_mm_hint>(Hint));
}

// A pass reads R rows of weights side by side, R short streams that the hardware prefetchers are slow to
// follow (a row of 1024 bfloat16 weights is 32 cache lines). The R rows of the next pass lie right after
// them: while a pass takes its k-th step, it asks for the k-th part of the next pass's block (the same
// number of bytes as the step reads), so that block is in the caches when the next pass starts.
template <int R, int StepBytes, int Hint>
inline void prefetch_next(const void* block_end, int64_t step) {
  prefetch_lines<Hint, R * StepBytes>(static_cast<const char*>(block_end) + step * R * StepBytes);
}

using polyformers::tail_mask;

// Output rows computed together by one pass of the float32 and bfloat16 kernels: enough independent sums to
// hide the FMA latency, few enough that M * R accumulators fit in the 32 vector registers beside the smaller
// of the two sets a step loads (M inputs and one weight vector, or R weight vectors and one input). Seven or
// eight inputs take three rows a pass (not two): each weight vector loaded then feeds eight FMAs, and each input
// vector, read again by every pass and from L2 where K = 4096, three. The bench's reduced MPT, 8 rows, its 49
// float32 matrices in huge pages: 40.3-42.0 -> 36.8-39.0 ms (a 2-core Xeon, medians of 5, three processes each).
template <int M> constexpr int rows_per_pass() { return M <= 3 ? 8 : M <= 6 ? 4 : 3; }

// ---- bfloat16 weights --------------------------------------------------------------------

struct F32 {
  using T = float;
  static constexpr int hint = _MM_HINT_NTA;
  static __m512 load(const T* p) { return polyformers::load16(p); }
  static __m512 load(const T* p, __mmask16 m) { return polyformers::load16(p, m); }
};

struct BF16 {
  using T = at::BFloat16;
  static constexpr int hint = _MM_HINT_T1;
  static __m512 load(const T* p) { return polyformers::load16(p); }
  static __m512 load(const T* p, __mmask16 m) { return polyformers::load16(p, m); }
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
  const int64_t pass_bytes = R * K * static_cast<int64_t>(sizeof(typename W::T));
  const typename W::T* ahead = wr + std::clamp<int64_t>(kIntelAheadBytes / pass_bytes, 1, kIntelPassesAhead) * R * K;
  const bool intel = intel_prefetch.load(std::memory_order_relaxed);
  for (; k + 16 <= K; k += 16) {
    if (W::hint == _MM_HINT_NTA && intel) {
      prefetch_next<R, 16 * sizeof(typename W::T), _MM_HINT_T1>(ahead, k / 16);
    } else {
      prefetch_next<R, 16 * sizeof(typename W::T), W::hint>(next, k / 16);
    }
    if constexpr (M <= R) {  // the M inputs held, one weight vector at a time
      __m512 xv[M];
      for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < R; ++r) {
        if (r < rows) {
          const __m512 wv = W::load(wr + r * K + k);
          for (int m = 0; m < M; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
        }
      }
    } else {  // the R weight vectors held, one input at a time
      __m512 wv[R];
      for (int r = 0; r < R; ++r) wv[r] = r < rows ? W::load(wr + r * K + k) : _mm512_setzero_ps();
      for (int m = 0; m < M; ++m) {
        const __m512 xv = _mm512_loadu_ps(x + m * K + k);
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
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

// One input row: each weight row read from start to end, one row after another, so that a pass reads a
// single contiguous stream, which the hardware prefetchers follow (R rows side by side are R streams, 30%
// slower); four sums per row hide the FMA latency. On Intel CPUs it also prefetches kStepsAhead steps (of 64
// weights) ahead of its reads (see intel_prefetch): 2 KiB of float32 weights, 1 KiB of bfloat16 ones.
constexpr int kStepsAhead = 8;

template <class W>
void row_pass(const float* x, int64_t K, const typename W::T* w, int64_t n, int64_t rows, float* y,
              const float* bias) {
  constexpr int step_bytes = 64 * sizeof(typename W::T);
  const bool ahead = intel_prefetch.load(std::memory_order_relaxed);
  for (int64_t r = 0; r < rows; ++r) {
    const typename W::T* wr = w + (n + r) * K;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      if (ahead) prefetch_lines<_MM_HINT_T0, step_bytes>(reinterpret_cast<const char*>(wr + k + kStepsAhead * 64));
      for (int j = 0; j < 4; ++j)
        acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * j), W::load(wr + k + 16 * j), acc[j]);
    }
    for (; k < K; k += 16) {
      const __mmask16 mask = k + 16 <= K ? __mmask16(0xFFFF) : tail_mask(K - k);
      acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + k), W::load(wr + k, mask), acc[0]);
    }
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    y[n + r] = _mm512_reduce_add_ps(sum) + (bias ? bias[n + r] : 0.0f);
  }
}

// ---- packed 4-bit weights -------------------------------------------------------------------------------
// Stored in panels of 16 output rows (the rows padded to a multiple of 16 with zero weights and scales),
// each one contiguous stream: for each block of 32 columns, four vectors of 64 bytes, vector v holding in
// lane i (row i of the panel) columns 8v..8v+3 of the row in its four bytes' low nibbles and 8v+4..8v+7 in
// their high ones. So one vpdpbusd multiplies a vector's low (or high) nibbles by four input values,
// broadcast, into the 16 rows' sums at once: no horizontal sums, and each input value is read once per
// panel and input row. The sums stay integers over a whole group (32 to 128 columns) and take the group's
// scale and offset once; scale_offset holds, per panel and group, the 16 rows' scales, then their offsets,
// in bfloat16. With x ~ s_x * u (u int8 per row) and w = (q - 8) * scale + offset:
//   sum_k x_k w_k = s_x * sum over groups g of [scale_g * sum_{k in g} u_k q_k
//                                               + (offset_g - 8 scale_g) * sum_{k in g} u_k],
// the last sum computed once per call and group (usums).

constexpr int64_t kPanelI4 = 16;
constexpr int64_t kBlockI4 = 32;  // columns of a block: four vectors, 256 bytes

// How far ahead of a pass's reads its prefetches go: enough to cover the memory's latency at its
// bandwidth. (Past a panel's end, they reach the next panel's first blocks.)
constexpr int kAhead = 4096;

// Where the prefetches put the weights, as set_keep_weights said last (polyformers.pt.kernels decides, from
// the bytes of packed weights alive against the last-level cache):
// - false (the default): non-temporal, for weights that do not fit in the last-level cache. Each weight is
//   read once a token; kept out of the outer caches, it leaves the step's key/value cache, activations and
//   code there for the operations between the products. Measured on the reduced MPT (a 2-core AMD EPYC):
//   a 4096 x 4096 matrix streams at 32-35 GB/s against 23-29 with prefetches into the second level, and a
//   whole 4-bit decoding step takes 0.7 ms (8%) less.
// - true: into every level, for weights that fit in it: a non-temporal prefetch is not kept in the last
//   level either, so every token read them from memory again. Measured on the reduced MPT (a 2-core Xeon
//   that sees 480 MB of L3): int8 58 -> 153 tokens/s, 4-bit 103 -> 249.
// On Intel CPUs (set_intel_prefetch) the kernels prefetch into every level whatever the flag says: there the
// non-temporal prefetches halve the rate even for weights that come from memory. Measured on the 2-core Xeon,
// one row by 768 MB of int8 4096 x 1024 matrices, far past its L3: 11.5 GB/s non-temporally, 21.0 into every
// level, 21.3 with no software prefetch at all; eight rows 11.5 against 20.4; the reduced MPT in int8 with
// the non-temporal prefetches forced, 49 tokens/s against 103.
std::atomic<bool> keep_weights{false};

void set_keep_weights(bool keep) { keep_weights.store(keep, std::memory_order_relaxed); }

// Whether the quantized kernels' prefetches now go into the caches (see above).
bool weights_into_caches() {
  return keep_weights.load(std::memory_order_relaxed) || intel_prefetch.load(std::memory_order_relaxed);
}

// The one-row int8 pass on Intel CPUs asks 2 KiB ahead instead. Measured on the 2-core Xeon (processes
// alternating), one row by int8 4096 x 1024 matrices: 768 MB of them (from memory) at 26.6-28.8 GB/s against
// 21.4-22.0 4 KiB ahead (1 KiB ahead 27.1-28.0), 128 MB (from the L3) at 30.0-31.6 against 21.9-22.5. Eight
// rows on the tile unit (23.3-24.5 GB/s) and the 4-bit passes (one row 22.4-25.4, eight 15.9-18.2) move
// within the noise between 1, 2 and 4 KiB, and keep 4 KiB.
constexpr int kAheadI8Row = 2048;

// (Bytes: what a pass reads of each step, so the prefetches keep pace with the reads.)
template <int Bytes>
inline void prefetch_ahead(const void* step, bool keep, int64_t ahead = kAhead) {
  const char* p = static_cast<const char*>(step) + ahead;
  if (keep) {
    prefetch_lines<_MM_HINT_T0, Bytes>(p);
  } else {
    prefetch_lines<_MM_HINT_NTA, Bytes>(p);
  }
}

template <int M>
void i4_panel(const int8_t* u, const float* usums, const float* x_scale, int64_t K, int64_t groups,
              const uint8_t* w, const at::BFloat16* so, int64_t n, float* y, int64_t N, const float* bias,
              bool keep) {
  // A independent integer sums per input row, taken in turn by the vectors, to keep enough chains of
  // vpdpbusd in flight for a few input rows
  constexpr int A = M <= 2 ? 4 : M <= 4 ? 2 : 1;
  const int64_t blocks = K / kBlockI4 / groups;  // per group
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512 minus8 = _mm512_set1_ps(-8.0f);
  __m512 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
  const uint8_t* block = w + (n / kPanelI4) * K * (kPanelI4 / 2);
  const at::BFloat16* pairs = so + (n / kPanelI4) * groups * 2 * kPanelI4;
  const int8_t* col = u;
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dot[M][A];
    for (int m = 0; m < M; ++m)
      for (int a = 0; a < A; ++a) dot[m][a] = _mm512_setzero_si512();
    for (int64_t b = 0; b < blocks; ++b, block += 256, col += kBlockI4) {
      prefetch_ahead<256>(block, keep);
      for (int v = 0; v < 4; ++v) {
        const __m512i raw = _mm512_loadu_si512(block + 64 * v);
        const __m512i low = _mm512_and_si512(raw, nibble);
        const __m512i high = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
        for (int m = 0; m < M; ++m) {
          // (two 4-byte reads, each broadcast straight from memory: one 8-byte read split in registers
          // went through the general registers, whose moves to vectors share a port with the products)
          int32_t first, second;
          std::memcpy(&first, col + m * K + 8 * v, 4);
          std::memcpy(&second, col + m * K + 8 * v + 4, 4);
          __m512i& d0 = dot[m][(2 * v) % A];
          __m512i& d1 = dot[m][(2 * v + 1) % A];
          d0 = _mm512_dpbusd_epi32(d0, low, _mm512_set1_epi32(first));
          d1 = _mm512_dpbusd_epi32(d1, high, _mm512_set1_epi32(second));
        }
      }
    }
    const __m512 scale = BF16::load(pairs + g * 2 * kPanelI4);
    const __m512 zero_point = _mm512_fmadd_ps(scale, minus8, BF16::load(pairs + g * 2 * kPanelI4 + kPanelI4));
    for (int m = 0; m < M; ++m) {
      __m512i d = dot[m][0];
      for (int a = 1; a < A; ++a) d = _mm512_add_epi32(d, dot[m][a]);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scale, acc[m]);
      acc[m] = _mm512_fmadd_ps(zero_point, _mm512_set1_ps(usums[m * groups + g]), acc[m]);
    }
  }
  const __mmask16 mask = n + kPanelI4 <= N ? __mmask16(0xFFFF) : tail_mask(N - n);
  const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n) : _mm512_setzero_ps();
  for (int m = 0; m < M; ++m)
    _mm512_mask_storeu_ps(y + m * N + n, mask, _mm512_fmadd_ps(_mm512_set1_ps(x_scale[m]), acc[m], b));
}

// ---- int8 weights -------------------------------------------------------------------------------------
// Stored in panels of 32 output rows (padded with zero rows), the columns padded with zero weights to a
// multiple of 16: within a panel, for each four neighbouring columns (a quad), the 32 rows' four weights,
// 128 bytes, then the next quad's. So one vector holds four weights of 16 rows, and vpdpbusd multiplies
// it by one input row's four values (broadcast) into 16 output rows' sums at once: no horizontal sums,
// and each input value is read once per panel and row. A panel is one contiguous stream.
// Each input row is rounded onto 0..255 over its own range, x ~ low + size * u, so that
//   sum_k x_k q_k = size * sum_k u_k q_k + low * sum_k q_k:
// the first sum is exact in int32 (unsigned u times signed q; at most 255 * 128 a column, so
// kMaxI8Features columns cannot overflow), the second is stored per weight row.

constexpr int64_t kPanelI8 = 32;
constexpr int64_t kMaxI8Features = 65536;  // polyformers.pt.kernels.MAX_INT8_FEATURES
constexpr int64_t kI8Step = 16;  // columns per unrolled step: four quads

// The panel's output rows n..n+31 for M input rows from their integer sums dot(m, half) (int32, rows
// n + 16 * half ..): y = scale * (size * dot + low * sum) + bias.
template <class Dot>
inline void i8_finish(int M, const Dot& dot, int64_t n, const float* low, const float* size, const float* scales,
                      const float* sums, const float* bias, float* y, int64_t N) {
  for (int half = 0; half < 2; ++half) {
    const int64_t first = n + 16 * half;
    if (first >= N) break;
    const __mmask16 mask = first + 16 <= N ? __mmask16(0xFFFF) : tail_mask(N - first);
    const __m512 scale = _mm512_maskz_loadu_ps(mask, scales + first);
    const __m512 sum = _mm512_maskz_loadu_ps(mask, sums + first);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + first) : _mm512_setzero_ps();
    for (int m = 0; m < M; ++m) {
      const __m512 inner = _mm512_fmadd_ps(_mm512_set1_ps(size[m]), _mm512_cvtepi32_ps(dot(m, half)),
                                           _mm512_mul_ps(_mm512_set1_ps(low[m]), sum));
      _mm512_mask_storeu_ps(y + m * N + first, mask, _mm512_fmadd_ps(scale, inner, b));
    }
  }
}

template <int M>
void i8_panel(const uint8_t* u, int64_t Kp, const int8_t* panel, int64_t n, const float* low,
              const float* size, const float* scales, const float* sums, const float* bias, float* y, int64_t N,
              bool keep) {
  // S sets of sums taken in turn by the quads, to keep enough independent chains for a few input rows
  constexpr int S = M <= 4 ? 2 : 1;
  __m512i acc[S][M][2];
  for (int s = 0; s < S; ++s)
    for (int m = 0; m < M; ++m) acc[s][m][0] = acc[s][m][1] = _mm512_setzero_si512();
  const int64_t ahead = M == 1 && intel_prefetch.load(std::memory_order_relaxed) ? kAheadI8Row : kAhead;
  for (int64_t k = 0; k < Kp; k += kI8Step) {
    const int8_t* step = panel + k * kPanelI8;  // 4 quads of 128 bytes
    prefetch_ahead<4 * 128>(step, keep, ahead);
    for (int quad = 0; quad < 4; ++quad) {
      const __m512i w0 = _mm512_loadu_si512(step + quad * 128);
      const __m512i w1 = _mm512_loadu_si512(step + quad * 128 + 64);
      __m512i (&a)[M][2] = acc[quad % S];
      for (int m = 0; m < M; ++m) {
        int32_t four;
        std::memcpy(&four, u + m * Kp + k + quad * 4, 4);
        const __m512i x = _mm512_set1_epi32(four);
        a[m][0] = _mm512_dpbusd_epi32(a[m][0], x, w0);
        a[m][1] = _mm512_dpbusd_epi32(a[m][1], x, w1);
      }
    }
  }
  i8_finish(M, [&](int m, int half) {
    if constexpr (S == 2) {
      return _mm512_add_epi32(acc[0][m][half], acc[1][m][half]);
    } else {
      return acc[0][m][half];
    }
  }, n, low, size, scales, sums, bias, y, N);
}

#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
// The same products with the CPU's tile unit (AMX, where -march=native has it and Linux grants its
// state): one tdpbusd multiplies up to 16 input rows of 64 rounded values by 64 columns of 16 output
// rows, exactly as 16 x 16 vpdpbusd do. The int8 layout is already what a tile of the second operand
// holds: 16 quads (64 columns) of 16 output rows are 16 rows of 64 bytes, 128 bytes apart; the second
// 16 rows of the panel start 64 bytes later. The integer sums are the VNNI kernel's, so the outputs are
// the same bits. Worth it for several input rows, where VNNI runs out of multiplies long before the
// weights run out of bandwidth (a batch of 8 decoding sequences).
constexpr int64_t kAmxRows = 16;  // input rows per pass: the rows of a tile

bool amx_granted() {
  static const bool granted = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // <asm/prctl.h>, the tile data
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
}

std::atomic<bool> amx_on{false};  // until set_int8_tiles(true) is granted

// Whether linear_i8 takes 2+ input rows through the tile unit: set_int8_tiles(on) asks, and the answer
// is false where the CPU or the kernel does not allow it.
bool set_int8_tiles(bool on) {
  const bool can = on && amx_granted();
  amx_on.store(can, std::memory_order_relaxed);
  return can;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes[16] = {};
  uint8_t rows[16] = {};
};

// Tiles: 0, 1 the sums of the panel's two halves (M x 16 int32); 2 the inputs (M x 64); 3, 4 the two
// halves' weights (16 x 64); 5-7 the same for the last columns when Kp is not a multiple of 64.
TileConfig tile_config(int M, int64_t Kp) {
  TileConfig c;
  const int tail = static_cast<int>(Kp % 64);
  for (int t : {0, 1, 2}) c.rows[t] = M, c.bytes[t] = 64;
  for (int t : {3, 4}) c.rows[t] = 16, c.bytes[t] = 64;
  if (tail) {
    c.rows[5] = M, c.bytes[5] = tail;
    c.rows[6] = c.rows[7] = tail / 4, c.bytes[6] = c.bytes[7] = 64;
  }
  return c;
}

void i8_panel_tiles(int M, const uint8_t* u, int64_t Kp, const int8_t* panel, int64_t n, const float* low,
                    const float* size, const float* scales, const float* sums, const float* bias, float* y,
                    int64_t N, bool keep) {
  _tile_zero(0);
  _tile_zero(1);
  int64_t k = 0;
  for (; k + 64 <= Kp; k += 64) {
    const int8_t* step = panel + k * kPanelI8;  // 16 quads of 128 bytes
    prefetch_ahead<16 * 128>(step, keep);
    _tile_loadd(2, u + k, Kp);
    _tile_loadd(3, step, 128);
    _tile_loadd(4, step + 64, 128);
    _tile_dpbusd(0, 2, 3);
    _tile_dpbusd(1, 2, 4);
  }
  if (k < Kp) {
    const int8_t* step = panel + k * kPanelI8;
    _tile_loadd(5, u + k, Kp);
    _tile_loadd(6, step, 128);
    _tile_loadd(7, step + 64, 128);
    _tile_dpbusd(0, 5, 6);
    _tile_dpbusd(1, 5, 7);
  }
  alignas(64) int32_t dots[2][kAmxRows][16];
  _tile_stored(0, dots[0], 64);
  _tile_stored(1, dots[1], 64);
  i8_finish(M, [&](int m, int half) { return _mm512_load_si512(dots[half][m]); }, n, low, size, scales, sums,
            bias, y, N);
}
#else
bool set_int8_tiles(bool) { return false; }
#endif

// ---- driver -------------------------------------------------------------------------------------------

// Calls tile(std::integral_constant<int, M>{}, m0) for each tile of M <= eight input rows, from row m0.
template <class Tile>
void over_tiles(int64_t Mtotal, const Tile& tile) {
  for (int64_t m0 = 0; m0 < Mtotal; m0 += kTile) {
    switch (std::min(kTile, Mtotal - m0)) {
      case 1: tile(std::integral_constant<int, 1>{}, m0); break;
      case 2: tile(std::integral_constant<int, 2>{}, m0); break;
      case 3: tile(std::integral_constant<int, 3>{}, m0); break;
      case 4: tile(std::integral_constant<int, 4>{}, m0); break;
      case 5: tile(std::integral_constant<int, 5>{}, m0); break;
      case 6: tile(std::integral_constant<int, 6>{}, m0); break;
      case 7: tile(std::integral_constant<int, 7>{}, m0); break;
      default: tile(std::integral_constant<int, 8>{}, m0); break;
    }
  }
}

// For each tile of input rows, calls pass.run<M, R>(m0, n, rows) for the passes over all N output rows
// (R at a time from n), split between torch's threads.
template <class Pass>
void over_rows(int64_t Mtotal, int64_t N, const Pass& pass) {
  over_tiles(Mtotal, [&](auto tag, int64_t m0) {
    constexpr int M = decltype(tag)::value;
    constexpr int R = Pass::template rows<M>();
    const int64_t passes = (N + R - 1) / R;
    at::parallel_for(0, passes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) pass.template run<M, R>(m0, p * R, std::min<int64_t>(R, N - p * R));
    });
  });
}

// One pass each: the arguments of a kernel, and run<M, R>(first input row, first output row, rows).
template <class W>
struct FloatPass {
  const float* x; const typename W::T* w; const float* b; float* y; int64_t N, K;
  template <int M> static constexpr int rows() { return rows_per_pass<M>(); }
  template <int M, int R> void run(int64_t m0, int64_t n, int64_t rows) const {
    if constexpr (M == 1) {
      row_pass<W>(x + m0 * K, K, w, n, rows, y + m0 * N, b);
    } else {
      float_pass<W, M, R>(x + m0 * K, K, w, n, rows, y + m0 * N, N, b);
    }
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
at::Tensor float_linear(const char* op, const at::Tensor& x_in, const at::Tensor& w,
                        const c10::optional<at::Tensor>& bias, at::ScalarType wtype) {
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

at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  return float_linear<F32>("linear_f32", x, w, bias, at::kFloat);
}

int64_t panels_i4(int64_t N) { return (N + kPanelI4 - 1) / kPanelI4; }
int64_t panels_i8(int64_t N) { return (N + kPanelI8 - 1) / kPanelI8; }

struct I4Pass {
  const int8_t* u; const float* usums; const float* xs; int64_t K, groups; const uint8_t* w;
  const at::BFloat16* so; const float* b; float* y; int64_t N; bool keep;
  template <int M> static constexpr int rows() { return kPanelI4; }
  template <int M, int R> void run(int64_t m0, int64_t n, int64_t) const {
    i4_panel<M>(u + m0 * K, usums + m0 * groups, xs + m0, K, groups, w, so, n, y + m0 * N, N, b, keep);
  }
};

// x rounded to 8 bits per row: u = round(x / s) with s = max|x| / 127; usums: the sums of u over each
// group of columns, as floats.
void round_rows(const float* x, int64_t M, int64_t K, int64_t groups, int8_t* u, float* usums, float* scales) {
  const int64_t group = K / groups;
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    __m512 top = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(row + k)));
    if (k < K) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(K - k), row + k)));
    const float amax = _mm512_reduce_max_ps(top);
    const float scale = amax > 0 ? amax / 127.0f : 1.0f;
    scales[m] = scale;
    const __m512 inv = _mm512_set1_ps(1.0f / scale);
    int8_t* out = u + m * K;
    for (int64_t g = 0; g < groups; ++g) {
      __m512i sum = _mm512_setzero_si512();
      for (k = g * group; k < (g + 1) * group; k += 16) {  // group: a multiple of 32
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), inv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_cvtepi32_epi8(q));
        sum = _mm512_add_epi32(sum, q);
      }
      usums[m * groups + g] = float(_mm512_reduce_add_epi32(sum));
    }
  }
}

at::Tensor linear_i4(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& so,
                     const c10::optional<at::Tensor>& bias, int64_t K, int64_t N) {
  const char* op = "linear_i4";
  TORCH_CHECK(K > 0 && N > 0, op, ": expected in_features and out_features > 0, given ", K, " and ", N);
  TORCH_CHECK(K % kBlockI4 == 0, op, ": expected in_features a multiple of ", kBlockI4, ", given ", K);
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() &&
                  w.sizes() == at::IntArrayRef({panels_i4(N), K / kBlockI4, 4, kPanelI4, 4}),
              op, ": weight: expected a contiguous uint8 tensor of shape (", panels_i4(N), ", ", K / kBlockI4,
              ", 4, 16, 4), given ", w.scalar_type(), " ", w.sizes());
  const int64_t groups = so.dim() == 4 ? so.size(1) : 0;
  TORCH_CHECK(so.scalar_type() == at::kBFloat16 && so.is_contiguous() && groups > 0 &&
                  so.sizes() == at::IntArrayRef({panels_i4(N), groups, 2, kPanelI4}) &&
                  K % (groups * kBlockI4) == 0,
              op, ": scale_offset: expected a contiguous bfloat16 tensor of shape (", panels_i4(N),
              ", groups, 2, 16), groups dividing ", K / kBlockI4, ", given ", so.scalar_type(), " ", so.sizes());
  check_input(op, x_in, K);
  check_bias(op, bias, N);
  const at::Tensor x = x_in.contiguous();
  const int64_t M = x.size(0);
  at::Tensor u = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor usums = at::empty({M, groups}, x.options());
  at::Tensor xs = at::empty({M}, x.options());
  round_rows(x.data_ptr<float>(), M, K, groups, u.data_ptr<int8_t>(), usums.data_ptr<float>(), xs.data_ptr<float>());
  at::Tensor y = at::empty({M, N}, x.options());
  const I4Pass pass{u.data_ptr<int8_t>(), usums.data_ptr<float>(), xs.data_ptr<float>(), K, groups,
                    w.data_ptr<uint8_t>(), so.data_ptr<at::BFloat16>(), bias ? bias->data_ptr<float>() : nullptr,
                    y.data_ptr<float>(), N, weights_into_caches()};
  over_rows(M, N, pass);
  return y;
}

// x rounded per row onto 0..255 over its range: u = round((x - low) / size), size = (max - min) / 255 (1 for
// a constant row, which low then holds exactly), low = min moved by under half a step to put zero on a level
// when the range holds zero; zero past K up to the padded width Kp.
void round_rows_unsigned(const float* x, int64_t M, int64_t K, int64_t Kp, uint8_t* u, float* lows, float* sizes) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512 v = _mm512_loadu_ps(row + k);
      lo = _mm512_min_ps(lo, v);
      hi = _mm512_max_ps(hi, v);
    }
    if (k < K) {
      const __mmask16 mask = tail_mask(K - k);
      lo = _mm512_mask_min_ps(lo, mask, lo, _mm512_maskz_loadu_ps(mask, row + k));
      hi = _mm512_mask_max_ps(hi, mask, hi, _mm512_maskz_loadu_ps(mask, row + k));
    }
    float low = _mm512_reduce_min_ps(lo);
    const float high = _mm512_reduce_max_ps(hi), span = high - low;
    const float size = span > 0 ? span / 255.0f : 1.0f;
    // Zero on the grid, as in fbgemm's rounding: many inputs are near zero (after GELU, or outlier columns
    // taken out), and rounding them all to one level off zero would add up, weight by weight, to a bias.
    if (low < 0 && high > 0) low = -std::nearbyint(-low / size) * size;
    lows[m] = low;
    sizes[m] = size;
    const __m512 base = _mm512_set1_ps(low), inv = _mm512_set1_ps(1.0f / size);
    const __m512i top = _mm512_set1_epi32(255);
    uint8_t* out = u + m * Kp;
    for (k = 0; k < Kp; k += 16) {
      const __mmask16 mask = k + 16 <= K ? __mmask16(0xFFFF) : k < K ? tail_mask(K - k) : __mmask16(0);
      const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + k), base), inv);
      const __m512i q = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(v), _mm512_setzero_si512()), top);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_maskz_cvtepi32_epi8(mask, q));
    }
  }
}

at::Tensor linear_i8(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& sums,
                     const c10::optional<at::Tensor>& bias, int64_t K, int64_t N) {
  const char* op = "linear_i8";
  const int64_t Kp = (K + kI8Step - 1) / kI8Step * kI8Step;
  TORCH_CHECK(K > 0 && N > 0 && K <= kMaxI8Features, op, ": expected in_features in 1..", kMaxI8Features,
              " and out_features > 0, given ", K, " and ", N);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() &&
                  w.sizes() == at::IntArrayRef({panels_i8(N), Kp / 4, kPanelI8, 4}),
              op, ": weight: expected a contiguous int8 tensor of shape (", panels_i8(N), ", ", Kp / 4,
              ", 32, 4), given ", w.scalar_type(), " ", w.sizes());
  auto check_rows = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 1 && t.size(0) == N,
                op, ": ", name, ": expected a contiguous float32 vector of ", N, ", given ", t.scalar_type(), " ",
                t.sizes());
  };
  check_rows("scales", scales);
  check_rows("sums", sums);
  check_input(op, x_in, K);
  check_bias(op, bias, N);
  const at::Tensor x = x_in.contiguous();
  const int64_t M = x.size(0);
  at::Tensor u = at::empty({M, Kp}, x.options().dtype(at::kByte));
  at::Tensor rounding = at::empty({2, M}, x.options());
  float* lows = rounding.data_ptr<float>();
  round_rows_unsigned(x.data_ptr<float>(), M, K, Kp, u.data_ptr<uint8_t>(), lows, lows + M);
  at::Tensor y = at::empty({M, N}, x.options());
  const uint8_t* up = u.data_ptr<uint8_t>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  const float* sump = sums.data_ptr<float>();
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const bool keep = weights_into_caches();
#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
  if (M > 1 && amx_on.load(std::memory_order_relaxed)) {
    // Rows m_begin..m_end in blocks of `rows`: each thread takes whole panels and multiplies every block by a
    // panel while the panel is in its caches (prefetched to stay there), so the weights stream once for all
    // the blocks. (Block after block over all panels streamed them once per 16 rows: a 256-row prompt, 16
    // times.) The last rows, fewer than 16, follow under their own tile shape.
    auto blocks = [&](int rows, int64_t m_begin, int64_t m_end) {
      const TileConfig config = tile_config(rows, Kp);
      const bool again = m_end - m_begin > rows;
      at::parallel_for(0, panels_i8(N), 1, [&](int64_t begin, int64_t end) {
        _tile_loadconfig(&config);
        for (int64_t p = begin; p < end; ++p)
          for (int64_t m0 = m_begin; m0 < m_end; m0 += rows)
            i8_panel_tiles(rows, up + m0 * Kp, Kp, wp + p * kPanelI8 * Kp, p * kPanelI8, lows + m0,
                           lows + M + m0, sp, sump, bp, yp + m0 * N, N, keep || again);
        _tile_release();
      });
    };
    const int64_t full = M / kAmxRows * kAmxRows;
    if (full > 0) blocks(static_cast<int>(kAmxRows), 0, full);
    if (full < M) blocks(static_cast<int>(M - full), full, M);
    return y;
  }
#endif
  // The same order without tiles: each panel, while cached, multiplies every tile of up to eight rows.
  const bool again = M > kTile;
  at::parallel_for(0, panels_i8(N), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      over_tiles(M, [&](auto tag, int64_t m0) {
        i8_panel<decltype(tag)::value>(up + m0 * Kp, Kp, wp + p * kPanelI8 * Kp, p * kPanelI8, lows + m0,
                                       lows + M + m0, sp, sump, bp, yp + m0 * N, N, keep || again);
      });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(polyformers, m) {
  m.def("linear_bf16(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_f32(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_i4(Tensor x, Tensor weight, Tensor scale_offset, Tensor? bias, int in_features, "
        "int out_features) -> Tensor");
  m.def("linear_i8(Tensor x, Tensor weight, Tensor scales, Tensor sums, Tensor? bias, int in_features, "
        "int out_features) -> Tensor");
  m.def("set_keep_weights(bool keep) -> ()", &set_keep_weights);
  m.def("set_intel_prefetch(bool on) -> ()", &set_intel_prefetch);
  m.def("weights_into_caches() -> bool", &weights_into_caches);
  m.def("set_int8_tiles(bool on) -> bool", &set_int8_tiles);
}

TORCH_LIBRARY_IMPL(polyformers, CPU, m) {
  m.impl("linear_bf16", &linear_bf16);
  m.impl("linear_f32", &linear_f32);
  m.impl("linear_i4", &linear_i4);
  m.impl("linear_i8", &linear_i8);
}

// Attention of one query per head over a key/value cache: a decoding step.
//
//   attend_one(query (B, H, 1, D), key (B, H, T, D), value (B, H, T, D), bias?, scale) -> (B, H, 1, D)
//       softmax(scale * q . k_t + bias_t) over t, times v; float32; the bias broadcasts to (B, H, 1, T)
//       as torch's scaled_dot_product_attention's attn_mask does, and the arguments may be strided views
//       (a slice of a preallocated cache, heads permuted out of a fused projection) as long as each
//       vector of D is contiguous. Key and value may instead both be bfloat16 (a 16-bit cache of a float32
//       model): widened exactly as read, they give the bits of float32 buffers holding the same values.
//   attend_one_storing(query, key, value, new_key (B, H, 1, D), new_value, slot, bias?, scale) -> the same
//       after writing new_key and new_value (float32) at `slot` of key and value (a cache's buffers, written in
//       place; into bfloat16 ones rounded to nearest even, as torch's conversion):
//       each head's thread writes its own, so the lines it then reads are in its cache. Storing a batch of 8
//       with torch's copy_ (128 cold 256-byte pieces, one thread) took 15-50 us a buffer on a 2-core Xeon.
//
// torch's fused CPU attention is built for long queries: for one query it allocates its block buffers and
// splits heads between threads on every call, which costs 15-60 us a layer of a decoding step where the
// arithmetic takes a few. Here each head is one pass over its keys (scores), a vectorised exponential,
// and one pass over its values, and heads are split between threads only when there is enough work to
// pay for waking them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

using polyformers::exp16;
using polyformers::tail_mask;

// Keys and values are float32, or bfloat16 (a 16-bit cache of a float32 model), widened exactly as they
// are read: the arithmetic is the float32 kernel's on the same values, so the same bits.
using at::BFloat16;
using polyformers::load16;

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
inline void store16(BFloat16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), polyformers::narrow_bf16(v));
}
inline void store16(BFloat16* p, __m512 v, __mmask16 m) { _mm256_mask_storeu_epi16(p, m, polyformers::narrow_bf16(v)); }

template <class T>
inline float dot(const float* a, const T* b, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), load16(b + d), acc);
  if (d < D) {
    const __mmask16 m = tail_mask(D - d);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + d), load16(b + d, m), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// out[0:D] += w * v[0:D]
template <class T>
inline void axpy(float w, const T* v, float* out, int64_t D) {
  const __m512 wv = _mm512_set1_ps(w);
  int64_t d = 0;
  for (; d + 16 <= D; d += 16)
    _mm512_storeu_ps(out + d, _mm512_fmadd_ps(wv, load16(v + d), _mm512_loadu_ps(out + d)));
  if (d < D) {
    const __mmask16 m = tail_mask(D - d);
    const __m512 sum = _mm512_fmadd_ps(wv, load16(v + d, m), _mm512_maskz_loadu_ps(m, out + d));
    _mm512_mask_storeu_ps(out + d, m, sum);
  }
}

struct Strides4 {
  int64_t b, h, t;  // the innermost (D) stride is 1
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// Sixteen vectors -> one vector of their sums, by halving: each step adds the halves of pairs of vectors
// (eight shuffles and adds, not sixteen horizontal sums). The sum of part[kSlot[i]] lands in lane i.
constexpr int kSlot[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};

inline __m512 sum16(const __m512 (&v)[16]) {
  __m512 w[8], z[4], u[2];
  for (int i = 0; i < 8; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
  for (int i = 0; i < 4; ++i)
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88), _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(z[i], z[i + 2], 0x44), _mm512_shuffle_ps(z[i], z[i + 2], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xDD));
}

// Softmax of scores[0:T] in place, unnormalised; returns 1 / their sum, or 0 where no key is seen.
inline float softmax_in_place(float* scores, int64_t T, float top) {
  if (top == -std::numeric_limits<float>::infinity()) return 0.0f;
  const __m512 shift = _mm512_set1_ps(top);
  __m512 total = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= T; t += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + t), shift));
    _mm512_storeu_ps(scores + t, e);
    total = _mm512_add_ps(total, e);
  }
  if (t < T) {
    const __mmask16 m = tail_mask(T - t);
    const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + t), shift)));
    _mm512_mask_storeu_ps(scores + t, m, e);
    total = _mm512_add_ps(total, e);
  }
  return 1.0f / _mm512_reduce_add_ps(total);
}

// One head: q (D), keys and values (T rows of D, `kt` values apart), bias (T, `bt` apart, or null).
template <class KV>
void one_head(const float* q, const KV* k, int64_t kt, const KV* v, int64_t vt, const float* bias, int64_t bt,
              int64_t T, int64_t D, float scale, float* scores, float* out) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    float s = scale * dot(q, k + t * kt, D);
    if (bias) s += bias[t * bt];
    scores[t] = s;
    top = std::max(top, s);
  }
  for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
  const float inv = softmax_in_place(scores, T, top);
  if (inv == 0.0f) return;  // no key is seen: zeros, as torch's kernel gives
  for (int64_t t = 0; t < T; ++t) axpy(scores[t] * inv, v + t * vt, out, D);
}

// Asks for `rows` rows of `Bytes` bytes each, `stride` elements apart from p, into the second-level cache.
template <int Bytes, class KV>
inline void prefetch_rows_l2(const KV* p, int64_t stride, int rows) {
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < Bytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + r * stride) + o, _MM_HINT_T1);
}

// The same for D = 16 * DV: the scores of 16 keys at a time (their products summed by sum16), and the
// output's DV vectors held in registers (two sets, for even and odd keys, to halve the chains of FMAs).
// With `next_k` and `next_v` (the next head's keys and values, bfloat16 only: see attend_all), each step
// asks for as many of the next head's rows as it reads of its own.
template <int DV, class KV>
void one_head_vectors(const float* q, const KV* k, int64_t kt, const KV* v, int64_t vt, const float* bias,
                      int64_t bt, int64_t T, float scale, float* scores, float* out, const KV* next_k = nullptr,
                      const KV* next_v = nullptr) {
  constexpr int kRowBytes = 16 * DV * sizeof(KV);
  __m512 qv[DV];
  for (int d = 0; d < DV; ++d) qv[d] = _mm512_loadu_ps(q + 16 * d);
  const __m512 sv = _mm512_set1_ps(scale);
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t t0 = 0; t0 < T; t0 += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, T - t0));
    if (next_k) prefetch_rows_l2<kRowBytes>(next_k + t0 * kt, kt, n);
    __m512 part[16];
    for (int t = 0; t < 16; ++t) {
      if (t < n) {
        const KV* kr = k + (t0 + t) * kt;
        __m512 acc = _mm512_mul_ps(qv[0], load16(kr));
        for (int d = 1; d < DV; ++d) acc = _mm512_fmadd_ps(qv[d], load16(kr + 16 * d), acc);
        part[kSlot[t]] = acc;
      } else {
        part[kSlot[t]] = _mm512_setzero_ps();
      }
    }
    const __mmask16 mask = n == 16 ? __mmask16(0xFFFF) : tail_mask(n);
    __m512 s = _mm512_mul_ps(sv, sum16(part));
    if (bias) {
      alignas(64) float b[16] = {};
      for (int t = 0; t < n; ++t) b[t] = bias[(t0 + t) * bt];
      s = _mm512_add_ps(s, _mm512_load_ps(b));
    }
    _mm512_mask_storeu_ps(scores + t0, mask, s);
    top = _mm512_mask_max_ps(top, mask, top, s);
  }
  const float inv = softmax_in_place(scores, T, _mm512_reduce_max_ps(top));
  if (inv == 0.0f) {  // no key is seen: zeros, as torch's kernel gives
    for (int d = 0; d < DV; ++d) _mm512_storeu_ps(out + 16 * d, _mm512_setzero_ps());
    return;
  }
  __m512 even[DV], odd[DV];
  for (int d = 0; d < DV; ++d) even[d] = odd[d] = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) {
    const __m512 p0 = _mm512_set1_ps(scores[t]), p1 = _mm512_set1_ps(scores[t + 1]);
    const KV* v0 = v + t * vt;
    const KV* v1 = v0 + vt;
    if (next_v) prefetch_rows_l2<kRowBytes>(next_v + t * vt, vt, 2);
    for (int d = 0; d < DV; ++d) {
      even[d] = _mm512_fmadd_ps(p0, load16(v0 + 16 * d), even[d]);
      odd[d] = _mm512_fmadd_ps(p1, load16(v1 + 16 * d), odd[d]);
    }
  }
  if (t < T) {
    const __m512 p0 = _mm512_set1_ps(scores[t]);
    for (int d = 0; d < DV; ++d) even[d] = _mm512_fmadd_ps(p0, load16(v + t * vt + 16 * d), even[d]);
  }
  const __m512 iv = _mm512_set1_ps(inv);
  for (int d = 0; d < DV; ++d) _mm512_storeu_ps(out + 16 * d, _mm512_mul_ps(_mm512_add_ps(even[d], odd[d]), iv));
}

// `cached`: keys or values, which may also be bfloat16.
void check_qkv(const char* caller, const char* name, const at::Tensor& t, int64_t B, int64_t H, int64_t T, int64_t D,
               bool cached = false) {
  const bool dtype = t.scalar_type() == at::kFloat || (cached && t.scalar_type() == at::kBFloat16);
  TORCH_CHECK(t.device().is_cpu() && dtype && t.dim() == 4, caller, ": ", name, ": expected a 4-D ",
              cached ? "float32 or bfloat16" : "float32", " CPU tensor, given ", t.scalar_type(), " of ", t.dim(),
              " dimensions");
  TORCH_CHECK(t.size(0) == B && t.size(1) == H && t.size(2) == T && t.size(3) == D, caller, ": ", name,
              ": expected shape (", B, ", ", H, ", ", T, ", ", D, "), given ", t.sizes());
}

// A step's new key and value (B, H, 1, D), each written at `slot` of its head's keys and values just before
// the head attends: by the thread that reads them next, while their lines are in its cache.
struct Store {
  const float *key, *value;
  Strides4 ks, vs;
  int64_t slot;
};

// Copies D floats into the cache's type (each D-vector of these tensors is contiguous).
template <class KV>
inline void copy_vector(const float* from, KV* to, int64_t D) {
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) store16(to + d, _mm512_loadu_ps(from + d));
  if (d < D) store16(to + d, _mm512_maskz_loadu_ps(tail_mask(D - d), from + d), tail_mask(D - d));
}

// Asks for `bytes` from p into the second-level cache.
inline void prefetch_l2(const void* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(static_cast<const char*>(p) + o, _MM_HINT_T1);
}

// Every head of (B, H) on torch's threads, with keys and values of type KV. Over bfloat16 ones, each head
// also asks for the next head's keys and values: bfloat16 strips, read cold, take their time in the
// latency of each new stream rather than in bandwidth (a batch of 8, 16 heads, 96 keys of 64: 48 us a layer
// from the caches, 224-235 us cold; with the next head asked for at the start of each, 191-193). Asked for
// step by step as the head reads its own (one_head_vectors), rather than all at its start: 215-226 ->
// 194-214 us, at 160 keys 346-351 -> 313-320 (a 2-core Xeon, the same process alternating). Float32 ones
// gain nothing from either (at its start: 293-302 against 301-302 us; at 160 keys, 451-461 against
// 446-448; step by step, 333-504 against 340-531).
template <class KV>
void attend_all(int64_t B, int64_t H, int64_t T, int64_t D, const float* qp, Strides4 qs, const KV* kp, Strides4 ks,
                const KV* vp, Strides4 vs, const float* bp, Strides4 bs, int64_t bias_t, float sc, const Store* store,
                float* op) {
  // Heads per task: at least ~64k multiply-adds, so that a step with a short cache stays on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, 2 * T * D));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(T + 16);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H;
      const float* qh = qp + b * qs.b + h * qs.h;
      const KV* kh = kp + b * ks.b + h * ks.h;
      const KV* vh = vp + b * vs.b + h * vs.h;
      const float* bh = bp ? bp + b * bs.b + h * bs.h : nullptr;
      const KV* next_k = nullptr;
      const KV* next_v = nullptr;
      if (std::is_same<KV, BFloat16>::value && i + 1 < end) {
        const int64_t bn = (i + 1) / H, hn = (i + 1) % H;
        next_k = kp + bn * ks.b + hn * ks.h;
        next_v = vp + bn * vs.b + hn * vs.h;
        if (D != 32 && D != 64 && D != 128) {  // one_head: all at the start
          prefetch_l2(next_k, T * ks.t * int64_t(sizeof(KV)));
          prefetch_l2(next_v, T * vs.t * int64_t(sizeof(KV)));
        }
      }
      if (store) {  // key and value are the caller's buffers here (checked contiguous along D, not copied)
        copy_vector(store->key + b * store->ks.b + h * store->ks.h, const_cast<KV*>(kh) + store->slot * ks.t, D);
        copy_vector(store->value + b * store->vs.b + h * store->vs.h, const_cast<KV*>(vh) + store->slot * vs.t, D);
      }
      switch (D) {
        case 32:
          one_head_vectors<2>(qh, kh, ks.t, vh, vs.t, bh, bias_t, T, sc, scores.data(), op + i * D, next_k, next_v);
          break;
        case 64:
          one_head_vectors<4>(qh, kh, ks.t, vh, vs.t, bh, bias_t, T, sc, scores.data(), op + i * D, next_k, next_v);
          break;
        case 128:
          one_head_vectors<8>(qh, kh, ks.t, vh, vs.t, bh, bias_t, T, sc, scores.data(), op + i * D, next_k, next_v);
          break;
        default: one_head(qh, kh, ks.t, vh, vs.t, bh, bias_t, T, D, sc, scores.data(), op + i * D);
      }
    }
  });
}

at::Tensor attend_heads(const char* caller, const at::Tensor& query_in, const at::Tensor& key_in,
                        const at::Tensor& value_in, const c10::optional<at::Tensor>& bias_in, double scale,
                        const Store* store) {
  TORCH_CHECK(query_in.dim() == 4 && query_in.size(2) == 1,
              caller, ": query: expected (batch, heads, 1, dim), given ", query_in.sizes());
  const int64_t B = query_in.size(0), H = query_in.size(1), D = query_in.size(3);
  TORCH_CHECK(key_in.dim() == 4, caller, ": key: expected (batch, heads, keys, dim), given ", key_in.sizes());
  const int64_t T = key_in.size(2);
  check_qkv(caller, "query", query_in, B, H, 1, D);
  check_qkv(caller, "key", key_in, B, H, T, D, true);
  check_qkv(caller, "value", value_in, B, H, T, D, true);
  TORCH_CHECK(value_in.scalar_type() == key_in.scalar_type(), caller, ": value: expected the key's dtype (",
              key_in.scalar_type(), "), given ", value_in.scalar_type());
  // Each D-vector must be contiguous; anything else is copied first.
  const at::Tensor query = query_in.stride(3) == 1 ? query_in : query_in.contiguous();
  const at::Tensor key = key_in.stride(3) == 1 ? key_in : key_in.contiguous();
  const at::Tensor value = value_in.stride(3) == 1 ? value_in : value_in.contiguous();
  at::Tensor bias;
  if (bias_in) {
    TORCH_CHECK(bias_in->scalar_type() == at::kFloat && bias_in->dim() <= 4,
                caller, ": bias: expected a float32 tensor of at most 4 dimensions, given ",
                bias_in->scalar_type(), " of ", bias_in->dim(), " dimensions");
    bias = bias_in->expand({B, H, 1, T});  // a broadcast dimension gets stride 0; raises if it cannot broadcast
  }
  at::Tensor out = at::empty({B, H, 1, D}, query.options());
  const Strides4 qs = strides_of(query), ks = strides_of(key), vs = strides_of(value);
  const Strides4 bs = bias.defined() ? strides_of(bias) : Strides4{0, 0, 0};
  const int64_t bias_t = bias.defined() ? bias.stride(3) : 0;
  const float* qp = query.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  if (key.scalar_type() == at::kBFloat16) {
    attend_all(B, H, T, D, qp, qs, key.data_ptr<BFloat16>(), ks, value.data_ptr<BFloat16>(), vs, bp, bs, bias_t, sc,
               store, op);
  } else {
    attend_all(B, H, T, D, qp, qs, key.data_ptr<float>(), ks, value.data_ptr<float>(), vs, bp, bs, bias_t, sc, store,
               op);
  }
  return out;
}

at::Tensor attend_one(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      const c10::optional<at::Tensor>& bias, double scale) {
  return attend_heads("attend_one", query, key, value, bias, scale, nullptr);
}

at::Tensor attend_one_storing(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                              const at::Tensor& new_key, const at::Tensor& new_value, int64_t slot,
                              const c10::optional<at::Tensor>& bias, double scale) {
  TORCH_CHECK(key.dim() == 4 && query.dim() == 4, "attend_one_storing: expected 4-D query and key, given ",
              query.sizes(), " and ", key.sizes());
  const int64_t B = query.size(0), H = query.size(1), T = key.size(2), D = query.size(3);
  TORCH_CHECK(slot >= 0 && slot < T, "attend_one_storing: slot: expected 0 <= slot < ", T, ", given ", slot);
  TORCH_CHECK(key.stride(3) == 1 && value.stride(3) == 1,
              "attend_one_storing: key and value: expected the cache's buffers, each D-vector contiguous; given "
              "strides ", key.strides(), " and ", value.strides());
  check_qkv("attend_one_storing", "new_key", new_key, B, H, 1, D);
  check_qkv("attend_one_storing", "new_value", new_value, B, H, 1, D);
  const at::Tensor nk = new_key.stride(3) == 1 ? new_key : new_key.contiguous();
  const at::Tensor nv = new_value.stride(3) == 1 ? new_value : new_value.contiguous();
  const Store store{nk.data_ptr<float>(), nv.data_ptr<float>(), strides_of(nk), strides_of(nv), slot};
  return attend_heads("attend_one_storing", query, key, value, bias, scale, &store);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(polyformers, m) {
  m.def("attend_one(Tensor query, Tensor key, Tensor value, Tensor? bias, float scale) -> Tensor");
  m.def(
      "attend_one_storing(Tensor query, Tensor(a!) key, Tensor(b!) value, Tensor new_key, Tensor new_value, "
      "int slot, Tensor? bias, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(polyformers, CPU, m) {
  m.impl("attend_one", &attend_one);
  m.impl("attend_one_storing", &attend_one_storing);
}

// Attention of one query per head over a key/value cache: a decoding step.
//
//   attend_one(query (B, H, 1, D), key (B, H, T, D), value (B, H, T, D), bias?, scale) -> (B, H, 1, D)
//       softmax(scale * q . k_t + bias_t) over t, times v; float32; the bias broadcasts to (B, H, 1, T)
//       as torch's scaled_dot_product_attention's attn_mask does, and the arguments may be strided views
//       (a slice of a preallocated cache, heads permuted out of a fused projection) as long as each
//       vector of D is contiguous.
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

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

using polyformers::exp16;
using polyformers::tail_mask;

inline float dot(const float* a, const float* b, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
  if (d < D) {
    const __mmask16 m = tail_mask(D - d);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + d), _mm512_maskz_loadu_ps(m, b + d), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// out[0:D] += w * v[0:D]
inline void axpy(float w, const float* v, float* out, int64_t D) {
  const __m512 wv = _mm512_set1_ps(w);
  int64_t d = 0;
  for (; d + 16 <= D; d += 16)
    _mm512_storeu_ps(out + d, _mm512_fmadd_ps(wv, _mm512_loadu_ps(v + d), _mm512_loadu_ps(out + d)));
  if (d < D) {
    const __mmask16 m = tail_mask(D - d);
    const __m512 sum = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, v + d), _mm512_maskz_loadu_ps(m, out + d));
    _mm512_mask_storeu_ps(out + d, m, sum);
  }
}

struct Strides4 {
  int64_t b, h, t;  // the innermost (D) stride is 1
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// One head: q (D), keys and values (T rows of D, `kt` floats apart), bias (T, `bt` apart, or null).
void one_head(const float* q, const float* k, int64_t kt, const float* v, int64_t vt, const float* bias, int64_t bt,
              int64_t T, int64_t D, float scale, float* scores, float* out) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    float s = scale * dot(q, k + t * kt, D);
    if (bias) s += bias[t * bt];
    scores[t] = s;
    top = std::max(top, s);
  }
  for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
  if (top == -std::numeric_limits<float>::infinity()) return;  // no key is seen: zeros, as torch's kernel gives
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
  const float inv = 1.0f / _mm512_reduce_add_ps(total);
  for (t = 0; t < T; ++t) axpy(scores[t] * inv, v + t * vt, out, D);
}

void check_qkv(const char* name, const at::Tensor& t, int64_t B, int64_t H, int64_t T, int64_t D) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 4, "attend_one: ", name,
              ": expected a 4-D float32 CPU tensor, given ", t.scalar_type(), " of ", t.dim(), " dimensions");
  TORCH_CHECK(t.size(0) == B && t.size(1) == H && t.size(2) == T && t.size(3) == D, "attend_one: ", name,
              ": expected shape (", B, ", ", H, ", ", T, ", ", D, "), given ", t.sizes());
}

at::Tensor attend_one(const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in,
                      const c10::optional<at::Tensor>& bias_in, double scale) {
  TORCH_CHECK(query_in.dim() == 4 && query_in.size(2) == 1,
              "attend_one: query: expected (batch, heads, 1, dim), given ", query_in.sizes());
  const int64_t B = query_in.size(0), H = query_in.size(1), D = query_in.size(3);
  TORCH_CHECK(key_in.dim() == 4, "attend_one: key: expected (batch, heads, keys, dim), given ", key_in.sizes());
  const int64_t T = key_in.size(2);
  check_qkv("query", query_in, B, H, 1, D);
  check_qkv("key", key_in, B, H, T, D);
  check_qkv("value", value_in, B, H, T, D);
  // Each D-vector must be contiguous; anything else is copied first.
  const at::Tensor query = query_in.stride(3) == 1 ? query_in : query_in.contiguous();
  const at::Tensor key = key_in.stride(3) == 1 ? key_in : key_in.contiguous();
  const at::Tensor value = value_in.stride(3) == 1 ? value_in : value_in.contiguous();
  at::Tensor bias;
  if (bias_in) {
    TORCH_CHECK(bias_in->scalar_type() == at::kFloat && bias_in->dim() <= 4,
                "attend_one: bias: expected a float32 tensor of at most 4 dimensions, given ",
                bias_in->scalar_type(), " of ", bias_in->dim(), " dimensions");
    bias = bias_in->expand({B, H, 1, T});  // a broadcast dimension gets stride 0; raises if it cannot broadcast
  }
  at::Tensor out = at::empty({B, H, 1, D}, query.options());
  const Strides4 qs = strides_of(query), ks = strides_of(key), vs = strides_of(value);
  const Strides4 bs = bias.defined() ? strides_of(bias) : Strides4{0, 0, 0};
  const int64_t bias_t = bias.defined() ? bias.stride(3) : 0;
  const float* qp = query.data_ptr<float>();
  const float* kp = key.data_ptr<float>();
  const float* vp = value.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // Heads per task: at least ~64k multiply-adds, so that a step with a short cache stays on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, 2 * T * D));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(T + 16);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H;
      one_head(qp + b * qs.b + h * qs.h, kp + b * ks.b + h * ks.h, ks.t, vp + b * vs.b + h * vs.h, vs.t,
               bp ? bp + b * bs.b + h * bs.h : nullptr, bias_t, T, D, static_cast<float>(scale), scores.data(),
               op + i * D);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(polyformers, m) {
  m.def("attend_one(Tensor query, Tensor key, Tensor value, Tensor? bias, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(polyformers, CPU, m) { m.impl("attend_one", &attend_one); }

// A decoding step through a decoder's whole block stack in one call: MPT's pre-norm ALiBi blocks, GPT-J's
// parallel rotary blocks and Pegasus' pre-norm decoder blocks with cross-attention.
//
//   alibi_blocks(hidden (B, 1, C), tensors, layout, keys, values, written, slot, bias, scale, eps, heads)
//   rotary_blocks(hidden (B, 1, C), tensors, layout, keys, values, written, slot, rotation, bias?, scale, eps,
//                 heads, rotary_dim, approximate)
//       -> the last block's output (B, 1, C)
//   cross_blocks(hidden (B, 1, C), tensors, layout, keys, values, cross_keys, cross_values, bias?, cross_bias?,
//                scale, eps, heads, activation)
//       -> [the last block's output (B, 1, C), then per block its keys and values with the step's appended]
//
// MPT's block, as MptBlock.forward computes it in Python for one new token per row:
//   a = layer_norm(x); q|k|v = Wqkv(a); the cache's keys and values at `slot` = k, v (and `written`);
//   x = out_proj(attention of q over the cache's first T slots, + bias) + x; x = down(gelu(up(layer_norm(x)))) + x
// GPT-J's, as GPTJBlock.forward does:
//   a = layer_norm(x); q|k|v = the stacked projection of a (or three); the first rotary_dim dimensions of
//   each head of q and k turned by `rotation` (pairs of neighbours as complex numbers); the cache written;
//   x = out_proj(attention over the cache's first T slots, + bias?) + fc_out(gelu(fc_in(a))) + x
// Pegasus' decoder block, as PegasusDecoderLayer.forward does with a tuple cache (keys and values grown by
// concatenation) and the encoder's keys and values projected once:
//   x = self.out_proj(attention of q over cat(keys, k), cat(values, v), + bias) + x, q|k|v from
//   self_attn_layer_norm(x); x = encoder_attn.out_proj(attention of q_proj(encoder_attn_layer_norm(x)) over the
//   cross keys and values, + cross_bias) + x; x = fc2(activation(fc1(final_layer_norm(x)))) + x
// with the same operators the Python path calls (this library's kernels and torch's layer norm, complex
// product and additions), in the same order, so the outputs are the same bits. What it saves is the
// interpreter between them: about 150 us a block in Python and module calls, which a 4-bit step of the
// reduced MPT pays twelve times on top of ~4 ms of weights.
//
// Per block, `tensors` holds the layer norms' weights and biases (two for GPT-J's one norm, four for MPT's
// two, six for Pegasus' three), then four entries per linear layer (MPT: Wqkv, out_proj, up, down; GPT-J: q,
// k, v, out_proj, fc_in, fc_out, where a stacked q|k|v stands in q's place and k and v are absent; Pegasus:
// q, k, v, out_proj of the self-attention, stacked likewise, then the cross-attention's q_proj and out_proj,
// fc1, fc2). `layout` holds three integers per linear layer: its kind, in and out features. Kinds and their
// entries (unused ones None):
//  -1 absent
//   0 float32: weight, -, -, bias                 -> linear_f32
//   1 bfloat16: weight, -, -, bias                -> linear_bf16
//   2 int8: packed weight, scales, row sums, bias -> linear_i8
//   3 4-bit: packed weight, scale-offsets, -, bias -> linear_i4
// (polyformers/pt/fused.py builds both lists and says which layers qualify.)

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

using Optional = std::optional<at::Tensor>;

enum Kind : int64_t { kAbsent = -1, kF32 = 0, kBF16 = 1, kI8 = 2, kI4 = 3 };

// The other kernels of this library, through the dispatcher (as torch.ops.polyformers calls them).
template <class Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

struct Kernels {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const Optional&)> f32, bf16;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&,
                                      int64_t, int64_t)> i4;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const Optional&, int64_t, int64_t)> i8;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, int64_t, const Optional&, double)> attend_storing;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, c10::string_view)> gelu;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&,
                                      double)> attend;
};

const Kernels& kernels() {
  static const Kernels k{
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const Optional&)>("polyformers::linear_f32"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const Optional&)>("polyformers::linear_bf16"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&, int64_t,
                        int64_t)>("polyformers::linear_i4"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&,
                        int64_t, int64_t)>("polyformers::linear_i8"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, int64_t, const Optional&, double)>("polyformers::attend_one_storing"),
      handle<at::Tensor(const at::Tensor&, c10::string_view)>("polyformers::gelu"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&, double)>(
          "polyformers::attend_one"),
  };
  return k;
}

// The product of `x` (rows, K) with linear layer `j` of the plan, as the layer's own forward computes it.
at::Tensor linear(const at::Tensor& x, const c10::List<Optional>& tensors, at::IntArrayRef layout, int64_t base,
                  int64_t j) {
  const Kernels& k = kernels();
  const int64_t kind = layout[3 * j], K = layout[3 * j + 1], N = layout[3 * j + 2];
  const Optional t0 = tensors[base + 4 * j], t1 = tensors[base + 4 * j + 1], t2 = tensors[base + 4 * j + 2];
  const Optional bias = tensors[base + 4 * j + 3];
  TORCH_CHECK(t0.has_value(), "blocks: linear layer ", j, " of a block has no weight");
  switch (kind) {
    case kF32:
      return k.f32.call(x, *t0, bias);
    case kBF16:
      return k.bf16.call(x.to(at::kBFloat16).to(at::kFloat), *t0, bias);  // (the inputs rounded, as Bf16Linear does)
    case kI8:
      TORCH_CHECK(t1.has_value() && t2.has_value(), "blocks: an int8 layer needs its scales and row sums");
      return k.i8.call(x, *t0, *t1, *t2, bias, K, N);
    case kI4:
      TORCH_CHECK(t1.has_value(), "blocks: a 4-bit layer needs its scale-offsets");
      return k.i4.call(x, *t0, *t1, bias, K, N);
    default:
      TORCH_CHECK(false, "blocks: layout: unknown kind of linear layer ", kind, " (expected 0 to 3)");
  }
}

at::Tensor norm(const at::Tensor& x, const c10::List<Optional>& tensors, int64_t i, double eps) {
  const Optional weight = tensors[i], bias = tensors[i + 1];
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

// The arguments every stack shares: one key and value buffer per block (and one written buffer, for a stack
// that keeps them), `per_block` tensors and `layout_per_block` layout entries per block, a float32 (B, 1, C)
// input, heads dividing C, a slot below T.
void check_stack(const char* op, const at::Tensor& hidden, const c10::List<Optional>& tensors, at::IntArrayRef layout,
                 at::TensorList keys, at::TensorList values, std::optional<at::TensorList> written, int64_t per_block,
                 int64_t layout_per_block, int64_t heads, int64_t slot, int64_t T) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(1) == 1 && hidden.scalar_type() == at::kFloat,
              op, ": hidden: expected a float32 tensor (batch, 1, features), given ", hidden.scalar_type(), " ",
              hidden.sizes());
  const int64_t blocks = static_cast<int64_t>(keys.size());
  const int64_t written_count = written ? static_cast<int64_t>(written->size()) : blocks;
  TORCH_CHECK(static_cast<int64_t>(values.size()) == blocks && written_count == blocks &&
                  static_cast<int64_t>(tensors.size()) == per_block * blocks &&
                  static_cast<int64_t>(layout.size()) == layout_per_block * blocks,
              op, ": expected per block one key, value", written ? " and written" : "", " buffer, ", per_block,
              " tensors and ", layout_per_block, " layout entries; given ", blocks, " keys, ", values.size(),
              " values, ", written_count, written ? " written, " : " blocks, ", tensors.size(), " tensors and ",
              layout.size(), " layout entries");
  const int64_t B = hidden.size(0), C = hidden.size(2);
  TORCH_CHECK(heads > 0 && C % heads == 0, op, ": heads: expected a divisor of ", C, ", given ", heads);
  TORCH_CHECK(slot >= 0 && slot < T, op, ": slot: expected 0 <= slot < the bias' width ", T, ", given ", slot);
  for (int64_t b = 0; b < blocks; ++b) {
    TORCH_CHECK(keys[b].dim() == 4 && keys[b].size(0) == B && keys[b].size(1) == heads && keys[b].size(2) >= T &&
                    keys[b].size(3) == C / heads && values[b].sizes() == keys[b].sizes(),
                op, ": block ", b, ": expected key and value buffers (", B, ", ", heads, ", >= ", T, ", ", C / heads,
                "), given ", keys[b].sizes(), " and ", values[b].sizes());
  }
}

// Store a step's keys and values (B, H, 1, D) at `slot` of block b's buffers; attend over the first T.
at::Tensor store_and_attend(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const at::Tensor& keys, const at::Tensor& values, const at::Tensor& written,
                            int64_t slot, int64_t T, const Optional& bias, double scale) {
  written.narrow(0, slot, 1).fill_(true);
  return kernels().attend_storing.call(query, keys.narrow(2, 0, T), values.narrow(2, 0, T), key, value, slot, bias,
                                       scale);
}

at::Tensor alibi_blocks(const at::Tensor& hidden, const c10::List<Optional>& tensors, at::IntArrayRef layout,
                        at::TensorList keys, at::TensorList values, at::TensorList written, int64_t slot,
                        const at::Tensor& bias, double scale, double eps, int64_t heads) {
  constexpr int64_t kPerBlock = 4 + 4 * 4, kLayoutPerBlock = 4 * 3;
  const int64_t T = bias.size(-1);
  check_stack("alibi_blocks", hidden, tensors, layout, keys, values, written, kPerBlock, kLayoutPerBlock, heads, slot,
              T);
  const int64_t B = hidden.size(0), C = hidden.size(2), D = C / heads;
  const Kernels& k = kernels();
  at::Tensor x = hidden.reshape({B, C});
  for (int64_t b = 0; b < static_cast<int64_t>(keys.size()); ++b) {
    const int64_t base = b * kPerBlock, linears = base + 4;
    const at::IntArrayRef lay = layout.slice(b * kLayoutPerBlock, kLayoutPerBlock);
    const at::Tensor qkv = linear(norm(x, tensors, base, eps), tensors, lay, linears, 0).view({B, 3, heads, 1, D});
    const at::Tensor context = store_and_attend(qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), keys[b],
                                                values[b], written[b], slot, T, bias, scale);
    x = at::add(linear(context.view({B, C}), tensors, lay, linears, 1), x);
    const at::Tensor up = linear(norm(x, tensors, base + 2, eps), tensors, lay, linears, 2);
    x = at::add(linear(k.gelu.call(up, "none"), tensors, lay, linears, 3), x);
  }
  return x.view({B, 1, C});
}

at::Tensor rotary_blocks(const at::Tensor& hidden, const c10::List<Optional>& tensors, at::IntArrayRef layout,
                         at::TensorList keys, at::TensorList values, at::TensorList written, int64_t slot,
                         const at::Tensor& rotation, const Optional& bias, double scale, double eps, int64_t heads,
                         int64_t rotary_dim, c10::string_view approximate) {
  const char* op = "rotary_blocks";
  constexpr int64_t kPerBlock = 2 + 6 * 4, kLayoutPerBlock = 6 * 3;
  const int64_t T = slot + 1;
  check_stack(op, hidden, tensors, layout, keys, values, written, kPerBlock, kLayoutPerBlock, heads, slot, T);
  const int64_t B = hidden.size(0), C = hidden.size(2), D = C / heads;
  TORCH_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= D && D % 2 == 0, op,
              ": rotary_dim: expected an even number up to the even head size ", D, ", given ", rotary_dim);
  TORCH_CHECK(rotation.scalar_type() == at::kComplexFloat && rotation.dim() == 3 && rotation.size(1) == 1 &&
                  rotation.size(2) == rotary_dim / 2,
              op, ": rotation: expected complex64 (batch or 1, 1, ", rotary_dim / 2, "), given ",
              rotation.scalar_type(), " ", rotation.sizes());
  TORCH_CHECK(!bias || bias->size(-1) == T, op, ": bias: expected ", T, " slots, given ", bias->sizes());
  const Kernels& k = kernels();
  const at::Tensor turn = rotation.unsqueeze(2).unsqueeze(3);  // (B, 1, 1, 1, R / 2): over q|k and heads
  at::Tensor x = hidden.reshape({B, C});
  for (int64_t b = 0; b < static_cast<int64_t>(keys.size()); ++b) {
    const int64_t base = b * kPerBlock, linears = base + 2;
    const at::IntArrayRef lay = layout.slice(b * kLayoutPerBlock, kLayoutPerBlock);
    const at::Tensor normed = norm(x, tensors, base, eps);
    at::Tensor qkv = lay[3] == kAbsent
                         ? linear(normed, tensors, lay, linears, 0)
                         : at::cat({linear(normed, tensors, lay, linears, 0), linear(normed, tensors, lay, linears, 1),
                                    linear(normed, tensors, lay, linears, 2)},
                                   -1);
    qkv = qkv.view({B, 1, 3, heads, D});
    at::view_as_complex(qkv.narrow(2, 0, 2).narrow(4, 0, rotary_dim).unflatten(-1, {rotary_dim / 2, 2})).mul_(turn);
    const at::Tensor permuted = qkv.permute({2, 0, 3, 1, 4});  // (3, B, H, 1, D)
    const at::Tensor context = store_and_attend(permuted[0], permuted[1], permuted[2], keys[b], values[b],
                                                written[b], slot, T, bias, scale);
    const at::Tensor attended = linear(context.view({B, C}), tensors, lay, linears, 3);
    const at::Tensor fed = linear(k.gelu.call(linear(normed, tensors, lay, linears, 4), approximate), tensors, lay,
                                  linears, 5);
    x = at::add(at::add(attended, fed), x);
  }
  return x.view({B, 1, C});
}

// q, k and v of a block as a stacked projection (linear 0, with 1 and 2 absent) or three layers give them,
// each (B, C).
std::array<at::Tensor, 3> projected(const at::Tensor& normed, const c10::List<Optional>& tensors, at::IntArrayRef lay,
                                    int64_t linears, int64_t C) {
  if (lay[3] == kAbsent) {
    const at::Tensor qkv = linear(normed, tensors, lay, linears, 0);
    return {qkv.narrow(1, 0, C), qkv.narrow(1, C, C), qkv.narrow(1, 2 * C, C)};
  }
  return {linear(normed, tensors, lay, linears, 0), linear(normed, tensors, lay, linears, 1),
          linear(normed, tensors, lay, linears, 2)};
}

std::vector<at::Tensor> cross_blocks(const at::Tensor& hidden, const c10::List<Optional>& tensors,
                                     at::IntArrayRef layout, at::TensorList keys, at::TensorList values,
                                     at::TensorList cross_keys, at::TensorList cross_values, const Optional& bias,
                                     const Optional& cross_bias, double scale, double eps, int64_t heads,
                                     c10::string_view activation) {
  const char* op = "cross_blocks";
  constexpr int64_t kPerBlock = 6 + 8 * 4, kLayoutPerBlock = 8 * 3;
  const int64_t blocks = static_cast<int64_t>(keys.size());
  TORCH_CHECK(blocks > 0 && static_cast<int64_t>(cross_keys.size()) == blocks &&
                  static_cast<int64_t>(cross_values.size()) == blocks,
              op, ": expected one cross key and value tensor per block (", blocks, "), given ", cross_keys.size(),
              " and ", cross_values.size());
  const int64_t T = keys[0].dim() == 4 ? keys[0].size(2) + 1 : 0;  // the keys seen: the cached ones and this step's
  TORCH_CHECK(T >= 2, op, ": keys: expected (batch, heads, cached positions >= 1, head size) per block, given ",
              keys[0].sizes());
  check_stack(op, hidden, tensors, layout, keys, values, std::nullopt, kPerBlock, kLayoutPerBlock, heads, 0, T - 1);
  const int64_t B = hidden.size(0), C = hidden.size(2), D = C / heads;
  for (int64_t b = 0; b < blocks; ++b) {
    TORCH_CHECK(keys[b].size(2) == T - 1 && keys[b].scalar_type() == at::kFloat &&
                    values[b].scalar_type() == at::kFloat,
                op, ": block ", b, ": expected float32 keys and values of ", T - 1,
                " positions, as block 0 has; given ", keys[b].scalar_type(), " ", keys[b].sizes());
    TORCH_CHECK(cross_keys[b].dim() == 4 && cross_keys[b].size(0) == B && cross_keys[b].size(1) == heads &&
                    cross_keys[b].size(3) == D && cross_values[b].sizes() == cross_keys[b].sizes(),
                op, ": block ", b, ": expected cross keys and values (", B, ", ", heads, ", source, ", D, "), given ",
                cross_keys[b].sizes(), " and ", cross_values[b].sizes());
  }
  TORCH_CHECK(activation == "none" || activation == "tanh" || activation == "relu", op,
              ": activation: expected \"none\" or \"tanh\" (GELU) or \"relu\", given \"", activation, "\"");
  const Kernels& k = kernels();
  const auto heads_of = [&](const at::Tensor& x) { return x.view({B, 1, heads, D}).transpose(1, 2); };  // (B, H, 1, D)
  const auto merged = [&](const at::Tensor& context) { return context.transpose(1, 2).reshape({B, C}); };
  std::vector<at::Tensor> out{at::Tensor()};
  at::Tensor x = hidden.reshape({B, C});
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t base = b * kPerBlock, linears = base + 6;
    const at::IntArrayRef lay = layout.slice(b * kLayoutPerBlock, kLayoutPerBlock);
    const auto qkv = projected(norm(x, tensors, base, eps), tensors, lay, linears, C);
    const at::Tensor key = at::cat({keys[b], heads_of(qkv[1])}, 2), value = at::cat({values[b], heads_of(qkv[2])}, 2);
    x = at::add(x, linear(merged(k.attend.call(heads_of(qkv[0]), key, value, bias, scale)), tensors, lay, linears, 3));
    const at::Tensor query = heads_of(linear(norm(x, tensors, base + 2, eps), tensors, lay, linears, 4));
    const at::Tensor context = k.attend.call(query, cross_keys[b], cross_values[b], cross_bias, scale);
    x = at::add(x, linear(merged(context), tensors, lay, linears, 5));
    const at::Tensor up = linear(norm(x, tensors, base + 4, eps), tensors, lay, linears, 6);
    x = at::add(x, linear(activation == "relu" ? at::relu(up) : k.gelu.call(up, activation), tensors, lay, linears, 7));
    out.push_back(key);
    out.push_back(value);
  }
  out[0] = x.view({B, 1, C});
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(polyformers, m) {
  m.def("alibi_blocks(Tensor hidden, Tensor?[] tensors, int[] layout, Tensor[] keys, Tensor[] values, "
        "Tensor[] written, int slot, Tensor bias, float scale, float eps, int heads) -> Tensor");
  m.def("rotary_blocks(Tensor hidden, Tensor?[] tensors, int[] layout, Tensor[] keys, Tensor[] values, "
        "Tensor[] written, int slot, Tensor rotation, Tensor? bias, float scale, float eps, int heads, "
        "int rotary_dim, str approximate) -> Tensor");
  m.def("cross_blocks(Tensor hidden, Tensor?[] tensors, int[] layout, Tensor[] keys, Tensor[] values, "
        "Tensor[] cross_keys, Tensor[] cross_values, Tensor? bias, Tensor? cross_bias, float scale, float eps, "
        "int heads, str activation) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(polyformers, CPU, m) {
  m.impl("alibi_blocks", &alibi_blocks);
  m.impl("rotary_blocks", &rotary_blocks);
  m.impl("cross_blocks", &cross_blocks);
}

// One decoding step through a stack of pre-norm ALiBi blocks (MPT's) in one call.
//
//   alibi_blocks(hidden (B, 1, C), tensors, layout, keys, values, written, slot, bias, scale, eps, heads)
//       -> the last block's output (B, 1, C)
//
// Each block computes, as MptBlock.forward does in Python for one new token per row:
//   a = layer_norm(x); q|k|v = Wqkv(a); the cache's keys and values at `slot` = k, v (and `written`);
//   x = out_proj(attention of q over the cache's first T slots, + bias) + x; x = down(gelu(up(layer_norm(x)))) + x
// with the same operators the Python path calls (this library's kernels and torch's layer norm), in the same
// order, so the outputs are the same bits. What it saves is the interpreter between them: about 150 us a
// block in Python and module calls, which a 4-bit step of the reduced MPT pays twelve times on top of ~4 ms
// of weights.
//
// `tensors` holds 20 entries a block: norm_1's weight and bias, norm_2's, then four linear layers (Wqkv,
// out_proj, up, down) of four entries each. `layout` holds three integers a linear layer: its kind, in and
// out features. Kinds and their entries (unused ones None):
//   0 float32: weight, -, -, bias                 -> linear_f32
//   1 bfloat16: weight, -, -, bias                -> torch's matrix-vector product (one row) or linear_bf16
//   2 int8: packed weight, scales, row sums, bias -> linear_i8
//   3 4-bit: packed weight, scale-offsets, -, bias -> linear_i4
// (polyformers/pt/fused.py builds both lists and says which layers qualify.)

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

namespace {

using Optional = std::optional<at::Tensor>;

constexpr int64_t kPerBlock = 20, kLayoutPerBlock = 12;
enum Kind : int64_t { kF32 = 0, kBF16 = 1, kI8 = 2, kI4 = 3 };

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
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&,
                                      double)> attend;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, c10::string_view)> gelu;
};

const Kernels& kernels() {
  static const Kernels k{
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const Optional&)>("polyformers::linear_f32"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const Optional&)>("polyformers::linear_bf16"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&, int64_t,
                        int64_t)>("polyformers::linear_i4"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&,
                        int64_t, int64_t)>("polyformers::linear_i8"),
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&, double)>(
          "polyformers::attend_one"),
      handle<at::Tensor(const at::Tensor&, c10::string_view)>("polyformers::gelu"),
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
  TORCH_CHECK(t0.has_value(), "alibi_blocks: linear layer ", j, " of a block has no weight");
  switch (kind) {
    case kF32:
      return k.f32.call(x, *t0, bias);
    case kBF16: {
      const at::Tensor rounded = x.to(at::kBFloat16);
      if (x.size(0) > 1) return k.bf16.call(rounded.to(at::kFloat), *t0, bias);
      // One row: torch's own matrix-vector kernel, with oneDNN off for the call (as Bf16Linear does).
      auto& context = at::globalContext();
      const bool onednn = context.userEnabledMkldnn();
      if (onednn) context.setUserEnabledMkldnn(false);
      at::Tensor y;
      try {
        y = at::linear(rounded, *t0);
      } catch (...) {
        if (onednn) context.setUserEnabledMkldnn(true);
        throw;
      }
      if (onednn) context.setUserEnabledMkldnn(true);
      y = y.to(at::kFloat);
      return bias ? y.add_(*bias) : y;
    }
    case kI8:
      TORCH_CHECK(t1.has_value() && t2.has_value(), "alibi_blocks: an int8 layer needs its scales and row sums");
      return k.i8.call(x, *t0, *t1, *t2, bias, K, N);
    case kI4:
      TORCH_CHECK(t1.has_value(), "alibi_blocks: a 4-bit layer needs its scale-offsets");
      return k.i4.call(x, *t0, *t1, bias, K, N);
    default:
      TORCH_CHECK(false, "alibi_blocks: layout: unknown kind of linear layer ", kind, " (expected 0 to 3)");
  }
}

at::Tensor norm(const at::Tensor& x, const c10::List<Optional>& tensors, int64_t i, double eps) {
  const Optional weight = tensors[i], bias = tensors[i + 1];
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

at::Tensor alibi_blocks(const at::Tensor& hidden, const c10::List<Optional>& tensors, at::IntArrayRef layout,
                        at::TensorList keys, at::TensorList values, at::TensorList written, int64_t slot,
                        const at::Tensor& bias, double scale, double eps, int64_t heads) {
  const char* op = "alibi_blocks";
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(1) == 1 && hidden.scalar_type() == at::kFloat,
              op, ": hidden: expected a float32 tensor (batch, 1, features), given ", hidden.scalar_type(), " ",
              hidden.sizes());
  const int64_t blocks = static_cast<int64_t>(keys.size());
  TORCH_CHECK(static_cast<int64_t>(values.size()) == blocks && static_cast<int64_t>(written.size()) == blocks &&
                  static_cast<int64_t>(tensors.size()) == kPerBlock * blocks &&
                  static_cast<int64_t>(layout.size()) == kLayoutPerBlock * blocks,
              op, ": expected per block one key, value and written buffer, ", kPerBlock, " tensors and ",
              kLayoutPerBlock, " layout entries; given ", blocks, " keys, ", values.size(), " values, ",
              written.size(), " written, ", tensors.size(), " tensors and ", layout.size(), " layout entries");
  const int64_t B = hidden.size(0), C = hidden.size(2);
  TORCH_CHECK(heads > 0 && C % heads == 0, op, ": heads: expected a divisor of ", C, ", given ", heads);
  const int64_t D = C / heads, T = bias.size(-1);
  TORCH_CHECK(slot >= 0 && slot < T, op, ": slot: expected 0 <= slot < the bias' width ", T, ", given ", slot);
  const Kernels& k = kernels();
  at::Tensor x = hidden.reshape({B, C});
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t base = b * kPerBlock;
    const at::IntArrayRef lay = layout.slice(b * kLayoutPerBlock, kLayoutPerBlock);
    TORCH_CHECK(keys[b].dim() == 4 && keys[b].size(0) == B && keys[b].size(1) == heads && keys[b].size(2) >= T &&
                    keys[b].size(3) == D && values[b].sizes() == keys[b].sizes(),
                op, ": block ", b, ": expected key and value buffers (", B, ", ", heads, ", >= ", T, ", ", D,
                "), given ", keys[b].sizes(), " and ", values[b].sizes());
    const at::Tensor qkv = linear(norm(x, tensors, base, eps), tensors, lay, base + 4, 0).view({B, 3, heads, 1, D});
    keys[b].narrow(2, slot, 1).copy_(qkv.select(1, 1));
    values[b].narrow(2, slot, 1).copy_(qkv.select(1, 2));
    written[b].narrow(0, slot, 1).fill_(true);
    const at::Tensor context = k.attend.call(qkv.select(1, 0), keys[b].narrow(2, 0, T), values[b].narrow(2, 0, T),
                                             bias, scale);
    x = at::add(linear(context.view({B, C}), tensors, lay, base + 4, 1), x);
    const at::Tensor up = linear(norm(x, tensors, base + 2, eps), tensors, lay, base + 4, 2);
    x = at::add(linear(k.gelu.call(up, "none"), tensors, lay, base + 4, 3), x);
  }
  return x.view({B, 1, C});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(polyformers, m) {
  m.def("alibi_blocks(Tensor hidden, Tensor?[] tensors, int[] layout, Tensor[] keys, Tensor[] values, "
        "Tensor[] written, int slot, Tensor bias, float scale, float eps, int heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(polyformers, CPU, m) { m.impl("alibi_blocks", &alibi_blocks); }

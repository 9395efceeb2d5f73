"""An encoder in two precisions: int8 for most of its work, bfloat16 where int8 would move the answers.

Measured on all-mpnet-base-v2 over the 1086 passages of Macbeth that the search embeds (mean-pooled
embeddings, cosine to float32's, polyformers' int8 kernel with outlier columns over
:data:`~polyformers.pt.quantize.OUTLIER_THRESHOLD` in float32):

- int8 in every linear layer: 0.9912 at worst, 2 passages under 0.995.
- Most of that error comes from the feed-forward output layers. Their 3072 inputs (GELU outputs, nearly
  all small, a few large) share one 8-bit range per token. With those layers in bfloat16
  (:class:`~polyformers.pt.quantize.Bf16Linear`) and the rest in int8, passages of more than 10 tokens
  keep 0.9987 at worst (mean 0.99953 over all), at int8's speed.
- Shorter passages (stage directions such as "[Exit. Knocking within.]") still fall to 0.9946: a mean over
  a few tokens averages no rounding away. bfloat16 weights throughout give them 0.9949 at worst, the
  same as for the whole play with bfloat16 alone, and all of that from one passage, "[Exit Hecate.]",
  and one layer kind: the feed-forward input layers, whose outputs (before GELU) bfloat16's matmul rounds
  to 8 bits (torch's CPU matmul has no float32 output for bfloat16 operands). With those layers in
  float32 and the rest in bfloat16, every short passage keeps 0.9999, and the whole play 0.99875 at worst,
  for 2% more time (18.9 against 18.5 s for the play on a 2-core Xeon).

:func:`int8_with_bf16` builds that model: batches holding a row of at most ``short_tokens`` tokens run
with bfloat16 weights in every linear layer but the feed-forward input ones (float32), the others with the
mixed layers above. Both share every other tensor (embeddings, norms, the bfloat16 feed-forward output
layers), so the second copy costs the bfloat16 weights of the attention layers and the float32 ones of the
feed-forward input layers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .quantize import OUTLIER_THRESHOLD, Bf16Linear, Int8Linear, replace_linears


def twin(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s tree of modules that shares its parameters and buffers: replacing a layer in
    one leaves the other as it was, and no weight is copied. The module's containers (of parameters,
    buffers, hooks) are copied too, so that a hook or a tensor set on one is not set on the other."""
    clone = copy.copy(model)
    for key, value in vars(model).items():
        if isinstance(value, (dict, list, set)):
            object.__setattr__(clone, key, copy.copy(value))  # around nn.Module's __setattr__
    clone._modules = {name: None if child is None else twin(child) for name, child in model._modules.items()}
    return clone


class ShortRowsSplit(nn.Module):
    """Runs a batch through ``short`` when one of its rows has at most ``short_tokens`` real tokens (by its
    ``attention_mask``), through ``long`` otherwise; both take the same arguments and share ``config``.

    Batches sorted by length (as the pipelines make them) split cleanly: only the batch that straddles the
    limit sends a few longer rows the short way."""

    def __init__(self, long: nn.Module, short: nn.Module, short_tokens: int):
        super().__init__()
        if isinstance(short_tokens, bool) or not isinstance(short_tokens, int) or short_tokens < 0:
            raise ValueError(f"ShortRowsSplit: short_tokens: expected an int >= 0, given {short_tokens!r}")
        self.long, self.short, self.short_tokens = long, short, short_tokens
        self.config = long.config

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        rows = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if rows is None:
            raise ValueError("ShortRowsSplit: expected input_ids or inputs_embeds, given neither")
        if rows.shape[0] and self.shortest(rows, attention_mask) <= self.short_tokens:
            return self.short(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self.long(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @staticmethod
    def shortest(rows: torch.Tensor, attention_mask) -> int:
        if attention_mask is None:
            return int(rows.shape[1])
        return int(attention_mask.sum(-1).min())

    def extra_repr(self) -> str:
        return f"short_tokens={self.short_tokens}"


def int8_with_bf16(model: nn.Module, short_tokens: int) -> ShortRowsSplit:
    """``model`` (a float32 encoder on the CPU) in the two precisions of the module docstring: int8 linear
    layers (outlier columns over :data:`~polyformers.pt.quantize.OUTLIER_THRESHOLD` in float32) but for the
    feed-forward output layers (``config.intermediate_size`` inputs), which are bfloat16, for batches whose
    rows all have more than ``short_tokens`` tokens; for the others, bfloat16 in every linear layer but the
    feed-forward input ones (``config.intermediate_size`` outputs), which stay float32.

    ``model``'s linear layers are replaced in place (its float32 weights are released but for the
    feed-forward input layers'); use the returned model, in eval mode, without gradients."""
    config = getattr(model, "config", None)
    widest = getattr(config, "intermediate_size", None)
    if not isinstance(widest, int):
        raise ValueError(f"int8_with_bf16: expected a model whose config has an int intermediate_size, "
                         f"given {type(model).__name__} with {widest!r}")
    # (the float32 layers of `short` keep the weights that `model`'s int8 layers no longer need)
    short = replace_linears(twin(model), "int8_with_bf16",
                            lambda linear: linear if linear.out_features == widest else Bf16Linear.from_linear(linear))
    bf16 = dict(short.named_modules())
    names = {id(module): name for name, module in model.named_modules()}

    def make(linear: nn.Linear) -> nn.Module:
        if linear.in_features == widest:
            return bf16[names[id(linear)]]  # the bfloat16 twin's layer, shared
        return Int8Linear.from_linear(linear, OUTLIER_THRESHOLD)

    return ShortRowsSplit(replace_linears(model, "int8_with_bf16", make), short, short_tokens).eval()

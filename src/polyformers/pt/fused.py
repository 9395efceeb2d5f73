"""A decoding step through a decoder's whole block stack in one compiled call (``kernels/blocks.cpp``).

A decoding step of one token multiplies one row by every weight matrix; once the weights stream at the
machine's rate, what is left is the interpreter between the products: module calls, views and a dozen
small operators per block, about 150 us a block here. The compiled step calls the same operators in the
same order (this library's linear, attention and GELU kernels, torch's layer norm), so its outputs are the
same bits as the blocks' ``forward``; it only runs where that holds. :func:`alibi_blocks` returns None,
and the model runs its blocks in Python, unless every one of these holds:

- inference: no gradients, the model in eval mode, float32 CPU states, one new token for at most
  ``kernels.MAX_ROWS`` rows, the kernels built;
- the cache is a :class:`~polyformers.pt.cache.StaticCache` with float32 buffers (``generate`` makes one
  when it owns the cache), written at one slot;
- no output of the blocks is asked for (attention weights, hidden states) and no hook is registered on a
  block or any module inside it, nor globally;
- every module of a block is one this module knows (MPT's block, attention, MLP, ``nn.LayerNorm``), every
  linear layer one of ``layers.Linear`` (float32 weights), ``Bf16Linear``, ``Int8Linear`` (polyformers'
  kernel, without outlier columns) or ``Int4Linear`` (polyformers' kernel), exactly those types.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _module

from . import kernels
from . import layers as L
from .cache import StaticCache

# The kinds of linear layer blocks.cpp multiplies (its layout's first integer).
F32, BF16, INT8, INT4 = 0, 1, 2, 3


def linear_parts(layer: nn.Module) -> Optional[tuple]:
    """``(kind, in_features, out_features, t0, t1, t2, bias)``: what blocks.cpp needs to multiply by
    ``layer`` as its own ``forward`` does for a few float32 rows, or None if it cannot."""
    from .quantize import Bf16Linear, Int4Linear, Int8Linear  # quantize imports this module's neighbours

    kind = type(layer)
    if kind is L.Linear:
        weight = layer.weight
        if weight.dtype != torch.float32 or weight.device.type != "cpu" or not weight.is_contiguous():
            return None
        parts = F32, weight, None, None, layer.bias
    elif kind is Bf16Linear:
        parts = BF16, layer.weight, None, None, layer.bias
    elif kind is Int8Linear:
        if layer._part is not None or layer.outlier_threshold is not None or layer._rows is None:
            return None
        parts = INT8, *layer._rows  # packed weight, scales, row sums, bias
    elif kind is Int4Linear:
        kernel = layer._kernel
        if kernel is None or kernel[0] != "rows":
            return None
        parts = INT4, kernel[1], kernel[2], None, layer.bias
    else:
        return None
    bias = parts[-1]
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        return None  # the layer's own forward would not take the kernel either
    return parts[0], layer.in_features, layer.out_features, *parts[1:]


class _Plan:
    """What blocks.cpp needs for a model's blocks, and what it was read from: ``checks`` holds
    ``(mapping, key, value)`` for every submodule, parameter and derived state read (``mapping[key] is
    value`` while the plan holds), ``modules`` every module of the blocks (for hooks and training mode);
    ``tensors`` is None where some block does not qualify."""

    __slots__ = ("checks", "modules", "count", "tensors", "layout", "eps", "scale")

    def holds(self, blocks) -> bool:
        return len(blocks) == self.count and all(mapping.get(key) is value for mapping, key, value in self.checks)


def _norm(norm: nn.Module, width: int) -> Optional[tuple]:
    if type(norm) is not nn.LayerNorm or norm.normalized_shape != (width,) or norm.weight is None:
        return None
    return norm.weight, norm.bias, norm.eps


def _alibi_plan(model) -> _Plan:
    plan = _Plan()
    plan.checks, plan.modules, plan.count = [(model._modules, "blocks", model.blocks)], [], len(model.blocks)
    plan.tensors = plan.layout = plan.eps = plan.scale = None
    tensors, layout, supported = [], [], True
    width = model.config.d_model
    for key, block in model.blocks._modules.items():
        plan.checks.append((model.blocks._modules, key, block))
        for module in block.modules():
            plan.modules.append(module)
            plan.checks += [(module._modules, k, v) for k, v in module._modules.items()]
            plan.checks += [(module._parameters, k, v) for k, v in module._parameters.items()]
            for derived in ("_rows", "_kernel", "_part", "outlier_threshold", "eps", "softmax_scale"):
                if derived in module.__dict__:
                    plan.checks.append((module.__dict__, derived, module.__dict__[derived]))
        if not supported:
            continue
        attn, ffn = block.attn, block.ffn
        if type(block).__name__ != "MptBlock" or type(attn).__name__ != "MptAttention" \
                or type(ffn).__name__ != "MptMLP":
            supported = False
            continue
        norms = _norm(block.norm_1, width), _norm(block.norm_2, width)
        linears = [linear_parts(layer) for layer in (attn.Wqkv, attn.out_proj, ffn.up_proj, ffn.down_proj)]
        if plan.eps is None and None not in norms:
            plan.eps, plan.scale = norms[0][2], attn.softmax_scale
        if None in norms or None in linears or {norms[0][2], norms[1][2]} != {plan.eps} \
                or attn.softmax_scale != plan.scale:
            supported = False
            continue
        for weight, norm_bias, _ in norms:
            tensors += (weight, norm_bias)
        for kind, in_features, out_features, *parts in linears:
            tensors += parts
            layout += (kind, in_features, out_features)
    if supported:
        plan.tensors, plan.layout = tensors, layout
    return plan


ENABLED = True
"""Whether models take the compiled step where it qualifies (tests switch it off to compare both paths)."""


def alibi_blocks(model, hidden: torch.Tensor, bias: torch.Tensor, inputs) -> Optional[torch.Tensor]:
    """MPT's blocks (``model.blocks``) on a decoding step's ``hidden`` (batch, 1, d_model) in one compiled
    call, as ``layers.run_blocks`` would compute them; None where the step does not qualify (see the
    module's docstring). ``bias`` is the step's ALiBi (and mask) bias, ``inputs`` its ``DecoderInputs``.

    What the blocks hold is read once and kept on the model (``_fused_plan``) while every submodule,
    parameter and packed weight it was read from stays the same object; hooks and training mode are
    looked for at every step."""
    cache = inputs.cache
    if (not ENABLED or hidden.shape[1] != 1 or hidden.dtype != torch.float32 or hidden.device.type != "cpu"
            or hidden.shape[0] > kernels.MAX_ROWS or model.training or torch.is_grad_enabled()
            or inputs.output_attentions or inputs.output_hidden_states or type(cache) is not StaticCache
            or not cache.key_cache or cache.dtype != torch.float32 or inputs.cache_position.numel() != 1
            or bias.dtype != torch.float32 or _module._global_forward_hooks or _module._global_forward_pre_hooks
            or not kernels.ready()):
        return None
    plan = model.__dict__.get("_fused_plan")
    if plan is None or not plan.holds(model.blocks):
        plan = model.__dict__["_fused_plan"] = _alibi_plan(model)
    if plan.tensors is None or any(m.training or m._forward_hooks or m._forward_pre_hooks for m in plan.modules):
        return None
    slot = int(inputs.cache_position)
    return kernels.ops().alibi_blocks(hidden, plan.tensors, plan.layout, cache.key_cache, cache.value_cache,
                                      cache._written, slot, bias, plan.scale, plan.eps, model.config.n_heads)

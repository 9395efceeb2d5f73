"""A decoding step through a decoder's whole block stack in one compiled call (``kernels/blocks.cpp``).

A decoding step of one token multiplies one row by every weight matrix; once the weights stream at the
machine's rate, what is left is the interpreter between the products: module calls, views and a dozen
small operators per block, about 150 us a block here. The compiled step calls the same operators in the
same order (this library's linear, attention and GELU kernels, torch's layer norm), so its outputs are the
same bits as the blocks' ``forward``; it only runs where that holds. :func:`alibi_blocks` (MPT) and
:func:`rotary_blocks` (GPT-J) return None, and the model runs its blocks in Python, unless every one of these
holds (:func:`cross_blocks`, Pegasus' decoder, reads its tuple cache instead: see there):

- inference: no gradients, the model in eval mode, float32 CPU states, one new token for at most
  ``kernels.MAX_ROWS`` rows, the kernels built;
- the cache is a :class:`~polyformers.pt.cache.StaticCache` with float32 buffers (``generate`` makes one
  when it owns the cache) or bfloat16 ones (a 16-bit cache the caller made), written at one slot;
- no output of the blocks is asked for (attention weights, hidden states) and no hook is registered on a
  block or any module inside it, nor globally;
- every module of a block is one this module knows (MPT's, GPT-J's and Pegasus' decoder blocks with their
  attention and MLP modules, ``nn.LayerNorm``; GELU, or ReLU in Pegasus), every
  linear layer one of ``layers.Linear`` (float32 weights), ``Bf16Linear``, ``Int8Linear`` (polyformers'
  kernel, without outlier columns) or ``Int4Linear`` (polyformers' kernel), exactly those types.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as _module

from . import kernels
from . import layers as L
from .cache import StaticCache

# The kinds of linear layer blocks.cpp multiplies (its layout's first integer).
ABSENT, F32, BF16, INT8, INT4 = -1, 0, 1, 2, 3


def _float32_parts(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[tuple]:
    """A float32 product's parts, where ``layers.linear`` takes the kernel for it."""
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2 or not weight.is_contiguous():
        return None
    return F32, weight.shape[1], weight.shape[0], weight, None, None, bias


def linear_parts(layer: nn.Module) -> Optional[tuple]:
    """``(kind, in_features, out_features, t0, t1, t2, bias)``: what blocks.cpp needs to multiply by
    ``layer`` as its own ``forward`` does for a few float32 rows, or None if it cannot."""
    from .quantize import Bf16Linear, Int4Linear, Int8Linear  # quantize imports this module's neighbours

    kind = type(layer)
    if kind is L.Linear:
        parts = _float32_parts(layer.weight, layer.bias)
    elif kind is Bf16Linear:
        parts = BF16, layer.in_features, layer.out_features, layer.weight, None, None, layer.bias
    elif kind is Int8Linear:
        if layer._part is not None or layer.outlier_threshold is not None or layer._rows is None:
            return None
        parts = INT8, layer.in_features, layer.out_features, *layer._rows  # packed weight, scales, row sums, bias
    elif kind is Int4Linear:
        kernel = layer._kernel
        if kernel is None or kernel[0] != "rows":
            return None
        parts = INT4, layer.in_features, layer.out_features, kernel[1], kernel[2], None, layer.bias
    else:
        return None
    bias = None if parts is None else parts[-1]
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        return None  # the layer's own forward would not take the kernel either
    return parts


class _Plan:
    """What blocks.cpp needs for a model's blocks, and what it was read from: ``checks`` holds
    ``(mapping, key, value)`` for every submodule, parameter and derived state read (``mapping[key] is
    value`` while the plan holds), ``stacks`` a check per stacked projection read (``layers.stacked_linear``
    makes them; they hold while the layers' weights lie in them), ``modules`` every module of the blocks (for hooks
    and training mode). ``tensors`` is None where some block does not qualify; ``settings`` holds what
    every block shares (the norms' epsilon, the attention's scale, ...), None where they differ."""

    __slots__ = ("checks", "stacks", "modules", "count", "tensors", "layout", "settings")

    def holds(self, blocks) -> bool:
        return (len(blocks) == self.count and all(mapping.get(key) is value for mapping, key, value in self.checks)
                and all(check() for check in self.stacks))


_DERIVED = ("_rows", "_kernel", "_part", "_stacked", "_stack", "outlier_threshold", "eps", "softmax_scale", "act",
            "rotary_dim", "activation_fn", "scaling", "num_heads", "is_decoder")
"""Attributes (not submodules or parameters) the blocks' forward reads, watched for replacement."""


def _norm(norm: nn.Module, width: int) -> Optional[tuple]:
    if type(norm) is not nn.LayerNorm or norm.normalized_shape != (width,) or norm.weight is None:
        return None
    return norm.weight, norm.bias, norm.eps


def _plan(blocks: nn.ModuleList, owner: nn.Module, name: str, read_block) -> _Plan:
    """The plan of ``owner.<name>`` (``blocks``): ``read_block(block, plan)`` gives a block's
    ``(tensors, layout, settings)`` or None where it does not qualify."""
    plan = _Plan()
    plan.checks, plan.stacks, plan.modules, plan.count = [(owner._modules, name, blocks)], [], [], len(blocks)
    plan.tensors = plan.layout = plan.settings = None
    tensors, layout, settings, supported = [], [], None, True
    for key, block in blocks._modules.items():
        plan.checks.append((blocks._modules, key, block))
        for module in block.modules():
            plan.modules.append(module)
            plan.checks += [(module._modules, k, v) for k, v in module._modules.items()]
            plan.checks += [(module._parameters, k, v) for k, v in module._parameters.items()]
            plan.checks += [(module.__dict__, k, module.__dict__[k]) for k in _DERIVED if k in module.__dict__]
        read = read_block(block, plan) if supported else None
        if read is None or settings not in (None, read[2]):
            supported = False
            continue
        tensors += read[0]
        layout += read[1]
        settings = read[2]
    if supported:
        plan.tensors, plan.layout, plan.settings = tensors, layout, settings
    return plan


def _linears(layers) -> Optional[tuple[list, list]]:
    """The tensors and layout entries of ``layers`` (a layer, its parts from :func:`linear_parts`, or None
    for an absent one), or None if one does not qualify."""
    tensors, layout = [], []
    for layer in layers:
        parts = (ABSENT, 0, 0, None, None, None, None) if layer is None else \
            layer if isinstance(layer, tuple) else linear_parts(layer)
        if parts is None:
            return None
        tensors += parts[3:]
        layout += parts[:3]
    return tensors, layout


def _mpt_block(block, plan) -> Optional[tuple]:
    attn, ffn = block.attn, block.ffn
    if (type(block).__name__, type(attn).__name__, type(ffn).__name__) != ("MptBlock", "MptAttention", "MptMLP"):
        return None
    width = attn.n_heads * attn.head_dim
    norms = _norm(block.norm_1, width), _norm(block.norm_2, width)
    linears = _linears((attn.Wqkv, attn.out_proj, ffn.up_proj, ffn.down_proj))
    if None in norms or linears is None or norms[0][2] != norms[1][2]:
        return None
    return [*norms[0][:2], *norms[1][:2], *linears[0]], linears[1], (norms[0][2], attn.softmax_scale, attn.n_heads)


def _stacked_projection(layers, plan) -> Optional[list]:
    """q, k and v as ``layers.stacked_linear`` multiplies them: one stacked product (then k and v absent),
    or the three layers on their own; None where it would stack them first (the prompt's forward does)."""
    from .quantize import Bf16Linear, Int8Linear

    kind = type(layers[0])
    if any(type(layer) is not kind for layer in layers):
        return list(layers)
    if kind is L.Linear:
        stacked = layers[0].__dict__.get("_stacked")
        plan.checks.append((layers[0].__dict__, "_stacked", stacked))  # once made or made again: read it
        if stacked is None or not stacked.holds(layers):
            return None
        plan.stacks.append(lambda: stacked.holds(layers))
        return [_float32_parts(stacked.weight, stacked.bias), None, None]
    if kind is Bf16Linear:
        cached = layers[0].__dict__.get("_stack")
        plan.checks.append((layers[0].__dict__, "_stack", cached))
        if cached is None or cached[0] != Bf16Linear._where(layers):
            return None
        plan.stacks.append(lambda: cached[0] == Bf16Linear._where(layers))
        return [cached[1], None, None]
    if kind is Int8Linear:
        part, start = layers[0]._part, 0
        if part is None or not all(layer._part == (part[0], start, start := start + layer.out_features)
                                   for layer in layers) or start != part[0].out_features:
            return None
        plan.checks.append((part[0].__dict__, "_rows", part[0].__dict__.get("_rows")))
        return [part[0], None, None]
    if issubclass(kind, nn.Linear) or hasattr(kind, "stack"):
        return None
    return list(layers)


def _gptj_block(block, plan) -> Optional[tuple]:
    attn, mlp = block.attn, block.mlp
    if (type(block).__name__, type(attn).__name__, type(mlp).__name__) != ("GPTJBlock", "GPTJAttention", "GPTJMLP"):
        return None
    approximate = {L.gelu: "none", L._gelu_new: "tanh"}.get(mlp.act)
    norm = _norm(block.ln_1, attn.num_heads * attn.head_dim)
    projection = _stacked_projection((attn.q_proj, attn.k_proj, attn.v_proj), plan)
    if approximate is None or norm is None or projection is None or attn.head_dim % 2:
        return None
    linears = _linears((*projection, attn.out_proj, mlp.fc_in, mlp.fc_out))
    if linears is None:
        return None
    settings = (norm[2], 1.0 / math.sqrt(attn.head_dim), attn.num_heads, attn.rotary_dim, approximate)
    return [*norm[:2], *linears[0]], linears[1], settings


def _pegasus_block(block, plan) -> Optional[tuple]:
    attn, cross = block.self_attn, block.encoder_attn
    if (type(block).__name__, type(attn).__name__, type(cross).__name__) != (
            "PegasusDecoderLayer", "PegasusAttention", "PegasusAttention"):
        return None
    activation = {L.gelu: "none", L._gelu_new: "tanh", F.relu: "relu"}.get(block.activation_fn)
    width = attn.embed_dim
    norms = [_norm(norm, width)
             for norm in (block.self_attn_layer_norm, block.encoder_attn_layer_norm, block.final_layer_norm)]
    projection = _stacked_projection((attn.q_proj, attn.k_proj, attn.v_proj), plan)
    if (activation is None or None in norms or projection is None or len({n[2] for n in norms}) != 1
            or (cross.embed_dim, cross.num_heads, cross.scaling) != (width, attn.num_heads, attn.scaling)):
        return None
    linears = _linears((*projection, attn.out_proj, cross.q_proj, cross.out_proj, block.fc1, block.fc2))
    if linears is None:
        return None
    tensors = [t for n in norms for t in n[:2]] + linears[0]
    return tensors, linears[1], (norms[0][2], attn.scaling, attn.num_heads, activation)


ENABLED = True
"""Whether models take the compiled step where it qualifies (tests switch it off to compare both paths)."""


def _step_plan(model, blocks, name: str, read_block, hidden, inputs) -> Optional[_Plan]:
    """The plan for this step, or None if the step does not qualify (see the module's docstring). It is
    read once and kept on the model (``_fused_plan``) while every submodule, parameter and packed weight
    it was read from stays the same object; hooks and training mode are looked for at every step."""
    cache = inputs.cache
    if (inputs.output_attentions or inputs.output_hidden_states or type(cache) is not StaticCache
            or not cache.key_cache or cache.dtype not in (torch.float32, torch.bfloat16)
            or inputs.cache_position.numel() != 1):
        return None
    return _held_plan(model, blocks, name, read_block, hidden)


def _held_plan(model, blocks, name: str, read_block, hidden) -> Optional[_Plan]:
    """:func:`_step_plan` apart from the cache and the outputs asked for."""
    if (not ENABLED or hidden.shape[1] != 1 or hidden.dtype != torch.float32 or hidden.device.type != "cpu"
            or hidden.shape[0] > kernels.MAX_ROWS or model.training or torch.is_grad_enabled()
            or _module._global_forward_hooks or _module._global_forward_pre_hooks or not kernels.ready()):
        return None
    plan = model.__dict__.get("_fused_plan")
    if plan is None or not plan.holds(blocks):
        plan = model.__dict__["_fused_plan"] = _plan(blocks, model, name, read_block)
    if plan.tensors is None or any(m.training or m._forward_hooks or m._forward_pre_hooks for m in plan.modules):
        return None
    return plan


def alibi_blocks(model, hidden: torch.Tensor, bias: torch.Tensor, inputs) -> Optional[torch.Tensor]:
    """MPT's blocks (``model.blocks``) on a decoding step's ``hidden`` (batch, 1, d_model) in one compiled
    call, as ``layers.run_blocks`` would compute them; None where the step does not qualify (see the
    module's docstring). ``bias`` is the step's ALiBi (and mask) bias, ``inputs`` its ``DecoderInputs``."""
    if bias.dtype != torch.float32:
        return None
    plan = _step_plan(model, model.blocks, "blocks", _mpt_block, hidden, inputs)
    if plan is None:
        return None
    cache = inputs.cache
    eps, scale, heads = plan.settings
    return kernels.ops().alibi_blocks(hidden, plan.tensors, plan.layout, cache.key_cache, cache.value_cache,
                                      cache._written, inputs.slots[0], bias, scale, eps, heads)


def rotary_blocks(model, hidden: torch.Tensor, rotation: torch.Tensor, mask, inputs) -> Optional[torch.Tensor]:
    """GPT-J's blocks (``model.h``) on a decoding step's ``hidden`` (batch, 1, n_embd) in one compiled call,
    as ``layers.run_blocks`` would compute them; None where the step does not qualify (see the module's
    docstring). ``rotation`` is the step's rotary table rows (batch or 1, 1, rotary_dim / 2), ``mask`` its
    ``layers.CausalMask``, ``inputs`` its ``DecoderInputs``."""
    if (mask.is_causal or (mask.bias is not None and mask.bias.dtype != torch.float32)
            or rotation.dtype != torch.complex64 or rotation.dim() != 3 or rotation.shape[1] != 1):
        return None
    plan = _step_plan(model, model.h, "h", _gptj_block, hidden, inputs)
    if plan is None:
        return None
    slot = inputs.slots[0]
    if mask.key_length != slot + 1:
        return None
    cache = inputs.cache
    eps, scale, heads, rotary_dim, approximate = plan.settings
    return kernels.ops().rotary_blocks(hidden, plan.tensors, plan.layout, cache.key_cache, cache.value_cache,
                                       cache._written, slot, rotation, mask.bias, scale, eps, heads, rotary_dim,
                                       approximate)


def _float32_states(tensors, shape) -> bool:
    return all(type(t) is torch.Tensor and t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 4
               and t.shape[:2] == shape[:2] and t.shape[3] == shape[3] and t.stride(3) == 1 for t in tensors)


def cross_blocks(decoder, hidden: torch.Tensor, bias, cross_bias, encoder_states: torch.Tensor,
                 past) -> Optional[tuple]:
    """Pegasus' decoder blocks (``decoder.layers``) on a decoding step's ``hidden`` (batch, 1, d_model) in one
    compiled call, as their ``forward`` computes them with the tuple cache ``past`` (per block: self keys,
    self values, cross keys, cross values, (batch, heads, positions, head size)); returns ``(hidden, the
    blocks' new cache)``, or None where the step does not qualify: besides what the module's docstring lists,
    the cache must hold float32 states of the encoder's length, the masks ``bias`` and ``cross_bias`` be
    float32 or None, and nothing but the last hidden state and the cache be asked for (the caller's part)."""
    if (not isinstance(past, (tuple, list)) or len(past) != len(decoder.layers)
            or any(not isinstance(entry, (tuple, list)) or len(entry) != 4 for entry in past)
            or any(m is not None and (m.dtype != torch.float32 or m.device.type != "cpu") for m in (bias, cross_bias))):
        return None
    plan = _held_plan(decoder, decoder.layers, "layers", _pegasus_block, hidden)
    if plan is None:
        return None
    eps, scale, heads, activation = plan.settings
    batch, width = hidden.shape[0], hidden.shape[2]
    shape = (batch, heads, None, width // heads)
    keys, values, cross_keys, cross_values = (list(part) for part in zip(*past))
    cached, source = keys[0].shape[2], encoder_states.shape[1]
    if (not _float32_states(keys + values + cross_keys + cross_values, shape) or cached < 1
            or any(t.shape[2] != cached for t in keys + values) or any(t.shape[2] != source for t in cross_keys)
            or any(v.shape != k.shape for k, v in zip(cross_keys, cross_values))):
        return None
    out = kernels.ops().cross_blocks(hidden, plan.tensors, plan.layout, keys, values, cross_keys, cross_values, bias,
                                     cross_bias, scale, eps, heads, activation)
    return out[0], tuple((out[1 + 2 * i], out[2 + 2 * i], cross_keys[i], cross_values[i]) for i in range(len(keys)))

"""PyTorch primitives shared by every family: activations, masks, attention, heads' losses and outputs,
input checks, and the cache handling and block loop of the decoders.

Family files compose these; anything family-specific (how positions enter attention, which norm goes
where) stays in the family file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._shared import output_flags, pick_activation  # noqa: F401 (output_flags: L.output_flags)
from ..outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput, SequenceClassifierOutputWithPast
from . import kernels
from .cache import Cache, as_cache, attended_length, prepare_generation_inputs

# ---------------------------------------------------------------------------------------------------
# Activations


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``F.gelu``, computed by polyformers' kernel (``kernels/pointwise.cpp``: a fraction of torch's fixed
    cost per call, which a decoding step pays in every layer, and four times the speed of its tanh form)
    for float32 CPU tensors that need no gradient, once the kernels are built (``kernels.ready``); within
    5e-7 of the exact function, as torch's are."""
    if (x.dtype == torch.float32 and x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled())
            and kernels.ready()):
        return kernels.ops().gelu(x, approximate)
    return F.gelu(x, approximate=approximate)


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation used by the original BERT/GPT-2 code ("gelu_new" in configs): the same
    # formula as torch's, whose single kernel saves the five passes over the tensor of spelling it out.
    return gelu(x, approximate="tanh")


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": _gelu_new,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


def get_activation(name) -> callable:
    """The activation function a config names (``hidden_act`` and friends); callables pass through."""
    return pick_activation(_ACTIVATIONS, name)


# ---------------------------------------------------------------------------------------------------
# Input validation: bad input gets an error naming the argument instead of an index error deep inside.


def check_ids(name: str, ids: Optional[torch.Tensor], limit: int, what: str) -> None:
    """Raise if any id in ``ids`` is outside ``[0, limit)``."""
    if ids is None or ids.numel() == 0:
        return
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    if ids.numel() <= 64:  # a decoding step's few ids: one copy out rather than two reductions
        values = ids.flatten().tolist()
        low, high = min(values), max(values)
    else:
        low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise IndexError(f"{name} holds id {bad}, outside [0, {limit}) (the {what})")


def check_mask_shape(name: str, mask: Optional[torch.Tensor], expected: tuple[int, ...]) -> None:
    """A 2-D padding mask must match (batch, key length); 3-D masks must end in (query, key)."""
    if mask is None:
        return
    if mask.dim() == 2 and tuple(mask.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(expected)} (batch, sequence)")
    if mask.dim() not in (2, 3, 4):
        raise ValueError(f"{name} must have 2, 3 or 4 dimensions, got shape {tuple(mask.shape)}")


def check_length(length: int, limit: int) -> None:
    if length > limit:
        raise ValueError(
            f"sequence length {length} (including any cached positions) exceeds max_position_embeddings={limit}"
        )


# ---------------------------------------------------------------------------------------------------
# Masks. Additive masks hold 0 where attention is allowed and the dtype's minimum where it is not, so
# adding them before softmax is exact in every dtype.


def additive_padding_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, key) or (batch, query, key) 1/0 mask -> broadcastable additive mask (batch, 1, q|1, key)."""
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]
    mask = mask.to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def additive_causal_mask(
    mask: torch.Tensor, query_length: int, dtype: torch.dtype
) -> torch.Tensor:
    """Causal mask over ``past + query`` keys combined with a (batch, key) padding mask."""
    key_length = mask.shape[-1]
    past = key_length - query_length
    q = torch.arange(query_length, device=mask.device)[:, None] + past
    k = torch.arange(key_length, device=mask.device)[None, :]
    allowed = (k <= q).to(dtype)[None, None, :, :] * mask[:, None, None, :].to(dtype)
    return (1.0 - allowed) * torch.finfo(dtype).min


def cached_causal_mask(
    attention_mask: Optional[torch.Tensor],
    cache_position: torch.Tensor,
    key_length: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive (batch | 1, 1, query, key) mask of a decoder reading a key/value cache.

    Query ``i`` sits at cache slot ``cache_position[i]`` and sees the slots up to its own that the
    (batch, slots) padding mask keeps. Slots beyond every query's own, such as the unwritten tail of a
    preallocated cache, are never seen; a padding mask shorter than ``key_length`` is extended with 0s.
    """
    device = cache_position.device
    slots = torch.arange(key_length, device=device)
    allowed = (slots[None, :] <= cache_position[:, None])[None, None]
    if attention_mask is not None:
        given = attention_mask.shape[-1]
        keep = attention_mask.to(device=device, dtype=torch.bool)
        if given < key_length:
            keep = F.pad(keep, (0, key_length - given), value=False)
        allowed = allowed & keep[:, None, None, :]
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def check_decoder_mask(attention_mask: Optional[torch.Tensor], batch: int, key_length: int, preallocated: bool):
    """A decoder's padding mask covers (batch, cached + new positions); with a preallocated cache it may
    stop at the last position in use instead of covering every slot."""
    if attention_mask is None:
        return
    shape = tuple(attention_mask.shape)
    given = shape[-1] if shape else 0
    wrong_length = given > key_length or (not preallocated and given != key_length)
    if attention_mask.dim() != 2 or shape[0] != batch or wrong_length:
        what = f"(batch, at most {key_length})" if preallocated else f"({batch}, {key_length})"
        raise ValueError(f"attention_mask must have shape {what} (batch, cached + new positions), got {shape}")


class CausalMask(NamedTuple):
    """How a decoder's self-attention reads its cache: the first ``key_length`` slots, masked by ``bias``
    (additive, or None) and, when ``is_causal``, by the fused kernel's own causal mask."""

    bias: Optional[torch.Tensor]
    is_causal: bool
    key_length: int


def decoder_self_attention_mask(
    attention_mask: Optional[torch.Tensor],
    cache_position: torch.Tensor,
    key_length: int,
    dtype: torch.dtype,
    explicit: bool = False,
    slots: Optional[list] = None,
) -> CausalMask:
    """A decoder's self-attention mask over ``key_length`` cache slots.

    Without padding among those slots no mask is built where none is needed: a single query that sees
    every slot (a decoding step) needs none, and a prompt filling the slots from the first needs only the
    fused kernel's own causal mask. Otherwise, or with ``explicit``, the mask of :func:`cached_causal_mask`.
    ``slots``: ``cache_position.tolist()`` if the caller has it (:class:`DecoderInputs` does).
    """
    if attention_mask is not None and attention_mask.shape[-1] > key_length:
        attention_mask = attention_mask[:, :key_length]
    padded = attention_mask is not None and (attention_mask.shape[-1] < key_length or not bool(attention_mask.all()))
    if not explicit and not padded:
        length = cache_position.shape[0]
        ends = slots if slots is not None else (cache_position if length <= 2 else cache_position[[0, -1]]).tolist()
        first, last = ends[0], ends[-1]
        if length == 1 and last + 1 >= key_length:
            return CausalMask(None, False, key_length)
        if first == 0 and last + 1 == length == key_length:
            return CausalMask(None, True, key_length)
    return CausalMask(cached_causal_mask(attention_mask, cache_position, key_length, dtype), False, key_length)


def expand_head_mask(head_mask: Optional[torch.Tensor], num_layers: int, dtype: torch.dtype):
    """``head_mask`` of shape (heads,) or (layers, heads) -> per-layer (1, heads, 1, 1) multipliers."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, :].expand(num_layers, -1)
    elif head_mask.dim() != 2:
        raise ValueError(f"head_mask must have shape (heads,) or (layers, heads), got {tuple(head_mask.shape)}")
    if head_mask.shape[0] != num_layers:
        raise ValueError(f"head_mask covers {head_mask.shape[0]} layers, the model has {num_layers}")
    return [m.to(dtype)[None, :, None, None] for m in head_mask]


# ---------------------------------------------------------------------------------------------------
# Positions


def position_ids_after_padding(input_ids: torch.Tensor, padding_idx: int, past_length: int = 0) -> torch.Tensor:
    """fairseq's position numbering (RoBERTa, MPNet): the non-padding tokens of a row are numbered
    ``padding_idx + 1 + past_length``, ``+ 2``, ... in order; padding tokens get ``padding_idx``, whose
    position embedding is the padding row, so left padding does not shift the real tokens' positions."""
    real = input_ids.ne(padding_idx).int()
    return ((torch.cumsum(real, dim=1).type_as(real) + past_length) * real).long() + padding_idx


class RotaryTable:
    """Rotary position embeddings (Su et al., 2021) as unit complex numbers: position ``p`` turns pair ``j``
    of a head's dimensions by the angle ``p * base ** (-2j / dim)``.

    The table is computed once, in float32 whatever the model's dtype (the angles of distant positions
    need the precision), and grows when a later position asks for it. Calling it with (batch, seq)
    positions gives the (batch, seq, dim // 2) complex64 rotations for :func:`rotate_pairs_`.
    """

    def __init__(self, dim: int, base: float = 10000.0, length: int = 0):
        self.dim, self.base = dim, base
        self.table = self._angles(length, torch.device("cpu"))

    def _angles(self, length: int, device) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        inv_freq = 1.0 / (self.base ** exponents)
        angles = torch.arange(length, dtype=torch.int64, device=device).float()[:, None] * inv_freq
        return torch.complex(torch.cos(angles), torch.sin(angles))

    def __call__(self, position_ids: torch.Tensor) -> torch.Tensor:
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 0
        if self.table.shape[0] < needed or self.table.device != position_ids.device:
            self.table = self._angles(max(needed, 2 * self.table.shape[0]), position_ids.device)
        return self.table[position_ids]


def rotate_pairs_(x: torch.Tensor, rotation: torch.Tensor) -> None:
    """Rotate ``x`` in place, pairing neighbouring dimensions (0, 1), (2, 3), ... as mesh-transformer-jax
    (GPT-J) does: pair ``j`` of the last dimension turns by ``rotation[..., j]`` (complex, broadcastable).

    In float32/64 a pair is a complex number and the rotation one complex product; half types rotate in
    their own precision with the cosines and sines cast to it.
    """
    pairs = x.unflatten(-1, (-1, 2))
    complex_view = (
        x.dtype in (torch.float32, torch.float64) and pairs.stride(-1) == 1 and pairs.storage_offset() % 2 == 0
        and all(step % 2 == 0 for step in pairs.stride()[:-1])
    )
    if complex_view:
        torch.view_as_complex(pairs).mul_(rotation)
        return
    cos, sin = rotation.real.to(x.dtype), rotation.imag.to(x.dtype)
    even, odd = pairs.unbind(-1)
    if torch.is_grad_enabled() and x.requires_grad:
        # autograd forbids writing into the views unbind returns; one copy into ``pairs`` is allowed
        pairs.copy_(torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1))
        return
    rotated_even = even * cos - odd * sin
    odd.mul_(cos).add_(even * sin)
    even.copy_(rotated_even)


def alibi_slopes(num_heads: int, bias_max: float = 8.0, device=None) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al., 2021), MPT's variant: for ``n`` heads rounded up to a power
    of two, ``2 ** (-bias_max * k / n)`` for k = 1..n; with fewer heads than that, the odd-numbered
    slopes come first, then the even ones, and the first ``num_heads`` are kept."""
    padded = 2 ** math.ceil(math.log2(num_heads))
    exponents = torch.arange(1, padded + 1, dtype=torch.int64, device=device).float() * (bias_max / padded)
    slopes = 1.0 / torch.pow(2, exponents)
    if padded != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes


def alibi_bias(slopes: torch.Tensor, cache_position: torch.Tensor, key_length: int) -> torch.Tensor:
    """ALiBi's additive (1, heads, query, key) bias: ``slope * (key slot - query slot)``, a penalty linear
    in the distance to each earlier key; softmax ignores a row's constant, so only distances matter."""
    slots = torch.arange(key_length, device=cache_position.device)
    distance = (slots[None, :] - cache_position[:, None]).float()
    return (slopes.to(distance.device)[:, None, None] * distance[None])[None]


def init_normal_weights(module: nn.Module, std: float) -> None:
    """GPT-style initialisation: normal(0, std) matrices and embeddings, zero biases and padding rows,
    unit norm scales."""
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            module.weight.data.fill_(1.0)
        if module.bias is not None:
            module.bias.data.zero_()


# ---------------------------------------------------------------------------------------------------
# Attention


def _has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear``; float32 inference on the CPU goes through oneDNN's matmul instead of torch's BLAS, and
    up to ``kernels.MAX_ROWS`` rows (decoding steps) through polyformers' kernel once it is built.

    MKL runs narrower vector code on CPUs it does not recognise (AMD's among them), where oneDNN is
    2-3x faster on prompts and batches, and on a single row (a decoding step, bound by memory) it
    streams the weights faster with several threads. For a few rows ``linear_f32`` (``kernels/rows.cpp``)
    reads each weight once for all of them, with non-temporal prefetches: on the reduced MPT a batch of 8
    decodes 1.18x as fast as through oneDNN (162 against 138 tokens/s), one sequence 1.02x. Neither has
    gradients: training keeps ``F.linear``.
    """
    if _float32_inference(x, weight, bias):
        if takes_row_kernel(x, weight, bias):
            width = x.shape[-1]
            out = kernels.ops().linear_f32(x.reshape(-1, width), weight, bias)
            return out.view(x.shape[:-1] + (weight.shape[0],))
        if torch.backends.mkldnn.enabled and _has_onednn_linear():
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _float32_inference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))))


def takes_row_kernel(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether :func:`linear` multiplies ``x`` by ``weight`` (and adds ``bias``) with polyformers' kernel for a
    few rows (``linear_f32``), which adds the bias to each sum as it writes it."""
    width = x.shape[-1] if x.dim() else 0
    return (_float32_inference(x, weight, bias) and 0 < x.numel() <= kernels.MAX_ROWS * width
            and weight.dim() == 2 and weight.shape[1] == width and weight.is_contiguous()
            and (bias is None or bias.dtype == torch.float32 and bias.is_contiguous()) and kernels.ready())


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def stacked_linear(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    """``torch.cat([layer(x) for layer in layers], dim=-1)``, for linear layers that read the same input,
    in one matmul.

    The first call without gradients moves the layers' weights (and biases) into one stacked buffer and
    makes each parameter a view of its rows: parameters keep their names, identities and values, and the
    stacked matrix costs no memory of its own. When a parameter no longer lies there (``model.to(...)``,
    a new weight assigned), the next call stacks again. With gradients, each layer runs on its own.
    Layers of another kind stack themselves if their class has ``stack(layers)`` (the int8 layers of
    ``quantize.py``), or run one by one.
    """
    kind = type(layers[0])
    if any(type(layer) is not kind for layer in layers):
        return torch.cat([layer(x) for layer in layers], dim=-1)
    if not issubclass(kind, nn.Linear):
        if hasattr(kind, "stack"):
            return kind.stack(layers)(x)
        return torch.cat([layer(x) for layer in layers], dim=-1)
    if torch.is_grad_enabled() and any(p.requires_grad for layer in layers for p in layer.parameters()):
        return torch.cat([layer(x) for layer in layers], dim=-1)
    stacked = layers[0].__dict__.get("_stacked")
    if stacked is None or not stacked.holds(layers):
        stacked = _Stacked(layers)
        layers[0].__dict__["_stacked"] = stacked
    return linear(x, stacked.weight, stacked.bias)


def _adjacent(tensors: list) -> torch.Tensor:
    """``torch.cat(tensors)``; without a copy when they already lie one after another in one storage (as
    ``from_pretrained`` loads the weights a module stacks: see ``PreTrainedModel._stacked_slices``)."""
    first = tensors[0]
    offset, rows = first.storage_offset(), 0
    for t in tensors:
        if (t.device != first.device or t.dtype != first.dtype or t.shape[1:] != first.shape[1:]
                or not t.is_contiguous() or t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                or t.storage_offset() != offset):
            return torch.cat(tensors)
        offset += t.numel()
        rows += t.shape[0]
    return first.detach().new_empty(0).set_(first.untyped_storage(), first.storage_offset(),
                                            (rows, *first.shape[1:]), first.stride())


class _Stacked:
    """One buffer holding the weights (and one the biases) of several linear layers, their parameters
    re-pointed into it."""

    def __init__(self, layers):
        with torch.inference_mode(False), torch.no_grad():  # the buffer must stay usable for training
            self.weight = _adjacent([layer.weight for layer in layers])
            with_bias = [layer.bias is not None for layer in layers]
            if any(with_bias) and not all(with_bias):
                raise ValueError("stacked_linear: expected every layer with a bias or none, given a mix")
            self.bias = _adjacent([layer.bias for layer in layers]) if all(with_bias) else None
        start = 0
        for layer in layers:
            end = start + layer.weight.shape[0]
            layer.weight.data = self.weight[start:end]
            if self.bias is not None:
                layer.bias.data = self.bias[start:end]
            start = end
        # Until the next call notices, replaced parameters leave this buffer alive; it holds no more
        # than the layers did.
        self.parts = self._where(layers)

    @staticmethod
    def _where(layers) -> list:
        return [(layer.weight.data_ptr(), None if layer.bias is None else layer.bias.data_ptr()) for layer in layers]

    def holds(self, layers) -> bool:
        return self._where(layers) == self.parts


def attention_head_size(hidden_size: int, num_heads: int) -> int:
    """The width of one attention head; ``hidden_size`` must split evenly between the heads."""
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_heads})")
    return hidden_size // num_heads


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, seq, heads * dim) -> (batch, heads, seq, dim)."""
    b, s, _ = x.shape
    return x.view(b, s, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, dim) -> (batch, seq, heads * dim)."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def _one_query(query, key, value, bias, dropout, is_causal) -> bool:
    """Whether ``attend`` takes polyformers' kernel for one query per head (a decoding step; see
    ``kernels/attention.cpp``): float32 on the CPU, without gradients or dropout, once the kernels are
    built (``kernels.ready``). ``is_causal`` is left to torch: with one query it means "sees the first key only"."""
    return (query.dim() == 4 and query.shape[2] == 1 and key.shape == value.shape and key.dim() == 4
            and query.shape[:2] == key.shape[:2] and query.shape[3] == key.shape[3]
            and query.dtype == torch.float32 and query.device.type == "cpu" and not dropout and not is_causal
            and not (torch.is_grad_enabled()
                     and any(t is not None and t.requires_grad for t in (query, key, value, bias)))
            and kernels.ready())


def _fused_gradient_wrong(query, key, value, bias) -> bool:
    """Whether the fused kernel's backward would be wrong: gradients are needed and some query sees no key.

    A query whose every key is masked (a padding position before the first token of a left-padded row, in
    a decoder) gets uniform weights in the forward, as in the reference, since its scores plus the dtype's
    minimum all round to that minimum. The fused kernels' backward recomputes the weights from the scores
    and the row's log-sum-exp, which round to the same value: every key gets weight 1 instead of 1/n, and
    the gradients through such a row are n times too large. The explicit path's softmax backward uses the
    weights of the forward, as the reference does. Inference keeps the fused kernel, whose forward is right.
    """
    if bias is None or not bias.is_floating_point() or not torch.is_grad_enabled():
        return False
    if not any(t.requires_grad for t in (query, key, value, bias)):
        return False
    return bool((bias <= torch.finfo(bias.dtype).min / 2).all(dim=-1).any())  # one reduction, in training only


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    dropout: float = 0.0,
    head_mask: Optional[torch.Tensor] = None,
    need_weights: bool = False,
    float32_scores: bool = False,
    is_causal: bool = False,
    masked_fill: bool = False,
):
    """Scaled dot-product attention over (batch, heads, seq, dim) tensors.

    ``bias`` is added to the scaled scores (padding/causal masks, relative positions, ALiBi). Uses the
    fused kernel unless the caller needs the probabilities or masks heads, which the fused kernel cannot
    return or apply; both paths compute the same function.
    ``float32_scores`` computes query-key products in float32 for half-precision inputs, whose products
    can overflow float16 (GPT-J's); the fused kernels accumulate in float32 anyway. ``is_causal`` (without
    ``bias``) lets query ``i`` see keys ``0..i``, as the fused kernel's flag does. ``masked_fill`` replaces
    the masked scores (``bias`` at the dtype's minimum) by the bias instead of adding it, so that they pass
    no gradient (MPT's reference); it differs from adding only for a query that sees no key at all.
    Keys and values of another dtype than the query (a bfloat16 cache of a float32 model: see
    ``cache.StaticCache``) are widened to the query's, exactly; the one-query kernel reads bfloat16 ones as
    they are.
    Returns ``(context, probabilities or None)``.
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    fused = not need_weights and head_mask is None and not _fused_gradient_wrong(query, key, value, bias)
    if bias is not None and fused and bias.dtype != query.dtype:
        bias = bias.to(query.dtype)
    one_query = fused and _one_query(query, key, value, bias, dropout, is_causal)
    if key.dtype != query.dtype and not (one_query and key.dtype == torch.bfloat16 == value.dtype):
        key, value = key.to(query.dtype), value.to(query.dtype)
    if fused:
        if one_query:
            return kernels.ops().attend_one(query, key, value, bias, scale), None
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=scale,
                                                 is_causal=is_causal)
        return context, None
    if is_causal:
        seen = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        bias = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(~seen, torch.finfo(query.dtype).min)
    if float32_scores:
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if bias is not None:
        if masked_fill:
            scores = torch.where(bias <= torch.finfo(bias.dtype).min / 2, bias.to(scores.dtype), scores + bias)
        else:
            scores = scores + bias
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    if head_mask is not None:
        probs = probs * head_mask
    return torch.matmul(probs, value), probs


# ---------------------------------------------------------------------------------------------------
# Heads and losses


class SequenceSummary(nn.Module):
    """Pools a sequence into one vector (first/last/mean token, optional projection and activation),
    configured by a config's ``summary_*`` fields."""

    def __init__(self, config):
        super().__init__()
        self.summary_type = getattr(config, "summary_type", "last")
        if self.summary_type not in ("first", "last", "mean"):
            raise ValueError(f"summary_type must be 'first', 'last' or 'mean', got {self.summary_type!r}")
        self.summary = nn.Identity()
        if getattr(config, "summary_use_proj", False):
            to_labels = getattr(config, "summary_proj_to_labels", False) and config.num_labels > 0
            self.summary = nn.Linear(config.hidden_size, config.num_labels if to_labels else config.hidden_size)
        name = getattr(config, "summary_activation", None)
        self.activation = get_activation(name) if name else (lambda x: x)
        first = getattr(config, "summary_first_dropout", 0) or 0
        last = getattr(config, "summary_last_dropout", 0) or 0
        self.first_dropout = nn.Dropout(first) if first > 0 else nn.Identity()
        self.last_dropout = nn.Dropout(last) if last > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.summary_type == "first":
            output = hidden_states[:, 0]
        elif self.summary_type == "last":
            output = hidden_states[:, -1]
        else:
            output = hidden_states.mean(dim=1)
        output = self.first_dropout(output)
        output = self.summary(output)
        output = self.activation(output)
        return self.last_dropout(output)


def keep_last_logits(hidden_states: torch.Tensor, logits_to_keep: Union[int, torch.Tensor]) -> torch.Tensor:
    """The positions whose logits are wanted: the last ``logits_to_keep`` (0 keeps all) or, given a 1-D
    tensor, those indices."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.dim() != 1:
            raise ValueError(f"logits_to_keep as a tensor must be 1-D indices, got shape {tuple(logits_to_keep.shape)}")
        return hidden_states[:, logits_to_keep.to(hidden_states.device), :]
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an int >= 0 or a 1-D index tensor, got {logits_to_keep!r}")
    if not logits_to_keep or logits_to_keep >= hidden_states.shape[1]:
        return hidden_states  # (a decoding step's one position: no slice to make)
    return hidden_states[:, -logits_to_keep:, :]


def last_token_logits(logits: torch.Tensor, input_ids: Optional[torch.Tensor], pad_token_id: Optional[int]):
    """One row of ``logits`` per sequence: at its rightmost non-padding token (left or right padding),
    or at the last position when padding cannot be told (no ``pad_token_id``, or ``inputs_embeds``)."""
    batch = logits.shape[0]
    if pad_token_id is None and batch != 1:
        raise ValueError(
            f"config.pad_token_id is None, so the last token of each row cannot be found in a batch of {batch}; "
            "set pad_token_id (or classify one sequence at a time)"
        )
    if pad_token_id is None or input_ids is None:
        last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
    else:
        real = (input_ids != pad_token_id).to(device=logits.device, dtype=torch.int32)
        index = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
        last = (index * real).argmax(-1)
    return logits[torch.arange(batch, device=logits.device), last]


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position whose label is not -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device))


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of position t's logits against the label at t+1 (labels are the inputs, unshifted).

    The labels shift (the last position gets -100, ignored), not the logits: slicing the logits would copy
    the whole (batch, seq, vocab) tensor forward and zero-fill one as large backward (9% of a GPT-J step).
    """
    return token_loss(logits, F.pad(labels, (0, 1), value=-100)[..., 1:])


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Regression, single-label or multi-label loss chosen by ``config.problem_type``.

    An unset problem type is inferred once and written back to the config, as the reference does, so that
    later calls and saved configs agree.
    """
    labels = labels.to(logits.device)
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze().float(), labels.squeeze().float())
        return F.mse_loss(logits.float(), labels.float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels).float(), labels.view(-1))
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.to(torch.float32))
    raise ValueError(
        "problem_type must be 'regression', 'single_label_classification' or 'multi_label_classification', "
        f"got {config.problem_type!r}"
    )


def span_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """Extractive QA loss: mean of start and end cross-entropies; positions outside the sequence are
    clamped to an ignored index, so answers cut off by truncation do not contribute."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start_positions = start_positions.clamp(0, ignored).to(start_logits.device)
    end_positions = end_positions.clamp(0, ignored).to(end_logits.device)
    start = F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored)
    end = F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored)
    return (start + end) / 2


def flatten_choices(inputs: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Multiple choice: (batch, num_choices, ...) -> (batch * num_choices, ...), so that the body scores
    every candidate as a sequence of its own."""
    return None if inputs is None else inputs.reshape(-1, *inputs.shape[2:])


def multiple_choice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the (batch, num_choices) scores against the index of the right choice."""
    return F.cross_entropy(logits.float(), labels.to(logits.device))


def classifier_dropout(config) -> float:
    """The dropout of a classification head: ``classifier_dropout``, or ``hidden_dropout_prob`` when unset."""
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class ClassificationHead(nn.Module):
    """Sentence-level head on the first token's final state: dropout, ``dense``, activation, dropout,
    ``out_proj`` (the attribute names are the checkpoints' keys)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, activation=torch.tanh):
        super().__init__()
        self.dense = Linear(hidden_size, hidden_size)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)
        self.out_proj = Linear(hidden_size, num_labels)

    def forward(self, features):
        x = self.dropout(features[:, 0, :])
        x = self.dropout(self.activation(self.dense(x)))
        return self.out_proj(x)


def head_body(model: nn.Module, body: nn.Module, num_labels: bool = True) -> None:
    """A task head model's first modules: ``num_labels`` from its config (unless ``num_labels=False``), then
    ``body`` under the model's ``base_model_prefix``, the checkpoint key of the body's weights."""
    if num_labels:
        model.num_labels = model.config.num_labels
    setattr(model, model.base_model_prefix, body)


def add_token_classifier(model: nn.Module, body: nn.Module, dropout: float) -> None:
    """The modules of a token-classification head, in the reference's order: :func:`head_body`, then
    ``dropout`` and the ``classifier`` projection from ``hidden_size`` to ``num_labels``."""
    head_body(model, body)
    model.dropout = nn.Dropout(dropout)
    model.classifier = Linear(model.config.hidden_size, model.config.num_labels)


def add_span_classifier(model: nn.Module, body: nn.Module) -> None:
    """The modules of an extractive question-answering head: :func:`head_body`, then ``qa_outputs``, the
    projection to start and end logits (``num_labels``, which must be 2)."""
    head_body(model, body)
    model.qa_outputs = Linear(model.config.hidden_size, model.config.num_labels)


def add_pooled_choice_classifier(model: nn.Module, body: nn.Module) -> None:
    """The modules of a multiple-choice head that scores each choice's pooled state: the body (with its
    pooler), then ``dropout`` (``hidden_dropout_prob``) and the one-score ``classifier``."""
    head_body(model, body, num_labels=False)
    model.dropout = nn.Dropout(model.config.hidden_dropout_prob)
    model.classifier = Linear(model.config.hidden_size, 1)


def add_last_token_classifier(model: nn.Module, body: nn.Module) -> None:
    """The modules of a decoder's sequence-classification head: :func:`head_body`, then ``score``, an
    unbiased projection to ``num_labels`` read at each row's last real token (:func:`last_token_logits`)."""
    head_body(model, body)
    model.score = nn.Linear(model.config.hidden_size, model.config.num_labels, bias=False)


def causal_lm_output(output_class: type, lm_head: nn.Module, body, logits_to_keep, labels,
                     return_dict: Optional[bool], config):
    """The output of a decoder's language-model head: ``lm_head`` on the states of the last ``logits_to_keep``
    positions (:func:`keep_last_logits`), and with ``labels`` the shifted :func:`causal_lm_loss`."""
    logits = lm_head(keep_last_logits(body.last_hidden_state, logits_to_keep))
    return labelled_output(output_class, logits, labels, body, return_dict, config, causal_lm_loss)


# ---------------------------------------------------------------------------------------------------
# Outputs


def pack_output(output, return_dict: bool):
    """A model's output as the caller asked for it: the ModelOutput, or with ``return_dict=False`` the
    tuple of its non-None fields."""
    return output if return_dict else output.to_tuple()


@functools.lru_cache(maxsize=None)
def _fields_from_body(output_class: type, body_class: type) -> tuple[str, ...]:
    body_fields = {f.name for f in dataclasses.fields(body_class)}
    return tuple(f.name for f in dataclasses.fields(output_class) if f.name in body_fields)


def head_output(output_class: type, body, return_dict: Optional[bool], config, /, **fields: Any):
    """The output of a head over its body: ``fields`` (loss, logits, ...) plus every field of the same
    name in the body's output (hidden states, attentions, cache, ...), packed as :func:`pack_output`
    does; ``return_dict=None`` takes ``config.use_return_dict``."""
    for name in _fields_from_body(output_class, type(body)):
        if name not in fields:
            fields[name] = getattr(body, name)
    return pack_output(output_class(**fields), config.use_return_dict if return_dict is None else return_dict)


def span_output(logits: torch.Tensor, start_positions, end_positions, body, return_dict: Optional[bool], config):
    """The output of an extractive QA head from its (batch, seq, 2) logits: start and end logits, the
    :func:`span_loss` when both positions are given, and the body's fields, as :func:`head_output`."""
    if logits.shape[-1] != 2:
        raise ValueError(f"question answering needs config.num_labels == 2 (start, end), got {logits.shape[-1]}")
    start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
    loss = None
    if start_positions is not None and end_positions is not None:
        loss = span_loss(start_logits, end_logits, start_positions, end_positions)
    return head_output(QuestionAnsweringModelOutput, body, return_dict, config, loss=loss, start_logits=start_logits,
                       end_logits=end_logits)


def labelled_output(output_class: type, logits: torch.Tensor, labels, body, return_dict: Optional[bool], config,
                    loss_fn=token_loss):
    """The output of a head with one ``logits`` field: with ``labels``, the loss ``loss_fn(logits, labels)``
    (by default the cross-entropy of :func:`token_loss`), and the body's fields, as :func:`head_output`."""
    loss = loss_fn(logits, labels) if labels is not None else None
    return head_output(output_class, body, return_dict, config, loss=loss, logits=logits)


def classifier_output(logits: torch.Tensor, labels, body, return_dict: Optional[bool], config,
                      output_class: type = SequenceClassifierOutput):
    """The output of a sequence classifier: with ``labels``, the loss ``config.problem_type`` chooses
    (:func:`sequence_classification_loss`), and the body's fields, as :func:`head_output`."""
    return labelled_output(output_class, logits, labels, body, return_dict, config,
                           lambda scores, targets: sequence_classification_loss(scores, targets, config))


def last_token_classifier_output(logits: torch.Tensor, input_ids, labels, body, return_dict: Optional[bool], config):
    """The output of a decoder's sequence classifier from its per-token ``logits``: each row's logits at its
    last real token (:func:`last_token_logits`), then as :func:`classifier_output` (cache included)."""
    logits = last_token_logits(logits, input_ids, config.pad_token_id)
    return classifier_output(logits, labels, body, return_dict, config, SequenceClassifierOutputWithPast)


# ---------------------------------------------------------------------------------------------------
# Decoder stacks (GPT-J, MPT): the inputs of a forward over a key/value cache, and the blocks' loop


class DecoderInputs(NamedTuple):
    """What a decoder's forward works from: the input embeddings, the cache (None without one; legacy
    when the caller gave tuples and expects tuples back), each query's cache slot, how many slots
    self-attention reads, the call's output flags, whether the blocks run under activation checkpointing,
    and for a decoding step its slots as Python ints."""

    inputs_embeds: torch.Tensor
    cache: Optional[Cache]
    legacy: bool
    cache_position: torch.Tensor
    key_length: int
    output_attentions: bool
    output_hidden_states: bool
    return_dict: bool
    checkpointing: bool
    slots: Optional[list] = None  # cache_position as Python ints, when it holds one or two


def decoder_inputs(
    model: nn.Module,
    embed: nn.Module,
    input_ids: Optional[torch.Tensor],
    inputs_embeds: Optional[torch.Tensor],
    past_key_values,
    attention_mask: Optional[torch.Tensor],
    cache_position: Optional[torch.Tensor],
    use_cache: Optional[bool],
    output_attentions: Optional[bool],
    output_hidden_states: Optional[bool],
    return_dict: Optional[bool],
) -> DecoderInputs:
    """Validate a decoder's inputs and place the new tokens after the cached ones.

    The flags left None take the config's values (:func:`output_flags`, ``config.use_cache``); training
    under activation checkpointing keeps no cache, since the recomputed blocks cannot hand back their keys
    and values. Exactly one of ``input_ids`` (looked up in ``embed``) and ``inputs_embeds``; the padding
    mask must cover the cached and new positions (see :func:`check_decoder_mask`). With
    ``output_attentions`` a preallocated cache is read in full, so that the weights are as wide as the
    reference's.
    """
    config = model.config
    output_attentions, output_hidden_states, return_dict = output_flags(
        config, output_attentions, output_hidden_states, return_dict
    )
    checkpointing = model.gradient_checkpointing and model.training
    use_cache = (config.use_cache if use_cache is None else use_cache) and not checkpointing
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        try:
            inputs_embeds = embed(input_ids)
        except (IndexError, RuntimeError):  # the lookup checks the ids; say which and why (a step saves a check)
            check_ids("input_ids", input_ids, config.vocab_size, f"vocab_size={config.vocab_size}")
            raise
    length = inputs_embeds.shape[1]
    cache, legacy = as_cache(past_key_values, use_cache)
    if cache_position is None:
        past = cache.get_seq_length() if cache is not None else 0
        cache_position = torch.arange(past, past + length, device=inputs_embeds.device)
    if cache_position.device != inputs_embeds.device:
        cache_position = cache_position.to(inputs_embeds.device)
    # A decoding step's slots, read out once: the attended length, the mask and the compiled step need them.
    slots = cache_position.tolist() if cache_position.numel() <= 2 else None
    key_length = cache.get_mask_sizes(length)[0] if cache is not None else length
    check_decoder_mask(attention_mask, inputs_embeds.shape[0], key_length,
                       preallocated=cache is not None and cache.get_max_length() is not None)
    key_length = attended_length(cache, cache_position, length, every_slot=output_attentions, slots=slots)
    return DecoderInputs(inputs_embeds, cache, legacy, cache_position, key_length, output_attentions,
                         output_hidden_states, return_dict, checkpointing, slots)


def run_blocks(blocks, hidden: torch.Tensor, args: tuple, inputs: DecoderInputs):
    """``hidden`` through each block in turn, called as ``block(hidden, *args) -> (hidden, probs)`` (under
    activation checkpointing when ``inputs.checkpointing``). Returns the last block's output, the input of
    every block (or None) and every block's attention probabilities (or None), as ``inputs`` asks."""
    checkpointing, output_hidden_states, output_attentions = (
        inputs.checkpointing, inputs.output_hidden_states, inputs.output_attentions
    )
    all_hidden = () if output_hidden_states else None
    all_attn = () if output_attentions else None
    for block in blocks:
        if output_hidden_states:
            all_hidden += (hidden,)
        if checkpointing:
            hidden, probs = checkpoint(block, hidden, *args, use_reentrant=False)
        else:
            hidden, probs = block(hidden, *args)
        if output_attentions:
            all_attn += (probs,)
    return hidden, all_hidden, all_attn


def decoder_output(output_class: type, hidden: torch.Tensor, all_hidden, all_attn, inputs: DecoderInputs):
    """A decoder stack's output from the final norm's ``hidden`` and :func:`run_blocks`' collections: the
    last state joins the hidden states, the cache goes back as the caller gave it (legacy tuples for
    tuples), packed as :func:`pack_output` does."""
    if all_hidden is not None:
        all_hidden += (hidden,)
    cache = inputs.cache
    if cache is not None and inputs.legacy:
        cache = cache.to_legacy_cache()
    output = output_class(last_hidden_state=hidden, past_key_values=cache, hidden_states=all_hidden,
                          attentions=all_attn)
    return pack_output(output, inputs.return_dict)


def collect_layer_outputs(cache, all_attn, all_cross, present, probs, cross_probs):
    """One decoder layer's additions to the collections its stack returns, each None when not asked for:
    its cache entry, its self-attention weights and its cross-attention weights."""
    if cache is not None:
        cache += (present,)
    if all_attn is not None:
        all_attn += (probs,)
    if all_cross is not None:
        all_cross += (cross_probs,)
    return cache, all_attn, all_cross


def cached_decoder_generation_inputs(model, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                     cache_position=None, **kwargs):
    """``prepare_inputs_for_generation`` of a causal LM over a :class:`Cache` (GPT-J, MPT): one decoding
    step's forward arguments, from :func:`cache.prepare_generation_inputs`."""
    return prepare_generation_inputs(input_ids, past_key_values, attention_mask, inputs_embeds, cache_position,
                                     **kwargs)


def alibi_decoder_generation_inputs(model, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                    cache_position=None, **kwargs):
    """:func:`cached_decoder_generation_inputs` for ALiBi decoders (MPT), which read no positions: none are
    derived from the mask (as in the reference's MPT), a few operations less per step."""
    return prepare_generation_inputs(input_ids, past_key_values, attention_mask, inputs_embeds, cache_position,
                                     positions=False, **kwargs)


def uncached_tokens(input_ids: torch.Tensor, past_key_values) -> torch.Tensor:
    """The tokens a (key, value)-per-layer cache has not seen: those after its length, or the last one
    when the ids do not reach past it."""
    past = past_key_values[0][0].shape[2]
    return input_ids[:, past:] if input_ids.shape[1] > past else input_ids[:, -1:]

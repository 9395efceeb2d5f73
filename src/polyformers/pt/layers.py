"""PyTorch primitives shared by every family: activations, masks, attention, heads' losses, input checks.

Family files compose these; anything family-specific (how positions enter attention, which norm goes
where) stays in the family file.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------
# Activations


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation used by the original BERT/GPT-2 code ("gelu_new" in configs).
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
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
    if callable(name):
        return name
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


# ---------------------------------------------------------------------------------------------------
# Input validation: bad input gets an error naming the argument instead of an index error deep inside.


def check_ids(name: str, ids: Optional[torch.Tensor], limit: int, what: str) -> None:
    """Raise if any id in ``ids`` is outside ``[0, limit)``."""
    if ids is None or ids.numel() == 0:
        return
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    low, high = int(ids.min()), int(ids.max())
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


def rotary_sin_cos(position_ids: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding angles: (batch, seq) positions -> float32 (sin, cos), each of shape
    (batch, seq, dim // 2); pair ``j`` turns at the frequency ``base ** (-2j / dim)``."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=position_ids.device).float() / dim
    inv_freq = 1.0 / (base ** exponents)
    angles = position_ids.float()[..., None] * inv_freq
    return torch.sin(angles), torch.cos(angles)


def apply_rotary_interleaved(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, seq, dim) ``x`` by position, pairing neighbouring dimensions (0, 1), (2, 3), ...
    as mesh-transformer-jax (GPT-J) does; ``sin``/``cos`` are (batch, seq, dim // 2)."""
    sin = torch.repeat_interleave(sin[:, None], 2, dim=-1).to(x.dtype)
    cos = torch.repeat_interleave(cos[:, None], 2, dim=-1).to(x.dtype)
    evens, odds = x[..., ::2], x[..., 1::2]
    rotated = torch.stack((-odds, evens), dim=-1).flatten(-2)
    return x * cos + rotated * sin


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


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, seq, heads * dim) -> (batch, heads, seq, dim)."""
    b, s, _ = x.shape
    return x.view(b, s, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, dim) -> (batch, seq, heads * dim)."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


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
):
    """Scaled dot-product attention over (batch, heads, seq, dim) tensors.

    ``bias`` is added to the scaled scores (padding/causal masks, relative positions, ALiBi). Uses the
    fused kernel unless the caller needs the probabilities or masks heads, which the fused kernel cannot
    return or apply; both paths compute the same function.
    ``float32_scores`` computes query-key products in float32 for half-precision inputs, whose products
    can overflow float16 (GPT-J's); the fused kernels accumulate in float32 anyway.
    Returns ``(context, probabilities or None)``.
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if not need_weights and head_mask is None:
        if bias is not None and bias.dtype != query.dtype:
            bias = bias.to(query.dtype)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=scale)
        return context, None
    if float32_scores:
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if bias is not None:
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
    return hidden_states[:, -logits_to_keep:, :] if logits_to_keep else hidden_states


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
    """Cross-entropy of position t's logits against the label at t+1 (labels are the inputs, unshifted)."""
    return token_loss(logits[:, :-1, :], labels[:, 1:])


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

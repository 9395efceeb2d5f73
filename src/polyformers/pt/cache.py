"""Key/value caches for decoding: the keys and values of tokens already seen, one entry per layer.

Attention layers call ``cache.update(key, value, layer_idx, {"cache_position": ...})`` and attend over
what it returns. :class:`DynamicCache` grows by concatenation (the default); :class:`StaticCache` is
preallocated for a maximum length and written in place at ``cache_position``, so decoding allocates
nothing per step; its unused tail is masked out by the causal mask, which never lets a query see a
key position beyond its own.

Models also take the reference's older format, a tuple of ``(key, value)`` pairs per layer, and give
back the format they were given (see :func:`as_cache`).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

from . import memory


class Cache:
    """Base of every cache: per-layer key/value states of shape (batch, heads, positions, head_dim)."""

    is_compileable = False

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: Optional[dict[str, Any]] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new states of layer ``layer_idx``; return every key and value that layer attends over."""
        raise NotImplementedError(f"{type(self).__name__} does not implement update")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """How many positions layer ``layer_idx`` holds."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_seq_length")

    def get_max_length(self) -> Optional[int]:
        """The most positions the cache can hold; None when it grows without bound."""
        return None

    def get_max_cache_shape(self) -> Optional[int]:
        return self.get_max_length()

    def get_usable_length(self, new_seq_length: int, layer_idx: int = 0) -> int:
        """How many cached positions the next ``new_seq_length`` tokens can attend to."""
        past = self.get_seq_length(layer_idx)
        limit = self.get_max_length()
        if limit is not None and past + new_seq_length > limit:
            return limit - new_seq_length
        return past

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(number of key positions attention sees after this update, offset of the first one)."""
        return self.get_seq_length(layer_idx) + query_length, 0

    @property
    def seen_tokens(self) -> int:
        return self.get_seq_length()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep, for every row of the batch, the row ``beam_idx`` names (beam search)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement reorder_cache")

    def to_legacy_cache(self) -> tuple:
        """The reference's older format: a tuple of (key, value) per layer."""
        return tuple((k, v) for k, v in self)

    def __iter__(self):
        for idx in range(len(self)):
            yield self[idx]

    def __len__(self) -> int:  # pragma: no cover - every cache overrides
        raise NotImplementedError

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class DynamicCache(Cache):
    """A cache that grows as tokens arrive: each update concatenates along the position axis.

    ``DynamicCache()`` starts empty; ``DynamicCache(pairs)`` (or :meth:`from_legacy_cache`) starts from
    an iterable of (key, value) per layer. ``config`` is accepted for compatibility and not needed.
    """

    def __init__(self, ddp_cache_data: Optional[Iterable] = None, config: Any = None):
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        for layer_idx, pair in enumerate(ddp_cache_data or ()):
            key, value = pair[:2]
            self.update(key, value, layer_idx)

    @classmethod
    def from_legacy_cache(cls, past_key_values: Optional[Iterable] = None) -> "DynamicCache":
        return cls(past_key_values)

    def __len__(self) -> int:
        return len(self.key_cache)

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= layer_idx < len(self):
            raise IndexError(f"layer_idx {layer_idx} is out of range: the cache holds {len(self)} layers")
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def __repr__(self) -> str:
        return f"DynamicCache(layers={len(self)}, positions={self.get_seq_length()})"

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        if layer_idx < 0:
            raise IndexError(f"layer_idx must be >= 0, got {layer_idx}")
        while len(self.key_cache) < layer_idx:  # layers that stored nothing yet hold zero positions
            self.key_cache.append(key_states[..., :0, :])
            self.value_cache.append(value_states[..., :0, :])
        if layer_idx == len(self.key_cache):
            self.key_cache.append(key_states)
            self.value_cache.append(value_states)
        else:
            self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key_states], dim=-2)
            self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value_states], dim=-2)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.key_cache):
            return 0
        return self.key_cache[layer_idx].shape[-2]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions; a negative value drops that many from the end."""
        length = self.get_seq_length()
        if max_length < 0:
            max_length = length - abs(max_length)
        if length <= max_length:
            return
        self._map(lambda t: t[..., :max_length, :])

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times in place (expanding a batch to beams)."""
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows ``indices`` names."""
        self._map(lambda t: t[indices, ...])

    def _map(self, fn) -> None:
        self.key_cache = [fn(t) for t in self.key_cache]
        self.value_cache = [fn(t) for t in self.value_cache]


class StaticCache(Cache):
    """A cache preallocated for ``max_batch_size`` rows and ``max_cache_len`` positions.

    Updates write in place at ``cache_kwargs["cache_position"]`` (or right after the positions written
    so far) and return the whole buffers; attention masks the positions not written yet. With
    ``dtype``/``device`` left out, the buffers are allocated on the first update, in the dtype and on
    the device of the states the model produces.

    ``dtype=torch.bfloat16`` for a float32 model keeps a 16-bit cache: each key and value is rounded to
    bfloat16 as it is stored (to nearest, as ``Tensor.to`` does), and attention reads the rounded values.
    Half the memory of a float32 cache, and half the bytes a decoding step reads from it, which is most of
    what a batch adds to a step: with 8 sequences of ~100 tokens, the reduced MPT reads 75 MB of float32
    keys and values a step beside 203 MB of int8 weights. The outputs are those of the model with its keys
    and values rounded to bfloat16, not the float32 model's.
    """

    is_compileable = True

    def __init__(
        self,
        config: Any,
        max_batch_size: int,
        max_cache_len: Optional[int] = None,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ):
        # Older callers spell the batch size ``batch_size``.
        max_batch_size = kwargs.pop("batch_size", max_batch_size)
        if kwargs:
            raise TypeError(f"StaticCache got unexpected arguments {sorted(kwargs)}")
        if max_cache_len is None:
            max_cache_len = config.max_position_embeddings
        for name, value in (("max_batch_size", max_batch_size), ("max_cache_len", max_cache_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"StaticCache argument {name!r}: expected a positive int, given {value!r}")
        self.max_batch_size = max_batch_size
        self.max_cache_len = max_cache_len
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        self._written: list[torch.Tensor] = []  # per layer: which positions hold states
        if dtype is not None or device is not None:
            self._allocate(dtype or torch.float32, self.device or torch.device("cpu"))

    def _allocate(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        shape = (self.max_batch_size, self.num_heads, self.max_cache_len, self.head_dim)

        def zeros() -> torch.Tensor:
            # On the CPU, in huge pages where the system has them: a decoding step reads every head's cached
            # keys and values, a few KiB each in its own place, and in 4 KiB pages each page costs a TLB miss
            # and stops the prefetchers (see polyformers.pt.memory). Batch 8, 96 keys, 12 layers of the bench's
            # reduced MPT: attention 396-427 -> 363-376 us a layer on a 2-core Xeon. The system zeroes the
            # pages as they are first written (23 ms for that batch's 126 MB), so nothing zeroes them twice.
            if device.type == "cpu":
                return memory.zeros(shape, dtype)
            return torch.zeros(shape, dtype=dtype, device=device)

        self.key_cache = [zeros() for _ in range(self.num_layers)]
        self.value_cache = [zeros() for _ in range(self.num_layers)]
        self._written = [torch.zeros(self.max_cache_len, dtype=torch.bool, device=device)
                         for _ in range(self.num_layers)]

    def __len__(self) -> int:
        return self.num_layers

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.key_cache:
            raise IndexError("the StaticCache holds nothing yet: its buffers are allocated on the first update")
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def __repr__(self) -> str:
        return (f"StaticCache(layers={self.num_layers}, max_batch_size={self.max_batch_size}, "
                f"max_cache_len={self.max_cache_len}, dtype={self.dtype})")

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        if not self.key_cache:
            self._allocate(key_states.dtype, key_states.device)
        expected = (self.max_batch_size, self.num_heads, self.head_dim)
        given = (key_states.shape[0], key_states.shape[1], key_states.shape[-1])
        if given != expected:
            raise ValueError(
                f"StaticCache was built for (batch, heads, head_dim) = {expected}, the model gave {given}; "
                "create it with max_batch_size equal to the batch size"
            )
        if key_states.dtype != self.dtype and not (self.dtype == torch.bfloat16 and key_states.dtype == torch.float32):
            raise ValueError(
                f"StaticCache holds {self.dtype} states but the model produced {key_states.dtype}; "
                f"create it with dtype={key_states.dtype} (or torch.bfloat16 for a float32 model)"
            )
        position = (cache_kwargs or {}).get("cache_position")
        if position is None:
            start = self.get_seq_length(layer_idx)
            position = torch.arange(start, start + key_states.shape[-2], device=self.device)
        position = position.to(self.device)
        if key_states.shape[-2] > self.max_cache_len:
            raise ValueError(
                f"{key_states.shape[-2]} new positions do not fit a StaticCache of max_cache_len={self.max_cache_len}"
            )
        self.key_cache[layer_idx].index_copy_(2, position, key_states.to(self.dtype))
        self.value_cache[layer_idx].index_copy_(2, position, value_states.to(self.dtype))
        self._written[layer_idx].index_fill_(0, position, True)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if not self._written:
            return 0
        return int(self._written[layer_idx].sum())

    def get_max_length(self) -> int:
        return self.max_cache_len

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.max_cache_len, 0

    def reset(self) -> None:
        """Forget every position (the buffers stay allocated)."""
        for tensor in (*self.key_cache, *self.value_cache, *self._written):
            tensor.zero_()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for tensor in (*self.key_cache, *self.value_cache):
            tensor.copy_(tensor.index_select(0, beam_idx.to(tensor.device)))

    def crop(self, max_length: int) -> None:
        """Forget positions from ``max_length`` on (a negative value forgets that many from the end)."""
        if max_length < 0:
            max_length = self.get_seq_length() - abs(max_length)
        for written, key, value in zip(self._written, self.key_cache, self.value_cache):
            written[max_length:] = False
            key[..., max_length:, :] = 0
            value[..., max_length:, :] = 0


def attended_length(cache: Optional[Cache], cache_position: torch.Tensor, query_length: int,
                    every_slot: bool = False, slots: Optional[list] = None) -> int:
    """How many cache slots self-attention reads once this step's states are stored.

    A growing cache holds exactly those; a preallocated one is read only up to the last slot written
    now, since the slots past every query's own are masked anyway. ``every_slot`` reads all of them, for
    attention weights as wide as the reference's. ``slots``: ``cache_position.tolist()``, if the caller
    has it.
    """
    if cache is None:
        return query_length
    length = cache.get_mask_sizes(query_length)[0]
    if cache.get_max_length() is not None and not every_slot and cache_position.numel():
        last = max(slots) if slots is not None else int(cache_position.max())
        length = min(length, last + 1)
    return length


def as_cache(past_key_values: Any, use_cache: bool) -> tuple[Optional[Cache], bool]:
    """Normalise a model's ``past_key_values`` argument: (the Cache to use or None, whether the caller
    gave the older tuple format and expects it back)."""
    if past_key_values is None:
        return (DynamicCache() if use_cache else None), False
    if isinstance(past_key_values, Cache):
        return past_key_values, False
    if isinstance(past_key_values, (tuple, list)):
        for i, pair in enumerate(past_key_values):
            if not (isinstance(pair, (tuple, list)) and len(pair) >= 2 and all(torch.is_tensor(t) for t in pair[:2])):
                raise TypeError(
                    f"past_key_values[{i}]: expected a (key, value) pair of tensors, given {type(pair).__name__}"
                )
        return DynamicCache.from_legacy_cache(past_key_values), True
    raise TypeError(
        f"past_key_values must be a Cache (e.g. DynamicCache), a tuple of (key, value) per layer, or None; "
        f"given {type(past_key_values).__name__}"
    )


def reorder_legacy_or_cache(past_key_values: Any, beam_idx: torch.LongTensor) -> Any:
    """Beam-search reordering for either cache format (``_reorder_cache`` of the older API)."""
    if isinstance(past_key_values, Cache):
        past_key_values.reorder_cache(beam_idx)
        return past_key_values
    return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past_key_values)


def prepare_generation_inputs(
    input_ids: torch.Tensor,
    past_key_values: Any = None,
    attention_mask: Optional[torch.Tensor] = None,
    inputs_embeds: Optional[torch.Tensor] = None,
    cache_position: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
    positions: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """The forward arguments of one decoding step of a causal LM.

    With a cache, only the tokens it has not seen are fed. Positions come from the attention mask, so
    a left-padded prompt gets the same positions as the prompt alone (the first real token is 0; pad
    positions get 1, a harmless value that attention masks out anyway); ``positions=False`` derives none,
    for models that read no positions (ALiBi's MPT).
    """
    # How much the cache holds is asked only where the answer matters (no cache_position, or embeddings
    # given): a preallocated cache counts its written slots with a tensor reduction, which a decoding step
    # need not pay for. Given cache_position, the ids it names are fed.
    past = None
    if cache_position is None or inputs_embeds is not None:
        if past_key_values is None:
            past = 0
        elif isinstance(past_key_values, Cache):
            past = past_key_values.get_seq_length()
        else:
            past = past_key_values[0][0].shape[-2]
    if cache_position is None:
        cache_position = torch.arange(past, input_ids.shape[1], device=input_ids.device)
    if past_key_values is not None:
        if inputs_embeds is not None:
            if past > 0:
                input_ids = input_ids[:, -cache_position.shape[0]:]
        elif input_ids.shape[1] != cache_position.shape[0]:
            input_ids = input_ids.index_select(1, cache_position.to(input_ids.device))
    if position_ids is None and attention_mask is not None and positions:
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids = position_ids.masked_fill(attention_mask == 0, 1)
    if position_ids is not None:
        position_ids = position_ids[:, -input_ids.shape[1]:]
    token_type_ids = kwargs.pop("token_type_ids", None)
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids[:, -input_ids.shape[1]:]
    if inputs_embeds is not None and past == 0:
        first = {"inputs_embeds": inputs_embeds, "input_ids": None}
    else:
        first = {"input_ids": input_ids.contiguous()}
    return {
        **first,
        "past_key_values": past_key_values,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "cache_position": cache_position,
        "use_cache": kwargs.pop("use_cache", True),
        **kwargs,
    }

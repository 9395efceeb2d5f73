"""Flax linen primitives shared by every family: activations, sinusoidal positions, multi-head attention
with a preallocated key/value cache, masks.

Family files compose these; which norm goes where and how positions enter stays in the family file.
Submodule names are those of the reference's Flax classes, so their ``flax_model.msgpack`` files load
as they are and :func:`polyformers.flax.modeling.torch_key` maps them to the PyTorch checkpoint keys.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from .._shared import pick_activation

Array = Any

# ---------------------------------------------------------------------------------------------------
# Activations

_ACTIVATIONS: dict[str, Callable] = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_fast": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
    "relu": nn.relu,
    "relu6": nn.relu6,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "linear": lambda x: x,
}


# get_activation(name): the activation a config names (``activation_function`` and friends); callables pass
# through.
get_activation = functools.partial(pick_activation, _ACTIVATIONS)


def dense(features: int, std: float, dtype, use_bias: bool = True, name: Optional[str] = None) -> nn.Dense:
    """A linear layer initialised as the reference's: normal(std) kernel, zero bias."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=jax.nn.initializers.normal(std), name=name)


# ---------------------------------------------------------------------------------------------------
# Positions


def sinusoidal_positions(num_positions: int, dim: int) -> np.ndarray:
    """Vaswani et al.'s fixed table laid out as all sines then all cosines (not interleaved), computed in
    float64 like the PyTorch classes so both frameworks hold the same float32 table."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    sines, cosines = (dim + 1) // 2, dim // 2
    angles = positions * np.power(10000.0, -2.0 * np.arange(sines, dtype=np.float64) / dim)
    return np.concatenate([np.sin(angles), np.cos(angles[:, :cosines])], axis=1).astype(np.float32)


def default_positions(ids: Array) -> Array:
    """0, 1, ... for every row of a (batch, sequence) input."""
    batch, length = ids.shape
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None, :], (batch, length))


# ---------------------------------------------------------------------------------------------------
# Attention

# Cache variable names. Self-attention keys/values grow one slot per decoded token; cross-attention
# keys/values are projected from the encoder once and never depend on the beam, which is how beam
# search knows it can leave them in place.
SELF_CACHE = ("cached_key", "cached_value")
CROSS_CACHE = ("cross_key", "cross_value")


class Attention(nn.Module):
    """Multi-head attention with q/k/v/out projections.

    Self-attention (``causal=True`` in decoders) keeps a preallocated cache of ``max_length`` slots in the
    ``cache`` collection once created with ``init_cache=True``: each call writes its keys and values at
    ``cache_index`` and attends to the filled slots. Cross-attention (``key_value_states`` given) with a
    cache projects the encoder states on the first call and reuses them afterwards.

    ``attention_mask`` is a (batch, key_length) 0/1 padding mask over the keys (over the cache slots
    when a self-attention cache is in use); a (batch, 1) mask broadcasts.
    """

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    causal: bool = False
    use_bias: bool = True
    init_std: float = 0.02
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        self.head_dim = self.embed_dim // self.num_heads
        make = functools.partial(dense, self.embed_dim, self.init_std, self.dtype, self.use_bias)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = make(), make(), make(), make()

    def _split(self, x: Array) -> Array:
        return x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))

    def _project_kv(self, states: Array) -> tuple[Array, Array]:
        return self._split(self.k_proj(states)), self._split(self.v_proj(states))

    def __call__(
        self,
        hidden_states: Array,
        key_value_states: Optional[Array] = None,
        attention_mask: Optional[Array] = None,
        init_cache: bool = False,
        deterministic: bool = True,
    ) -> tuple[Array, Array]:
        query = self._split(self.q_proj(hidden_states))
        batch, q_len = query.shape[:2]
        if key_value_states is not None:
            key, value = self._cross_keys_values(key_value_states, init_cache)
            mask = None if attention_mask is None else attention_mask[:, None, None, :].astype(bool)
        else:
            key, value = self._split(self.k_proj(hidden_states)), self._split(self.v_proj(hidden_states))
            offset = 0
            if self.causal and (init_cache or self.has_variable("cache", SELF_CACHE[0])):
                key, value, offset = self._cached(key, value)
            mask = None if attention_mask is None else attention_mask[:, None, None, :].astype(bool)
            if self.causal:
                # Query i sits at position offset + i and sees the keys at or before it; unfilled cache
                # slots lie after every query.
                causal = jnp.arange(key.shape[1])[None, :] <= (offset + jnp.arange(q_len))[:, None]
                mask = causal[None, None] if mask is None else mask & causal[None, None]

        dropout_rng = None
        if not deterministic and self.dropout > 0.0:
            dropout_rng = self.make_rng("dropout")
        context, weights = attend(query, key, value, mask, self.dropout, dropout_rng, self.dtype)
        context = context.reshape((batch, q_len, self.embed_dim))
        return self.out_proj(context), weights

    @nn.compact  # linen creates variables only in setup or in a compact method: both caches go through here
    def _cached(self, key: Array, value: Array, states: Optional[Array] = None):
        if states is not None:
            return self._cross_cached(states)
        is_initialized = self.has_variable("cache", SELF_CACHE[0])
        cached_key = self.variable("cache", SELF_CACHE[0], jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", SELF_CACHE[1], jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
        if not is_initialized:
            # init_cache: the call only sizes the cache (its inputs are max_length long).
            return key, value, 0
        index = cache_index.value
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), (0, index, 0, 0))
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), (0, index, 0, 0)
        )
        cache_index.value = index + key.shape[1]
        return cached_key.value, cached_value.value, index

    def _cross_keys_values(self, states: Array, init_cache: bool):
        if not (init_cache or self.has_variable("cache", CROSS_CACHE[0])):
            return self._project_kv(states)
        return self._cached(None, None, states)

    def _cross_cached(self, states: Array):
        is_initialized = self.has_variable("cache", CROSS_CACHE[0])
        shape = states.shape[:2] + (self.num_heads, self.head_dim)
        cached_key = self.variable("cache", CROSS_CACHE[0], jnp.zeros, shape, self.dtype)
        cached_value = self.variable("cache", CROSS_CACHE[1], jnp.zeros, shape, self.dtype)
        filled = self.variable("cache", "cross_filled", lambda: jnp.array(False))
        if not is_initialized:
            return self._project_kv(states)
        if cached_key.value.shape != shape:
            raise ValueError(
                f"encoder_outputs: the cache was made for encoder states of shape {cached_key.value.shape[:2]}, "
                f"got {states.shape[:2]}; call init_cache with these encoder_outputs"
            )

        # The encoder's keys and values stay the same for every decoding step: project them on the
        # first call only (a branch chosen at run time, so this also holds inside a compiled loop).
        def project(module, states, old_key, old_value):
            key, value = module._project_kv(states)
            return key.astype(old_key.dtype), value.astype(old_value.dtype)

        def reuse(module, states, old_key, old_value):
            return old_key, old_value

        key, value = nn.cond(filled.value, reuse, project, self, states, cached_key.value, cached_value.value)
        cached_key.value, cached_value.value, filled.value = key, value, jnp.array(True)
        return key, value


def attend(query, key, value, mask, dropout_rate: float, dropout_rng, dtype):
    """Scaled dot-product attention on (batch, length, heads, head_dim) arrays; ``mask`` is boolean and
    broadcasts to (batch, heads, query, key). Softmax runs in float32 whatever the computation dtype.
    Returns the context (batch, query, heads, head_dim) and the weights (batch, heads, query, key)."""
    depth = query.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", query / jnp.sqrt(depth).astype(query.dtype), key.astype(query.dtype))
    scores = scores.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0).astype(dtype)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(dtype))
    return context, weights


def reorder_cache(cache, batch_indices: Array):
    """The cache with its self-attention entries gathered along the batch axis (beam search); the
    cross-attention entries are the same for every beam of a source and stay as they are."""

    def gather(path, leaf):
        name = getattr(path[-1], "key", None)
        return leaf[batch_indices] if name in SELF_CACHE else leaf

    return jax.tree_util.tree_map_with_path(gather, cache)


# ---------------------------------------------------------------------------------------------------
# Stacks


class LayerStack(nn.Module):
    """``num_layers`` blocks named "0", "1", ... (the parameter paths of the reference's layer
    collections), run in order. Each block returns ``(hidden_states, *attention_weights)``.

    Returns the last hidden states, the hidden states entering each block plus the last (when asked),
    and per block the tuple of its attention weights (when asked). In training, LayerDrop (Fan et al.,
    2019) skips a whole block with probability ``layerdrop``.
    """

    block: Any
    num_layers: int
    config: Any
    layerdrop: float = 0.0
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.blocks = [self.block(self.config, dtype=self.dtype, name=str(i)) for i in range(self.num_layers)]

    def __call__(self, hidden_states, *args, output_attentions=False, output_hidden_states=False,
                 deterministic=True, **kwargs):
        all_hidden, all_weights = [], []
        for block in self.blocks:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            output = block(hidden_states, *args, deterministic=deterministic, **kwargs)
            if not deterministic and self.layerdrop > 0.0:
                drop = jax.random.uniform(self.make_rng("dropout")) < self.layerdrop
                output = (jnp.where(drop, hidden_states, output[0]),) + tuple(output[1:])
            hidden_states = output[0]
            all_weights.append(tuple(output[1:]))
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return hidden_states, tuple(all_hidden) if output_hidden_states else None, \
            tuple(all_weights) if output_attentions else None

"""Pegasus in Flax (Zhang et al., 2020): a pre-norm Transformer encoder-decoder pre-trained for
abstractive summarisation by generating the sentences removed from a document.

Read top-down: the pre-norm encoder and decoder blocks, the two stacks (fixed sinusoidal positions, a
final LayerNorm each, as pre-norm stacks need), the bare model sharing one token embedding between
both stacks, the summarisation head, then the wrappers that hold the parameters. Submodule names are
the reference's, so parameter paths map to the PyTorch checkpoint keys by the shared rule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ...configs import PegasusConfig
from ...outputs import (
    FlaxBaseModelOutput,
    FlaxBaseModelOutputWithPastAndCrossAttentions,
    FlaxCausalLMOutputWithCrossAttentions,
    FlaxSeq2SeqLMOutput,
    FlaxSeq2SeqModelOutput,
)
from .. import layers as L
from ..generation import FlaxGenerationMixin
from ..modeling import FlaxPreTrainedModel


def shift_tokens_right(input_ids, pad_token_id: Optional[int], decoder_start_token_id: Optional[int]):
    """Teacher forcing: the decoder reads the labels one step late, after ``decoder_start_token_id``; the
    loss's ignored label -100 becomes ``pad_token_id`` on the input side."""
    if pad_token_id is None or decoder_start_token_id is None:
        raise ValueError(
            "config.pad_token_id and config.decoder_start_token_id must be set to derive decoder_input_ids from "
            f"input_ids, got {pad_token_id} and {decoder_start_token_id}"
        )
    input_ids = jnp.asarray(input_ids)
    shifted = jnp.concatenate([jnp.full_like(input_ids[:, :1], decoder_start_token_id), input_ids[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


# ---------------------------------------------------------------------------------------------------
# Blocks


def _layer_norm(dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype)


class _FeedForward(nn.Module):
    """x + FFN(LayerNorm(x)); mixed into both blocks so fc1, fc2 and final_layer_norm stay the blocks'
    own parameters (their checkpoint keys)."""

    def feed_forward(self, hidden_states, deterministic: bool):
        residual = hidden_states
        hidden_states = self.activation_fn(self.fc1(self.final_layer_norm(hidden_states)))
        hidden_states = self.activation_dropout_layer(hidden_states, deterministic=deterministic)
        hidden_states = self.dropout_layer(self.fc2(hidden_states), deterministic=deterministic)
        return residual + hidden_states

    def _setup_feed_forward(self, ffn_dim: int) -> None:
        config = self.config
        self.activation_fn = L.get_activation(config.activation_function)
        self.activation_dropout_layer = nn.Dropout(rate=config.activation_dropout)
        self.dropout_layer = nn.Dropout(rate=config.dropout)
        self.fc1 = L.dense(ffn_dim, config.init_std, self.dtype)
        self.fc2 = L.dense(config.d_model, config.init_std, self.dtype)
        self.final_layer_norm = _layer_norm(self.dtype)


class FlaxPegasusEncoderLayer(_FeedForward):
    """Pre-norm block: x + SelfAttention(LayerNorm(x)), then x + FFN(LayerNorm(x))."""

    config: PegasusConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        config = self.config
        self.self_attn = L.Attention(config.d_model, config.encoder_attention_heads, config.attention_dropout,
                                     init_std=config.init_std, dtype=self.dtype)
        self.self_attn_layer_norm = _layer_norm(self.dtype)
        self._setup_feed_forward(config.encoder_ffn_dim)

    def __call__(self, hidden_states, attention_mask, deterministic: bool = True):
        attended, weights = self.self_attn(self.self_attn_layer_norm(hidden_states), attention_mask=attention_mask,
                                           deterministic=deterministic)
        hidden_states = hidden_states + self.dropout_layer(attended, deterministic=deterministic)
        return self.feed_forward(hidden_states, deterministic), weights


class FlaxPegasusDecoderLayer(_FeedForward):
    """Pre-norm block: causal self-attention (with the cache), cross-attention to the encoder, FFN."""

    config: PegasusConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        config = self.config
        heads = config.decoder_attention_heads
        self.self_attn = L.Attention(config.d_model, heads, config.attention_dropout, causal=True,
                                     init_std=config.init_std, dtype=self.dtype)
        self.self_attn_layer_norm = _layer_norm(self.dtype)
        self.encoder_attn = L.Attention(config.d_model, heads, config.attention_dropout, init_std=config.init_std,
                                        dtype=self.dtype)
        self.encoder_attn_layer_norm = _layer_norm(self.dtype)
        self._setup_feed_forward(config.decoder_ffn_dim)

    def __call__(self, hidden_states, attention_mask, encoder_hidden_states=None, encoder_attention_mask=None,
                 init_cache: bool = False, deterministic: bool = True):
        attended, self_weights = self.self_attn(self.self_attn_layer_norm(hidden_states), attention_mask=attention_mask,
                                                init_cache=init_cache, deterministic=deterministic)
        hidden_states = hidden_states + self.dropout_layer(attended, deterministic=deterministic)
        cross_weights = None
        if encoder_hidden_states is not None:
            attended, cross_weights = self.encoder_attn(
                self.encoder_attn_layer_norm(hidden_states), key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask, init_cache=init_cache, deterministic=deterministic,
            )
            hidden_states = hidden_states + self.dropout_layer(attended, deterministic=deterministic)
        return self.feed_forward(hidden_states, deterministic), self_weights, cross_weights


# ---------------------------------------------------------------------------------------------------
# The stacks


class _Stack(nn.Module):
    """Shared by both stacks: scaled token embeddings plus sinusoidal positions, the blocks, a final
    LayerNorm (which also replaces the last entry of the hidden states, as in the PyTorch classes)."""

    def _setup_stack(self, block, num_layers: int, layerdrop: float) -> None:
        config = self.config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = L.sinusoidal_positions(config.max_position_embeddings, config.d_model)
        self.dropout_layer = nn.Dropout(rate=config.dropout)
        self.layers = L.LayerStack(block, num_layers, config, layerdrop, dtype=self.dtype)
        self.layer_norm = _layer_norm(self.dtype)

    def _embed(self, input_ids, position_ids, deterministic: bool):
        embeds = self.embed_tokens(input_ids) * self.embed_scale
        positions = jnp.take(jnp.asarray(self.embed_positions), position_ids, axis=0).astype(embeds.dtype)
        return self.dropout_layer(embeds + positions, deterministic=deterministic)

    def _finish(self, hidden_states, all_hidden):
        hidden_states = self.layer_norm(hidden_states)
        if all_hidden is not None:
            all_hidden = all_hidden[:-1] + (hidden_states,)
        return hidden_states, all_hidden


class FlaxPegasusEncoder(_Stack):
    config: PegasusConfig
    embed_tokens: nn.Embed
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self._setup_stack(FlaxPegasusEncoderLayer, self.config.encoder_layers, self.config.encoder_layerdrop)

    def __call__(self, input_ids, attention_mask, position_ids, output_attentions: bool = False,
                 output_hidden_states: bool = False, deterministic: bool = True):
        hidden_states = self._embed(input_ids, position_ids, deterministic)
        hidden_states, all_hidden, weights = self.layers(
            hidden_states, attention_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, deterministic=deterministic,
        )
        hidden_states, all_hidden = self._finish(hidden_states, all_hidden)
        return FlaxBaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden,
            attentions=tuple(w[0] for w in weights) if weights is not None else None,
        )


class FlaxPegasusDecoder(_Stack):
    config: PegasusConfig
    embed_tokens: nn.Embed
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self._setup_stack(FlaxPegasusDecoderLayer, self.config.decoder_layers, self.config.decoder_layerdrop)

    def __call__(self, input_ids, attention_mask, position_ids, encoder_hidden_states=None,
                 encoder_attention_mask=None, init_cache: bool = False, output_attentions: bool = False,
                 output_hidden_states: bool = False, deterministic: bool = True):
        hidden_states = self._embed(input_ids, position_ids, deterministic)
        hidden_states, all_hidden, weights = self.layers(
            hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, init_cache=init_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            deterministic=deterministic,
        )
        hidden_states, all_hidden = self._finish(hidden_states, all_hidden)
        has_cross = encoder_hidden_states is not None
        return FlaxBaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, hidden_states=all_hidden,
            attentions=tuple(w[0] for w in weights) if weights is not None else None,
            cross_attentions=tuple(w[1] for w in weights) if weights is not None and has_cross else None,
        )


# ---------------------------------------------------------------------------------------------------
# Models (linen modules)


class FlaxPegasusModule(nn.Module):
    """Encoder and decoder sharing the token embedding ``shared``."""

    config: PegasusConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        config = self.config
        self.shared = nn.Embed(config.vocab_size, config.d_model, dtype=self.dtype,
                               embedding_init=jax.nn.initializers.normal(config.init_std))
        self.encoder = FlaxPegasusEncoder(config, embed_tokens=self.shared, dtype=self.dtype)
        self.decoder = FlaxPegasusDecoder(config, embed_tokens=self.shared, dtype=self.dtype)

    def encode(self, input_ids, attention_mask, position_ids, **kwargs):
        return self.encoder(input_ids, attention_mask, position_ids, **kwargs)

    def decode(self, decoder_input_ids, decoder_attention_mask, decoder_position_ids, **kwargs):
        return self.decoder(decoder_input_ids, decoder_attention_mask, decoder_position_ids, **kwargs)

    def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                 decoder_position_ids, output_attentions: bool = False, output_hidden_states: bool = False,
                 deterministic: bool = True):
        flags = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                     deterministic=deterministic)
        encoded = self.encoder(input_ids, attention_mask, position_ids, **flags)
        decoded = self.decoder(decoder_input_ids, decoder_attention_mask, decoder_position_ids,
                               encoded.last_hidden_state, attention_mask, **flags)
        return FlaxSeq2SeqModelOutput(
            last_hidden_state=decoded.last_hidden_state,
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            encoder_last_hidden_state=encoded.last_hidden_state,
            encoder_hidden_states=encoded.hidden_states,
            encoder_attentions=encoded.attentions,
        )


class FlaxPegasusForConditionalGenerationModule(nn.Module):
    """The bare model plus the language-modelling head: logits = hidden @ E^T + final_logits_bias, with E
    the shared embedding when ``tie_word_embeddings`` (Pegasus's default), else an own ``lm_head``."""

    config: PegasusConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        config = self.config
        self.model = FlaxPegasusModule(config, dtype=self.dtype)
        if not config.tie_word_embeddings:
            self.lm_head = L.dense(config.vocab_size, config.init_std, self.dtype, use_bias=False)
        # A buffer in PyTorch, fine-tuned only by resizing; a parameter here that training must not update.
        self.final_logits_bias = self.param("final_logits_bias", nn.initializers.zeros, (1, config.vocab_size))

    def _logits(self, hidden_states):
        if self.config.tie_word_embeddings:
            logits = self.model.shared.attend(hidden_states)
        else:
            logits = self.lm_head(hidden_states)
        return logits + jax.lax.stop_gradient(self.final_logits_bias.astype(logits.dtype))

    def encode(self, input_ids, attention_mask, position_ids, **kwargs):
        return self.model.encoder(input_ids, attention_mask, position_ids, **kwargs)

    def decode(self, decoder_input_ids, decoder_attention_mask, decoder_position_ids, **kwargs):
        decoded = self.model.decoder(decoder_input_ids, decoder_attention_mask, decoder_position_ids, **kwargs)
        return FlaxCausalLMOutputWithCrossAttentions(
            logits=self._logits(decoded.last_hidden_state), hidden_states=decoded.hidden_states,
            attentions=decoded.attentions, cross_attentions=decoded.cross_attentions,
        )

    def __call__(self, *args, **kwargs):
        body = self.model(*args, **kwargs)
        return FlaxSeq2SeqLMOutput(
            logits=self._logits(body.last_hidden_state),
            decoder_hidden_states=body.decoder_hidden_states,
            decoder_attentions=body.decoder_attentions,
            cross_attentions=body.cross_attentions,
            encoder_last_hidden_state=body.encoder_last_hidden_state,
            encoder_hidden_states=body.encoder_hidden_states,
            encoder_attentions=body.encoder_attentions,
        )


# ---------------------------------------------------------------------------------------------------
# Wrappers: parameters, defaults, input checks


def _concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def _ids(name: str, ids, vocab_size: Optional[int] = None):
    """``ids`` as an int32 (batch, sequence) array; out-of-range ids are refused when their values are known."""
    if ids is None:
        return None
    shape = np.shape(ids)
    if len(shape) != 2:
        raise ValueError(f"{name} must have shape (batch, sequence), got {tuple(shape)}")
    if vocab_size is not None and _concrete(ids) and np.size(ids):
        low, high = int(np.min(ids)), int(np.max(ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} must hold ids in [0, {vocab_size}) (vocab_size={vocab_size}), got values in [{low}, {high}]")
    return jnp.asarray(ids, dtype=jnp.int32)


def _mask(name: str, mask, batch: int, lengths: tuple):
    if mask is None:
        return None
    shape = tuple(np.shape(mask))
    if len(shape) != 2 or shape[0] != batch or shape[1] not in lengths:
        raise ValueError(f"{name} must have shape (batch, sequence) = ({batch}, {' or '.join(map(str, lengths))}), got {shape}")
    return jnp.asarray(mask, dtype=jnp.int32)


def _positions(name: str, positions, shape: tuple, limit: int):
    if positions is None:
        return None
    if tuple(np.shape(positions)) != tuple(shape):
        raise ValueError(f"{name} must have the shape of its input ids {tuple(shape)}, got {tuple(np.shape(positions))}")
    if _concrete(positions) and np.size(positions) and int(np.max(positions)) >= limit:
        raise ValueError(f"{name} must be below max_position_embeddings={limit}, got {int(np.max(positions))}")
    return jnp.asarray(positions, dtype=jnp.int32)


def _cache_slots(cache) -> tuple[Any, int]:
    """(filled slots, total slots) of a decoder cache, read from its first self-attention layer."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(cache)[0]:
        if getattr(path[-1], "key", None) == L.SELF_CACHE[0]:
            index = _cache_index_at(cache, path[:-1])
            return index, leaf.shape[1]
    raise ValueError("past_key_values is not a cache made by init_cache (no self-attention key cache found)")


def _cache_index_at(cache, path):
    node = cache
    for entry in path:
        node = node[entry.key]
    return node["cache_index"]


class FlaxPegasusPreTrainedModel(FlaxPreTrainedModel):
    """Parameters, ``init_cache``, ``encode``, ``decode`` and ``__call__`` of the Pegasus models."""

    config_class = PegasusConfig
    base_model_prefix = "model"
    module_class: Any = None
    # The fixed position tables are constants here; PyTorch checkpoints store them (and a tied head's copy).
    _keys_to_ignore_on_load_unexpected = [r"embed_positions\.weight$", r"embed_tokens\.weight$", r"^lm_head\.weight$"]

    def __init__(self, config: PegasusConfig, input_shape: tuple = (1, 1), seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True, **kwargs):
        self.check_dtype(dtype)
        module = self.module_class(config=config, dtype=dtype, **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def init_weights(self, rng, input_shape: tuple, params: Optional[dict] = None) -> dict:
        input_ids = jnp.zeros(input_shape, dtype=jnp.int32)
        mask = jnp.ones_like(input_ids)
        positions = L.default_positions(input_ids)
        params_rng, dropout_rng = jax.random.split(rng)
        random_params = self.module.init({"params": params_rng, "dropout": dropout_rng}, input_ids, mask, input_ids,
                                         mask, positions, positions)["params"]
        if params is None:
            return random_params
        return self._fill_missing(random_params, params, self._missing_keys or set())

    def checkpoint_constants(self) -> dict:
        table = L.sinusoidal_positions(self.config.max_position_embeddings, self.config.d_model)
        prefix = "model." if self.base_model_prefix in self._params_shape_tree else ""
        return {f"{prefix}{stack}.embed_positions.weight": table.copy() for stack in ("encoder", "decoder")}

    # ---------------------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs):
        """An empty decoder cache for ``batch_size`` sequences of up to ``max_length`` tokens, attending to
        ``encoder_outputs`` (only their shapes are used here)."""
        if not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if max_length > self.config.max_position_embeddings:
            raise ValueError(
                f"max_length must be at most max_position_embeddings={self.config.max_position_embeddings}, got {max_length}"
            )
        encoder_states = encoder_outputs[0]
        if np.ndim(encoder_states) != 3 or np.shape(encoder_states)[0] != batch_size:
            raise ValueError(
                f"encoder_outputs[0] must have shape (batch_size={batch_size}, sequence, d_model), "
                f"got {tuple(np.shape(encoder_states))}"
            )
        ids = jnp.ones((batch_size, max_length), dtype=jnp.int32)

        def init(ids, states):
            return self.module.init(jax.random.PRNGKey(0), ids, ids, L.default_positions(ids),
                                    encoder_hidden_states=states, init_cache=True, method="decode")["cache"]

        shapes = jax.eval_shape(init, ids, jax.ShapeDtypeStruct(np.shape(encoder_states), self.dtype))
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def _rngs(self, train: bool, dropout_rng):
        if dropout_rng is not None:
            return {"dropout": dropout_rng}
        if train:
            raise ValueError("dropout_rng must be given when train=True (a jax.random.PRNGKey for dropout), got None")
        return {}

    def encode(self, input_ids, attention_mask=None, position_ids=None, output_attentions: Optional[bool] = None,
               output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None, train: bool = False,
               params: Optional[dict] = None, dropout_rng=None):
        """Run the encoder: a ``FlaxBaseModelOutput`` (or a tuple with ``return_dict=False``)."""
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        input_ids = _ids("input_ids", input_ids, self.config.vocab_size)
        batch, length = input_ids.shape
        attention_mask = _mask("attention_mask", attention_mask, batch, (length,))
        position_ids = _positions("position_ids", position_ids, input_ids.shape, self.config.max_position_embeddings)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if position_ids is None:
            position_ids = L.default_positions(input_ids)
        output = self._apply(
            {"params": self._resolve_params(params)}, input_ids, attention_mask, position_ids, method="encode",
            rngs=self._rngs(train, dropout_rng), static=dict(output_attentions=output_attentions,
                                                             output_hidden_states=output_hidden_states,
                                                             deterministic=not train),
        )
        return output if return_dict else output.to_tuple()

    def decode(self, decoder_input_ids, encoder_outputs, encoder_attention_mask=None, decoder_attention_mask=None,
               decoder_position_ids=None, past_key_values: Optional[dict] = None,
               output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
               return_dict: Optional[bool] = None, train: bool = False, params: Optional[dict] = None,
               dropout_rng=None):
        """Run the decoder on ``decoder_input_ids`` attending to ``encoder_outputs``.

        With ``past_key_values`` (from :meth:`init_cache`, then from the previous call's output), the
        tokens are written into the cache after those already decoded, and ``decoder_position_ids``
        must say where they are; ``decoder_attention_mask`` then covers the cache's slots (or is (batch, 1)).
        """
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        config = self.config
        encoder_states = encoder_outputs[0]
        decoder_input_ids = _ids("decoder_input_ids", decoder_input_ids, config.vocab_size)
        batch, length = decoder_input_ids.shape
        if np.ndim(encoder_states) != 3 or np.shape(encoder_states)[0] != batch:
            raise ValueError(
                f"encoder_outputs[0] must have shape (batch={batch}, sequence, d_model), got {tuple(np.shape(encoder_states))}"
            )
        encoder_attention_mask = _mask("encoder_attention_mask", encoder_attention_mask, batch,
                                       (np.shape(encoder_states)[1],))
        variables = {"params": self._resolve_params(params)}
        mutable = False
        mask_lengths = (length,)
        if past_key_values is not None:
            if decoder_position_ids is None:
                raise ValueError(
                    "decoder_position_ids must be given with past_key_values: the cache does not know where the new "
                    "tokens stand, got None (pass e.g. the number of tokens already decoded)"
                )
            filled, slots = _cache_slots(past_key_values)
            if _concrete(filled) and int(filled) + length > slots:
                raise ValueError(
                    f"past_key_values has room for {slots} tokens (init_cache max_length={slots}) and holds {int(filled)}; "
                    f"decoding {length} more needs max_length >= {int(filled) + length}"
                )
            variables["cache"] = past_key_values
            mutable = ["cache"]
            mask_lengths = (slots, 1)
        decoder_attention_mask = _mask("decoder_attention_mask", decoder_attention_mask, batch, mask_lengths)
        decoder_position_ids = _positions("decoder_position_ids", decoder_position_ids, (batch, length),
                                          config.max_position_embeddings)
        if decoder_position_ids is None:
            decoder_position_ids = L.default_positions(decoder_input_ids)
        if encoder_attention_mask is None:
            encoder_attention_mask = jnp.ones(np.shape(encoder_states)[:2], dtype=jnp.int32)
        output = self._apply(
            variables, decoder_input_ids, decoder_attention_mask, decoder_position_ids, method="decode",
            mutable=mutable, rngs=self._rngs(train, dropout_rng),
            static=dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        deterministic=not train),
            encoder_hidden_states=jnp.asarray(encoder_states), encoder_attention_mask=encoder_attention_mask,
        )
        if past_key_values is not None:
            output, updated = output
            output = dataclasses.replace(output, past_key_values=updated["cache"])
        return output if return_dict else output.to_tuple()

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 position_ids=None, decoder_position_ids=None, output_attentions: Optional[bool] = None,
                 output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None, train: bool = False,
                 params: Optional[dict] = None, dropout_rng=None):
        output_attentions, output_hidden_states, return_dict = self._flags(output_attentions, output_hidden_states,
                                                                           return_dict)
        config = self.config
        input_ids = _ids("input_ids", input_ids, config.vocab_size)
        batch, length = input_ids.shape
        attention_mask = _mask("attention_mask", attention_mask, batch, (length,))
        position_ids = _positions("position_ids", position_ids, input_ids.shape, config.max_position_embeddings)
        if decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(input_ids, config.pad_token_id, config.decoder_start_token_id)
        decoder_input_ids = _ids("decoder_input_ids", decoder_input_ids, config.vocab_size)
        if decoder_input_ids.shape[0] != batch:
            raise ValueError(f"decoder_input_ids must have batch size {batch} like input_ids, got {decoder_input_ids.shape[0]}")
        decoder_length = decoder_input_ids.shape[1]
        decoder_attention_mask = _mask("decoder_attention_mask", decoder_attention_mask, batch, (decoder_length,))
        decoder_position_ids = _positions("decoder_position_ids", decoder_position_ids, decoder_input_ids.shape,
                                          config.max_position_embeddings)
        attention_mask = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        position_ids = L.default_positions(input_ids) if position_ids is None else position_ids
        if decoder_attention_mask is None:
            decoder_attention_mask = jnp.ones_like(decoder_input_ids)
        if decoder_position_ids is None:
            decoder_position_ids = L.default_positions(decoder_input_ids)
        output = self._apply(
            {"params": self._resolve_params(params)}, input_ids, attention_mask, decoder_input_ids,
            decoder_attention_mask, position_ids, decoder_position_ids, rngs=self._rngs(train, dropout_rng),
            static=dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        deterministic=not train),
        )
        return output if return_dict else output.to_tuple()


class FlaxPegasusModel(FlaxPegasusPreTrainedModel):
    """The bare Pegasus encoder-decoder, returning the decoder's last hidden states (no head)."""

    module_class = FlaxPegasusModule


class FlaxPegasusForConditionalGeneration(FlaxGenerationMixin, FlaxPegasusPreTrainedModel):
    """Pegasus with the language-modelling head, for summarisation; ``decode`` returns logits and
    ``generate`` decodes greedily, by beam search or by sampling in one compiled loop."""

    module_class = FlaxPegasusForConditionalGenerationModule

    def can_generate(self) -> bool:
        return True


__all__ = [
    "FlaxPegasusPreTrainedModel",
    "FlaxPegasusModel",
    "FlaxPegasusForConditionalGeneration",
]

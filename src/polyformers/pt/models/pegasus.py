"""Pegasus in PyTorch (Zhang et al., 2020): a pre-norm Transformer encoder-decoder pre-trained for
abstractive summarisation by generating the sentences removed from a document.

Read top-down: fixed sinusoidal positions, multi-head attention (self and cross, with the decoder's
key/value cache), the pre-norm encoder and decoder blocks, the two stacks (each ends with a LayerNorm,
as pre-norm stacks must), the bare model sharing one token embedding between both stacks, then the
summarisation head and the decoder-only language model. Module attribute names are the checkpoint
keys of the reference checkpoints.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _module
from torch.utils.checkpoint import checkpoint

from ...configs import PegasusConfig
from ...outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from .. import fused
from .. import layers as L
from ..cache import reorder_legacy_or_cache
from ..generation import GenerationMixin
from ..modeling import PreTrainedModel

logger = logging.getLogger("polyformers")


def shift_tokens_right(input_ids: torch.Tensor, pad_token_id: Optional[int], decoder_start_token_id: Optional[int]):
    """Teacher forcing: the decoder reads the labels one step late, after ``decoder_start_token_id``; the
    loss's ignored label -100 is not a token, so it becomes ``pad_token_id`` on the input side."""
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to shift labels into decoder inputs, got None")
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id must be set to shift labels into decoder inputs, got None")
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions, laid out as all sines then all cosines (not interleaved): column
    ``k`` of each half turns at ``10000 ** (-2k / dim)``. Computed in float64, like the original, so the
    float32 table is the same whichever library builds it."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    sines, cosines = (dim + 1) // 2, dim // 2
    frequencies = torch.pow(10000.0, -2.0 * torch.arange(sines, dtype=torch.float64) / dim)
    angles = positions * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles[:, :cosines])], dim=1).float()


class PegasusSinusoidalPositionalEmbedding(nn.Embedding):
    """The position table as a frozen embedding. The reference stores it in checkpoints like any weight
    (so a stored table is loaded as it is) and recomputes it when a checkpoint lacks it."""

    def __init__(self, num_positions: int, embedding_dim: int, padding_idx: Optional[int] = None):
        super().__init__(num_positions, embedding_dim)
        self.weight = nn.Parameter(sinusoidal_table(num_positions, embedding_dim), requires_grad=False)

    def reset_table(self) -> None:
        with torch.no_grad():
            self.weight.copy_(sinusoidal_table(*self.weight.shape))

    @torch.no_grad()
    def forward(self, input_ids_shape, past_key_values_length: int = 0, position_ids=None) -> torch.Tensor:
        """Positions ``past_key_values_length, ...`` for a (batch, sequence) input: (sequence, dim); or, with
        ``position_ids`` (batch, sequence), each row's own positions: (batch, sequence, dim)."""
        if position_ids is None:
            length = input_ids_shape[1]
            L.check_length(past_key_values_length + length, self.num_embeddings)
            return self.weight[past_key_values_length : past_key_values_length + length]
        if tuple(position_ids.shape) != tuple(input_ids_shape):
            raise ValueError(f"position_ids must have the inputs' shape (batch, sequence) = {tuple(input_ids_shape)}, "
                             f"got {tuple(position_ids.shape)}")
        L.check_ids("position_ids", position_ids, self.num_embeddings,
                    f"max_position_embeddings={self.num_embeddings}")
        return self.weight[position_ids.to(self.weight.device)]


# ---------------------------------------------------------------------------------------------------
# Attention and blocks


class PegasusAttention(nn.Module):
    """Multi-head attention. As cross-attention (``key_value_states`` given) it attends to the encoder's
    states; in the decoder it returns its (key, value) so the next step only projects the new tokens."""

    stack_order = ("q_proj", "k_proj", "v_proj")  # as stacked_linear reads them, not as defined

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, is_decoder: bool = False,
                 bias: bool = True):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"d_model ({embed_dim}) must be divisible by the number of attention heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.scaling = (embed_dim // num_heads) ** -0.5
        self.is_decoder = is_decoder
        self.k_proj = L.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = L.Linear(embed_dim, embed_dim, bias=bias)
        self.q_proj = L.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = L.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, hidden_states, key_value_states=None, past_key_value=None, attention_mask=None,
                layer_head_mask=None, output_attentions=False):
        if key_value_states is not None:
            query = L.split_heads(self.q_proj(hidden_states), self.num_heads)
            # The encoder's keys and values do not change while decoding: project them once. A cache of
            # another length belongs to other encoder states (the reference's prefix-tuning escape).
            if past_key_value is not None and past_key_value[0].shape[2] == key_value_states.shape[1]:
                key, value = past_key_value
            else:
                key, value = (L.split_heads(part, self.num_heads) for part in
                              L.stacked_linear(key_value_states, self.k_proj, self.v_proj).chunk(2, dim=-1))
        else:
            query, key, value = (L.split_heads(part, self.num_heads) for part in
                                 L.stacked_linear(hidden_states, self.q_proj, self.k_proj, self.v_proj).chunk(3, dim=-1))
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        context, probs = L.attend(
            query, key, value, attention_mask, scale=self.scaling,
            dropout=self.dropout if self.training else 0.0, head_mask=layer_head_mask, need_weights=output_attentions,
        )
        present = (key, value) if self.is_decoder else None
        return self.out_proj(L.merge_heads(context)), probs, present


def _feed_forward(block, hidden_states):
    # x + FFN(LayerNorm(x)), shared by both blocks; its weights are the blocks' own attributes (fc1, fc2,
    # final_layer_norm), which are the checkpoint keys, so it is a function rather than a submodule.
    residual = hidden_states
    hidden_states = block.activation_fn(block.fc1(block.final_layer_norm(hidden_states)))
    hidden_states = nn.functional.dropout(hidden_states, p=block.activation_dropout, training=block.training)
    hidden_states = nn.functional.dropout(block.fc2(hidden_states), p=block.dropout, training=block.training)
    return residual + hidden_states


class PegasusEncoderLayer(nn.Module):
    """Pre-norm block: x + SelfAttention(LayerNorm(x)), then x + FFN(LayerNorm(x))."""

    def __init__(self, config: PegasusConfig):
        super().__init__()
        self.embed_dim = config.d_model
        self.self_attn = PegasusAttention(self.embed_dim, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.dropout = config.dropout
        self.activation_fn = L.get_activation(config.activation_function)
        self.activation_dropout = config.activation_dropout
        self.fc1 = L.Linear(self.embed_dim, config.encoder_ffn_dim)
        self.fc2 = L.Linear(config.encoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)

    def forward(self, hidden_states, attention_mask=None, layer_head_mask=None, output_attentions=False):
        residual = hidden_states
        hidden_states, probs, _ = self.self_attn(
            self.self_attn_layer_norm(hidden_states), attention_mask=attention_mask, layer_head_mask=layer_head_mask,
            output_attentions=output_attentions,
        )
        hidden_states = residual + nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = _feed_forward(self, hidden_states)
        if hidden_states.dtype == torch.float16 and not bool(torch.isfinite(hidden_states).all()):
            # The residual stream of long float16 inputs can overflow; clamping keeps later layers finite.
            limit = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = hidden_states.clamp(min=-limit, max=limit)
        return hidden_states, probs


class PegasusDecoderLayer(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the encoder, feed-forward. Its cache is
    (self key, self value, cross key, cross value), or just the first two without an encoder."""

    def __init__(self, config: PegasusConfig):
        super().__init__()
        self.embed_dim = config.d_model
        heads = config.decoder_attention_heads
        self.self_attn = PegasusAttention(self.embed_dim, heads, config.attention_dropout, is_decoder=True)
        self.dropout = config.dropout
        self.activation_fn = L.get_activation(config.activation_function)
        self.activation_dropout = config.activation_dropout
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.encoder_attn = PegasusAttention(self.embed_dim, heads, config.attention_dropout, is_decoder=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.fc1 = L.Linear(self.embed_dim, config.decoder_ffn_dim)
        self.fc2 = L.Linear(config.decoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                layer_head_mask=None, cross_attn_layer_head_mask=None, past_key_value=None, output_attentions=False):
        residual = hidden_states
        self_past = past_key_value[:2] if past_key_value is not None else None
        hidden_states, self_probs, present = self.self_attn(
            self.self_attn_layer_norm(hidden_states), past_key_value=self_past, attention_mask=attention_mask,
            layer_head_mask=layer_head_mask, output_attentions=output_attentions,
        )
        hidden_states = residual + nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        cross_probs = None
        if encoder_hidden_states is not None:
            residual = hidden_states
            cross_past = past_key_value[2:] if past_key_value is not None and len(past_key_value) == 4 else None
            hidden_states, cross_probs, cross_present = self.encoder_attn(
                self.encoder_attn_layer_norm(hidden_states), key_value_states=encoder_hidden_states,
                past_key_value=cross_past, attention_mask=encoder_attention_mask,
                layer_head_mask=cross_attn_layer_head_mask, output_attentions=output_attentions,
            )
            hidden_states = residual + nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
            present = present + cross_present
        return _feed_forward(self, hidden_states), self_probs, cross_probs, present


# ---------------------------------------------------------------------------------------------------
# Input handling shared by the stacks


def _embed_inputs(stack, input_ids, inputs_embeds, prefix: str):
    """Token embeddings (scaled) of ``input_ids``, or the given ``inputs_embeds``; names the arguments
    as the caller knows them (``decoder_input_ids`` inside a seq2seq model)."""
    ids_name, embeds_name = f"{prefix}input_ids", f"{prefix}inputs_embeds"
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"pass exactly one of {ids_name} and {embeds_name}")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"{ids_name} must have shape (batch, sequence), got {tuple(input_ids.shape)}")
        vocab = stack.embed_tokens.num_embeddings
        L.check_ids(ids_name, input_ids, vocab, f"vocab_size={vocab}")
        return stack.embed_tokens(input_ids) * stack.embed_scale
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != stack.config.d_model:
        raise ValueError(
            f"{embeds_name} must have shape (batch, sequence, {stack.config.d_model}), got {tuple(inputs_embeds.shape)}"
        )
    return inputs_embeds


def _padding_mask(name: str, mask, batch: int, length: int):
    if mask is None:
        return None
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape (batch, sequence) = ({batch}, {length}), got {tuple(mask.shape)}")
    return mask


def _layer_head_masks(name: str, mask, layers: int, heads: int, dtype):
    """(layers, heads) multipliers of the attention probabilities -> one (1, heads, 1, 1) per layer."""
    if mask is None:
        return [None] * layers
    if tuple(mask.shape) != (layers, heads):
        raise ValueError(f"{name} must have shape (layers, heads) = ({layers}, {heads}), got {tuple(mask.shape)}")
    return [m.to(dtype)[None, :, None, None] for m in mask]


def _dropped(layerdrop: float, training: bool) -> bool:
    # LayerDrop (Fan et al., 2019): in training, skip a whole layer with probability ``layerdrop``.
    return training and layerdrop > 0 and bool(torch.rand([]) < layerdrop)


# ---------------------------------------------------------------------------------------------------
# The stacks


class _PegasusStack(nn.Module):
    """What the encoder and the decoder share: token embeddings (times ``sqrt(d_model)`` with
    ``scale_embedding``), the sinusoidal position table, ``num_layers`` blocks of ``layer_class``, a final
    LayerNorm. ``prefix`` is how the caller names this stack's arguments (``decoder_`` in a seq2seq model)."""

    main_input_name = "input_ids"

    def __init__(self, config: PegasusConfig, embed_tokens: Optional[nn.Embedding], prefix: str, layer_class: type,
                 num_layers: int, layerdrop: float):
        super().__init__()
        self.config = config
        self.dropout = config.dropout
        self.layerdrop = layerdrop
        self.padding_idx = config.pad_token_id
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = embed_tokens or nn.Embedding(config.vocab_size, config.d_model, self.padding_idx)
        self.embed_positions = PegasusSinusoidalPositionalEmbedding(
            config.max_position_embeddings, config.d_model, self.padding_idx
        )
        self.layers = nn.ModuleList(layer_class(config) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(config.d_model)
        self.gradient_checkpointing = False
        self._prefix = prefix

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_position_embeddings(self) -> nn.Embedding:
        return self.embed_positions

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        """A new sinusoidal table of ``new_num_position_embeddings`` rows (the table is not learned)."""
        self.config.max_position_embeddings = new_num_position_embeddings
        device = self.embed_positions.weight.device
        self.embed_positions = PegasusSinusoidalPositionalEmbedding(
            new_num_position_embeddings, self.config.d_model, self.padding_idx
        ).to(device)


class PegasusEncoder(_PegasusStack):
    """Token embeddings plus sinusoidal positions, ``encoder_layers`` pre-norm blocks, and a final LayerNorm."""

    def __init__(self, config: PegasusConfig, embed_tokens: Optional[nn.Embedding] = None, prefix: str = ""):
        super().__init__(config, embed_tokens, prefix, PegasusEncoderLayer, config.encoder_layers,
                         config.encoder_layerdrop)
        self.max_source_positions = config.max_position_embeddings

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = L.output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        inputs_embeds = _embed_inputs(self, input_ids, inputs_embeds, self._prefix)
        batch, length = inputs_embeds.shape[:2]
        dtype = inputs_embeds.dtype
        hidden = inputs_embeds + self.embed_positions((batch, length)).to(dtype)
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)
        mask = _padding_mask("attention_mask", attention_mask, batch, length)
        bias = L.additive_padding_mask(mask, dtype) if mask is not None else None
        head_masks = _layer_head_masks("head_mask", head_mask, len(self.layers), self.config.encoder_attention_heads,
                                       dtype)

        all_hidden = () if output_hidden_states else None
        all_attn = () if output_attentions else None
        for layer, layer_head_mask in zip(self.layers, head_masks):
            if output_hidden_states:
                all_hidden += (hidden,)
            probs = None
            if not _dropped(self.layerdrop, self.training):
                args = (hidden, bias, layer_head_mask, output_attentions)
                if self.gradient_checkpointing and self.training:
                    hidden, probs = checkpoint(layer, *args, use_reentrant=False)
                else:
                    hidden, probs = layer(*args)
            if output_attentions:
                all_attn += (probs,)
        hidden = self.layer_norm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        if not return_dict:
            return tuple(v for v in (hidden, all_hidden, all_attn) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=all_hidden, attentions=all_attn)


class PegasusDecoder(_PegasusStack):
    """The encoder's embeddings and positions (positions continue after the cached ones), then
    ``decoder_layers`` pre-norm blocks with causal self-attention and cross-attention, and a final
    LayerNorm."""

    def __init__(self, config: PegasusConfig, embed_tokens: Optional[nn.Embedding] = None, prefix: str = ""):
        super().__init__(config, embed_tokens, prefix, PegasusDecoderLayer, config.decoder_layers,
                         config.decoder_layerdrop)
        self.max_target_positions = config.max_position_embeddings

    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                head_mask=None, cross_attn_head_mask=None, past_key_values=None, inputs_embeds=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, position_ids=None):
        """As the reference's; beyond it, ``position_ids`` (batch, sequence) gives each row its own positions
        (by default they continue after the cached ones, the same for every row), for a batch whose rows
        have cached different lengths and mask the rest (what ``polyformers serve`` decodes)."""
        config, prefix = self.config, self._prefix
        output_attentions, output_hidden_states, return_dict = L.output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning("use_cache=True cannot be used with gradient checkpointing in training; not caching")
            use_cache = False
        inputs_embeds = _embed_inputs(self, input_ids, inputs_embeds, prefix)
        batch, length = inputs_embeds.shape[:2]
        dtype = inputs_embeds.dtype
        past_length = past_key_values[0][0].shape[2] if past_key_values else 0
        if past_key_values and len(past_key_values) != len(self.layers):
            raise ValueError(
                f"past_key_values holds {len(past_key_values)} layers, the decoder has {len(self.layers)}"
            )

        mask = _padding_mask(f"{prefix}attention_mask", attention_mask, batch, past_length + length)
        if mask is None:
            mask = torch.ones(batch, past_length + length, dtype=torch.long, device=inputs_embeds.device)
        bias = L.additive_causal_mask(mask, length, dtype)
        cross_bias = None
        if encoder_hidden_states is not None and (
                encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != batch
                or encoder_hidden_states.shape[2] != config.d_model):
            name = "encoder_outputs.last_hidden_state" if prefix else "encoder_hidden_states"
            raise ValueError(
                f"{name} must have shape (batch, source length, d_model) = ({batch}, *, {config.d_model}), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_mask = _padding_mask("encoder_attention_mask" if not prefix else "attention_mask",
                                         encoder_attention_mask, batch, encoder_hidden_states.shape[1])
            cross_bias = L.additive_padding_mask(encoder_mask, dtype)
        heads = config.decoder_attention_heads
        head_masks = _layer_head_masks(f"{prefix}head_mask", head_mask, len(self.layers), heads, dtype)
        cross_head_masks = _layer_head_masks("cross_attn_head_mask", cross_attn_head_mask, len(self.layers), heads,
                                             dtype)

        hidden = inputs_embeds + self.embed_positions((batch, length), past_length, position_ids).to(dtype)
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)
        all_hidden = () if output_hidden_states else None
        all_attn = () if output_attentions else None
        all_cross = () if output_attentions and encoder_hidden_states is not None else None
        cache = () if use_cache else None
        compiled = None  # a decoding step's blocks in one compiled call, where it gives the same bits
        if (past_key_values and encoder_hidden_states is not None and use_cache and not output_attentions
                and not output_hidden_states and head_mask is None and cross_attn_head_mask is None):
            compiled = fused.cross_blocks(self, hidden, bias, cross_bias, encoder_hidden_states, past_key_values)
        if compiled is not None:
            hidden, cache = compiled
        for i, layer in enumerate(self.layers if compiled is None else ()):
            if output_hidden_states:
                all_hidden += (hidden,)
            if _dropped(self.layerdrop, self.training):
                continue
            past = past_key_values[i] if past_key_values else None
            args = (hidden, bias, encoder_hidden_states, cross_bias, head_masks[i], cross_head_masks[i], past,
                    output_attentions)
            if self.gradient_checkpointing and self.training:
                hidden, probs, cross_probs, present = checkpoint(layer, *args, use_reentrant=False)
            else:
                hidden, probs, cross_probs, present = layer(*args)
            cache, all_attn, all_cross = L.collect_layer_outputs(cache, all_attn, all_cross, present, probs,
                                                                 cross_probs)
        hidden = self.layer_norm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        if not return_dict:
            return tuple(v for v in (hidden, cache, all_hidden, all_attn, all_cross) if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden, past_key_values=cache, hidden_states=all_hidden, attentions=all_attn,
            cross_attentions=all_cross,
        )


# ---------------------------------------------------------------------------------------------------
# Models


class PegasusPreTrainedModel(PreTrainedModel):
    # The first forward stacks the attention projections; mapped, their pages would stay resident too.
    _keys_loaded_unmapped = [r"(self_attn|encoder_attn)\.[qkv]_proj\.(weight|bias)$"]
    config_class = PegasusConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, PegasusSinusoidalPositionalEmbedding):
            module.reset_table()  # fixed, not drawn: a checkpoint without it gets the exact table
        else:
            L.init_normal_weights(module, self.config.init_std)


def _as_encoder_output(encoder_outputs) -> BaseModelOutput:
    """``encoder_outputs`` as given by a caller that ran the encoder itself: a BaseModelOutput, or a
    tuple (last hidden state[, hidden states[, attentions]])."""
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    if isinstance(encoder_outputs, torch.Tensor) or not isinstance(encoder_outputs, (tuple, list)) \
            or not encoder_outputs or not isinstance(encoder_outputs[0], torch.Tensor):
        raise TypeError(
            "encoder_outputs must be a BaseModelOutput or a tuple (last_hidden_state, [hidden_states, "
            f"[attentions]]), got {type(encoder_outputs).__name__}"
        )
    return BaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
        attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
    )


class PegasusModel(PegasusPreTrainedModel):
    """The bare encoder-decoder: decoder states for ``decoder_input_ids`` given the source ``input_ids``.
    Encoder and decoder share the token embedding ``shared``; ``encoder_outputs`` from an earlier call
    skip the encoder."""

    _tied_weights_keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

    def __init__(self, config: PegasusConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = PegasusEncoder(config, self.shared)
        self.decoder = PegasusDecoder(config, self.shared, prefix="decoder_")
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def get_position_embeddings(self) -> tuple:
        return self.encoder.get_position_embeddings(), self.decoder.get_position_embeddings()

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        self.encoder.resize_position_embeddings(new_num_position_embeddings)
        self.decoder.resize_position_embeddings(new_num_position_embeddings)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = L.output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask, head_mask, inputs_embeds, output_attentions,
                                           output_hidden_states, return_dict=True)
        else:
            encoder_outputs = _as_encoder_output(encoder_outputs)
        decoder_outputs = self.decoder(
            decoder_input_ids, decoder_attention_mask, encoder_outputs.last_hidden_state, attention_mask,
            decoder_head_mask, cross_attn_head_mask, past_key_values, decoder_inputs_embeds, use_cache,
            output_attentions, output_hidden_states, return_dict=True,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return L.pack_output(output, return_dict)


def _biased_logits(head: nn.Module, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``head(hidden) + bias``. For a decoding step's few rows through a plain float32 head without hooks, the
    bias goes into the product: polyformers' kernel adds it to each sum as it writes it, the same bits as adding
    it afterwards, and one pass less over the vocabulary's scores (about 0.1 ms a step of the reduced Pegasus,
    whose 96103 scores a step are cold by then)."""
    bias = bias.to(hidden.dtype)
    if (type(head) is L.Linear and head.bias is None and not torch.is_grad_enabled()
            and not (head._forward_hooks or head._forward_pre_hooks)
            and not (_module._global_forward_hooks or _module._global_forward_pre_hooks)):
        row = bias.reshape(-1).contiguous()
        if L.takes_row_kernel(hidden, head.weight, row):
            return L.linear(hidden, head.weight, row)
    return head(hidden) + bias


class PegasusForConditionalGeneration(GenerationMixin, PegasusPreTrainedModel):
    """Pegasus with its language-modelling head, for summarisation: the head is tied to the shared
    embedding and adds ``final_logits_bias``. ``labels`` (-100 ignored) give the loss and, shifted right
    after ``decoder_start_token_id``, the decoder inputs when none are given."""

    _keys_to_ignore_on_load_missing = ["final_logits_bias"]
    _tied_weights_keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    _output_embeddings = "lm_head"

    def __init__(self, config: PegasusConfig):
        super().__init__(config)
        self.model = PegasusModel(config)
        # A buffer, not a parameter: checkpoints carry it, training does not move it.
        self.register_buffer("final_logits_bias", torch.zeros((1, self.model.shared.num_embeddings)))
        self.lm_head = L.Linear(config.d_model, self.model.shared.num_embeddings, bias=False)
        self.post_init()

    def get_encoder(self):
        return self.model.get_encoder()

    def get_decoder(self):
        return self.model.get_decoder()

    def get_position_embeddings(self) -> tuple:
        return self.model.get_position_embeddings()

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        self.model.resize_position_embeddings(new_num_position_embeddings)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None) -> nn.Embedding:
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of)
        rows = embeddings.num_embeddings
        old = self.final_logits_bias
        if rows <= old.shape[-1]:
            bias = old[:, :rows]
        else:
            bias = torch.cat([old, old.new_zeros((1, rows - old.shape[-1]))], dim=1)
        self.register_buffer("final_logits_bias", bias)
        return embeddings

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        if labels is not None:
            if use_cache:
                logger.warning("use_cache=True is ignored when labels are given (training computes no cache)")
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        body = self.model(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, head_mask, decoder_head_mask,
            cross_attn_head_mask, encoder_outputs, past_key_values, inputs_embeds, decoder_inputs_embeds, use_cache,
            output_attentions, output_hidden_states, return_dict=True,
        )
        logits = _biased_logits(self.lm_head, body.last_hidden_state, self.final_logits_bias)
        return L.labelled_output(Seq2SeqLMOutput, logits, labels, body, return_dict, self.config)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def prepare_inputs_for_generation(self, decoder_input_ids, past_key_values=None, attention_mask=None,
                                      head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None,
                                      use_cache=None, encoder_outputs=None, **kwargs):
        # The encoder ran once before decoding; each step feeds only the tokens the cache has not seen.
        # As in the reference, a decoder_attention_mask given to generate is not passed on.
        if past_key_values is not None:
            decoder_input_ids = L.uncached_tokens(decoder_input_ids, past_key_values)
        return {
            "input_ids": None,
            "encoder_outputs": encoder_outputs,
            "past_key_values": past_key_values,
            "decoder_input_ids": decoder_input_ids,
            "attention_mask": attention_mask,
            "head_mask": head_mask,
            "decoder_head_mask": decoder_head_mask,
            "cross_attn_head_mask": cross_attn_head_mask,
            "use_cache": use_cache,
        }

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        # Beams of one source share its encoder states, so only the self-attention part needs reordering.
        return tuple(
            tuple(state.index_select(0, beam_idx.to(state.device)) for state in layer[:2]) + tuple(layer[2:])
            for layer in past_key_values
        )


class PegasusDecoderWrapper(PegasusPreTrainedModel):
    """Holds the decoder under ``decoder`` so that a decoder-only model has the seq2seq checkpoint keys
    (``model.decoder.*``)."""

    _input_embeddings = "decoder.embed_tokens"

    def __init__(self, config: PegasusConfig):
        super().__init__(config)
        self.decoder = PegasusDecoder(config)
        self.post_init()

    def forward(self, *args, **kwargs):
        return self.decoder(*args, **kwargs)


class PegasusForCausalLM(GenerationMixin, PegasusPreTrainedModel):
    """Pegasus's decoder alone as a left-to-right language model (cross-attention is used when
    ``encoder_hidden_states`` are given). ``labels`` are compared position by position with the logits,
    not shifted: pass the next tokens; -100 is ignored."""

    _tied_weights_keys = ["lm_head.weight"]
    _output_embeddings = "lm_head"

    def __init__(self, config: PegasusConfig):
        # The decoder runs on its own: a private copy of the config says so without changing the caller's.
        config = copy.deepcopy(config)
        config.is_decoder = True
        config.is_encoder_decoder = False
        super().__init__(config)
        self.model = PegasusDecoderWrapper(config)
        self.lm_head = L.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_decoder(self):
        return self.model.decoder

    def set_decoder(self, decoder):
        self.model.decoder = decoder

    def get_position_embeddings(self) -> nn.Embedding:
        return self.model.decoder.get_position_embeddings()

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        self.model.decoder.resize_position_embeddings(new_num_position_embeddings)

    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                head_mask=None, cross_attn_head_mask=None, past_key_values=None, inputs_embeds=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.model.decoder(
            input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, head_mask, cross_attn_head_mask,
            past_key_values, inputs_embeds, use_cache, output_attentions, output_hidden_states, return_dict=True,
        )
        logits = self.lm_head(body.last_hidden_state)
        return L.labelled_output(CausalLMOutputWithCrossAttentions, logits, labels, body, return_dict, self.config)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, use_cache=None,
                                      **kwargs):
        # Positions count from the first column even for left-padded prompts, as in the reference.
        if attention_mask is None:
            attention_mask = input_ids.new_ones(input_ids.shape)
        if past_key_values:
            input_ids = L.uncached_tokens(input_ids, past_key_values)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values,
                "use_cache": use_cache}

    _reorder_cache = staticmethod(reorder_legacy_or_cache)

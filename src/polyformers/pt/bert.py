"""The BERT encoder stack, shared by the families that kept it unchanged (ELECTRA, RoBERTa), and the
forwards of the task heads they both put on it.

Post-norm blocks of multi-head self-attention (optionally with Shaw-style relative positions), optional
cross-attention for decoders, and a feed-forward layer. Attribute names are the reference checkpoints'
keys (``attention.self.query``, ``attention.output.LayerNorm``, ``intermediate.dense``, ...), so a family
composes :class:`BertEncoder` under ``encoder`` and its checkpoints load as they are.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._shared import check_cross_attention, checked_position_embedding_type
from ..outputs import CausalLMOutputWithCrossAttentions, TokenClassifierOutput
from . import layers as L
from .unpad import Packing


# The self-attention projections the first forward stacks into one matrix (``L.stacked_linear``); the
# loader reads them unmapped so that the stacked copy does not sit beside their resident mapped pages.
STACKED_KEYS = [r"attention\.self\.(query|key|value)\.(weight|bias)$"]


class BertEmbeddings(nn.Module):
    """BERT's input layer: word + token-type (+ absolute position) embeddings, LayerNorm and dropout, in
    ``width`` dimensions. Families subclass it for how positions are numbered (ELECTRA counts from 0,
    RoBERTa after the padding index)."""

    def __init__(self, config, width: int, position_padding_idx: Optional[int] = None):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width,
                                                padding_idx=position_padding_idx)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_embedding_type = getattr(config, "position_embedding_type", "absolute")
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None, :], persistent=False)

    def combine(self, inputs_embeds, token_type_ids, position_ids):
        """The sum of the embeddings (positions only when absolute), normalised and dropped out."""
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.position_embedding_type == "absolute":
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """Multi-head attention. In a decoder it keeps (key, value) per layer; as cross-attention it attends
    to the encoder's states, whose projections are cached once and reused at every decoding step."""

    def __init__(self, config, position_embedding_type: Optional[str] = None):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = L.attention_head_size(config.hidden_size, config.num_attention_heads)
        self.query = L.Linear(config.hidden_size, config.hidden_size)
        self.key = L.Linear(config.hidden_size, config.hidden_size)
        self.value = L.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.position_embedding_type = checked_position_embedding_type(config, position_embedding_type)
        self.max_position_embeddings = config.max_position_embeddings
        if self.position_embedding_type != "absolute":
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.head_size)
        self.is_decoder = config.is_decoder

    def _relative_bias(self, query, key, use_cache: bool):
        # Shaw et al. relative positions: a learned vector per clipped distance, dotted with the query
        # (and with the key for "relative_key_query"). The reference adds it before the 1/sqrt(d) scaling.
        q_len, k_len = query.shape[2], key.shape[2]
        if use_cache:
            left = torch.full((1, 1), k_len - 1, dtype=torch.long, device=query.device)
        else:
            left = torch.arange(q_len, device=query.device)[:, None]
        right = torch.arange(k_len, device=query.device)[None, :]
        distance = self.distance_embedding(left - right + self.max_position_embeddings - 1).to(query.dtype)
        bias = torch.einsum("bhld,lrd->bhlr", query, distance)
        if self.position_embedding_type == "relative_key_query":
            bias = bias + torch.einsum("bhrd,lrd->bhlr", key, distance)
        return bias / (self.head_size**0.5)

    def forward(self, hidden_states, mask=None, head_mask=None, encoder_hidden_states=None, past_key_value=None,
                output_attentions=False, packing: Optional[Packing] = None):
        # Packed (tokens, hidden) states go back to the padded layout for the attention product only.
        split_heads = L.split_heads if packing is None else packing.split_heads
        merge_heads = L.merge_heads if packing is None else packing.merge_heads
        cross = encoder_hidden_states is not None
        if cross:
            query = split_heads(self.query(hidden_states), self.num_heads)
            if past_key_value is not None:
                key, value = past_key_value
            else:
                key, value = (split_heads(part, self.num_heads) for part in
                              L.stacked_linear(encoder_hidden_states, self.key, self.value).chunk(2, dim=-1))
        else:
            query, key, value = (split_heads(part, self.num_heads) for part in
                                 L.stacked_linear(hidden_states, self.query, self.key, self.value).chunk(3, dim=-1))
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        bias = mask
        if self.position_embedding_type != "absolute":
            relative = self._relative_bias(query, key, use_cache=past_key_value is not None)
            bias = relative if bias is None else bias + relative
        context, probs = L.attend(
            query, key, value, bias,
            dropout=self.dropout_prob if self.training else 0.0,
            head_mask=head_mask,
            need_weights=output_attentions,
        )
        present = (key, value) if self.is_decoder else None
        return merge_heads(context), probs, present


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = L.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config, position_embedding_type: Optional[str] = None):
        super().__init__()
        self.self = BertSelfAttention(config, position_embedding_type)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, mask=None, head_mask=None, encoder_hidden_states=None, past_key_value=None,
                output_attentions=False, packing: Optional[Packing] = None):
        context, probs, present = self.self(
            hidden_states, mask, head_mask, encoder_hidden_states, past_key_value, output_attentions, packing
        )
        return self.output(context, hidden_states), probs, present


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = L.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = L.get_activation(config.hidden_act)

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(BertSelfOutput):
    def __init__(self, config):
        nn.Module.__init__(self)
        self.dense = L.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


class BertLayer(nn.Module):
    """Post-norm transformer block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        if self.add_cross_attention:
            if not self.is_decoder:
                raise ValueError("add_cross_attention=True needs is_decoder=True (cross-attention is a decoder feature)")
            self.crossattention = BertAttention(config, position_embedding_type="absolute")
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, mask=None, head_mask=None, encoder_hidden_states=None, encoder_mask=None,
                past_key_value=None, output_attentions=False, packing: Optional[Packing] = None):
        # A decoder layer's cache is (self key, self value, cross key, cross value).
        self_past = past_key_value[:2] if past_key_value is not None else None
        hidden_states, self_probs, present = self.attention(
            hidden_states, mask, head_mask, past_key_value=self_past, output_attentions=output_attentions,
            packing=packing,
        )
        cross_probs = None
        if self.is_decoder and encoder_hidden_states is not None:
            check_cross_attention(self.add_cross_attention)
            cross_past = past_key_value[-2:] if past_key_value is not None and len(past_key_value) == 4 else None
            hidden_states, cross_probs, cross_present = self.crossattention(
                hidden_states, encoder_mask, head_mask, encoder_hidden_states, cross_past, output_attentions
            )
            present = present + cross_present
        hidden_states = self.output(self.intermediate(hidden_states), hidden_states)
        return hidden_states, self_probs, cross_probs, present


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self.skip_padding = False  # see pt/unpad.py

    def forward(self, hidden_states, mask, head_masks, encoder_hidden_states, encoder_mask, past_key_values,
                use_cache, output_attentions, output_hidden_states):
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        all_cross = () if output_attentions and self.config.add_cross_attention else None
        cache = () if use_cache else None
        packing = None
        if self.skip_padding and not (self.training or self.config.is_decoder or output_attentions
                                      or any(m is not None for m in head_masks)):
            packing = Packing.from_additive_mask(mask)
        if packing is not None:
            hidden_states = packing.pack(hidden_states)
        for i, layer in enumerate(self.layer):
            past = past_key_values[i] if past_key_values is not None else None
            args = (hidden_states, mask, head_masks[i], encoder_hidden_states, encoder_mask, past, output_attentions)
            if self.gradient_checkpointing and self.training:
                hidden_states, probs, cross_probs, present = checkpoint(layer, *args, use_reentrant=False)
            else:
                hidden_states, probs, cross_probs, present = layer(*args, packing=packing)
            cache, all_attn, all_cross = L.collect_layer_outputs(cache, all_attn, all_cross, present, probs,
                                                                 cross_probs)
            if output_hidden_states:
                all_hidden += (hidden_states if packing is None else packing.unpack(hidden_states),)
        if packing is not None:
            hidden_states = all_hidden[-1] if output_hidden_states else packing.unpack(hidden_states)
        return hidden_states, cache, all_hidden, all_attn, all_cross


def prepare_encoder_inputs(config, input_ids, inputs_embeds, embedding_size, attention_mask, head_mask,
                           encoder_hidden_states, encoder_attention_mask, past_key_values, dtype):
    """Validate the inputs of a BERT-style model and build its additive masks.

    Returns ``(batch, length, past_length, mask, encoder_mask, head_masks)``; the causal mask is used when
    the config is a decoder, the encoder mask only when a decoder is given encoder states.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence), got {tuple(input_ids.shape)}")
        L.check_ids("input_ids", input_ids, config.vocab_size, f"vocab_size={config.vocab_size}")
        batch, length = input_ids.shape
        device = input_ids.device
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != embedding_size:
            raise ValueError(
                f"inputs_embeds must have shape (batch, sequence, {embedding_size}), got {tuple(inputs_embeds.shape)}"
            )
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
    past_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
    if attention_mask is None:
        attention_mask = torch.ones(batch, past_length + length, device=device)
    L.check_mask_shape("attention_mask", attention_mask, (batch, past_length + length))
    if config.is_decoder and attention_mask.dim() == 2:
        mask = L.additive_causal_mask(attention_mask, length, dtype)
    else:
        mask = L.additive_padding_mask(attention_mask, dtype)
    encoder_mask = None
    if config.is_decoder and encoder_hidden_states is not None:
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], device=device)
        L.check_mask_shape("encoder_attention_mask", encoder_attention_mask, tuple(encoder_hidden_states.shape[:2]))
        encoder_mask = L.additive_padding_mask(encoder_attention_mask, dtype)
    head_masks = L.expand_head_mask(head_mask, config.num_hidden_layers, dtype)
    return batch, length, past_length, mask, encoder_mask, head_masks


# ---------------------------------------------------------------------------------------------------
# Task heads over a BERT body (ELECTRA, RoBERTa). The body is the model's ``base_model`` (the module under
# its ``base_model_prefix``, ``electra`` or ``roberta``: its checkpoint key); a family class takes these
# functions as its ``forward``, so that argument names, order and defaults are the reference's.


def encode(model, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
           output_attentions, output_hidden_states):
    """The body of a head model run as an encoder on its inputs, returning its ModelOutput."""
    return model.base_model(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            return_dict=True)


def sequence_classification_forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                                    position_ids=None, head_mask=None, inputs_embeds=None, labels=None,
                                    output_attentions=None, output_hidden_states=None, return_dict=None):
    """``self.classifier`` on the final hidden states (the head picks its token itself); with ``labels``,
    the loss ``config.problem_type`` chooses."""
    body = encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                  output_attentions, output_hidden_states)
    return L.classifier_output(self.classifier(body.last_hidden_state), labels, body, return_dict, self.config)


def token_classification_forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                                 position_ids=None, head_mask=None, inputs_embeds=None, labels=None,
                                 output_attentions=None, output_hidden_states=None, return_dict=None):
    """``self.classifier`` on every token's final state after ``self.dropout``; with ``labels``, their
    cross-entropy (-100 ignored)."""
    body = encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                  output_attentions, output_hidden_states)
    logits = self.classifier(self.dropout(body.last_hidden_state))
    return L.labelled_output(TokenClassifierOutput, logits, labels, body, return_dict, self.config)


def question_answering_forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                               position_ids=None, head_mask=None, inputs_embeds=None, start_positions=None,
                               end_positions=None, output_attentions=None, output_hidden_states=None,
                               return_dict=None):
    """Start and end logits from ``self.qa_outputs``; with both positions, the span loss."""
    body = encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                  output_attentions, output_hidden_states)
    return L.span_output(self.qa_outputs(body.last_hidden_state), start_positions, end_positions, body,
                         return_dict, self.config)


def causal_lm_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                      head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                      labels=None, past_key_values=None, use_cache=None, output_attentions=None,
                      output_hidden_states=None, return_dict=None):
    """Vocabulary logits from the body run as a decoder, through the model's ``_lm_logits``; with ``labels``
    (the input ids: shifted inside the loss, -100 ignored) no cache is returned."""
    if labels is not None:
        use_cache = False
    body = self.base_model(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                           encoder_hidden_states, encoder_attention_mask, past_key_values, use_cache,
                           output_attentions, output_hidden_states, return_dict=True)
    return L.labelled_output(CausalLMOutputWithCrossAttentions, self._lm_logits(body.last_hidden_state), labels,
                             body, return_dict, self.config, L.causal_lm_loss)

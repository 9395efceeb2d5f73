"""RoBERTa in Keras 3 (Liu et al., 2019): BERT's architecture, pre-trained longer on more text with
dynamic masking and no next-sentence objective.

Read top-down: the main layer (fairseq position numbering, the BERT encoder stack of ``keras/layers.py``,
the pooler), the bare model, then the heads. Attribute names are the PyTorch checkpoint's module names,
so the canonical safetensors load by rule.
"""

from __future__ import annotations

import logging

import numpy as np

from ...configs import RobertaConfig
from ...outputs import (
    TFBaseModelOutputWithPoolingAndCrossAttentions,
    TFCausalLMOutputWithCrossAttentions,
    TFMaskedLMOutput,
    TFMultipleChoiceModelOutput,
    TFQuestionAnsweringModelOutput,
    TFSequenceClassifierOutput,
    TFTokenClassifierOutput,
)
from .. import layers as L
from ..generation import TFGenerationMixin
from ..modeling import TFPreTrainedModel, as_output, unpack_inputs

import keras  # noqa: E402  (after polyformers.keras has chosen the backend)
from keras import ops

logger = logging.getLogger("polyformers")

# Tensor-parallel layout for keras.distribution.ModelParallel (polyformers.keras.distribution.layout_map):
# the BERT stack's rules; embeddings and heads stay replicated.
LAYOUT_RULES = L.BERT_LAYOUT_RULES


class TFRobertaMainLayer(L.Block):
    """Embeddings, the encoder (or decoder) stack and, with ``add_pooling_layer``, the pooler.

    RoBERTa's one architectural quirk is its positions: fairseq numbers real tokens after the padding
    index and gives padding tokens the padding position."""

    def __init__(self, config: RobertaConfig, add_pooling_layer: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = L.BertEmbeddings(config)
        self.encoder = L.BertEncoder(config)
        self.pooler = L.BertPooler(config) if add_pooling_layer else None

    def _positions(self, input_ids, inputs_embeds, past_length):
        padding_idx = self.config.pad_token_id
        if padding_idx is None:
            raise ValueError(
                "RoBERTa numbers positions after config.pad_token_id, which is None; set it or pass position_ids"
            )
        if input_ids is not None:
            name, positions = "input_ids", L.position_ids_after_padding(input_ids, padding_idx, past_length)
        else:
            # Embeddings do not say which rows are padding: every token gets the next position (cached
            # positions are not added, as in the reference).
            batch, length = ops.shape(inputs_embeds)[0], ops.shape(inputs_embeds)[1]
            positions = ops.broadcast_to(ops.arange(padding_idx + 1, padding_idx + 1 + length)[None], (batch, length))
            name = "inputs_embeds"
        table = self.config.max_position_embeddings
        values = L.concrete(positions)
        if values is not None and values.size and int(values.max()) >= table:
            raise ValueError(
                f"{name} holds a sequence of {int(values.max()) - padding_idx} positions (non-padding tokens, cached "
                f"ones included), expected at most {table - padding_idx - 1}: RoBERTa positions start at "
                f"pad_token_id + 1 = {padding_idx + 1} and max_position_embeddings is {table}"
            )
        return positions

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=False, output_hidden_states=False, training=False):
        config = self.config
        # Only a decoder caches, by default when config.use_cache says so.
        use_cache = bool(config.use_cache if use_cache is None else use_cache) and config.is_decoder
        past_length, mask, encoder_mask, head_masks = L.prepare_encoder_inputs(
            config, input_ids, inputs_embeds, config.hidden_size, attention_mask, head_mask,
            encoder_hidden_states, encoder_attention_mask, past_key_values, self.compute_dtype,
        )
        L.check_ids("token_type_ids", token_type_ids, config.type_vocab_size,
                    f"type_vocab_size={config.type_vocab_size}")
        L.check_ids("position_ids", position_ids, config.max_position_embeddings,
                    f"max_position_embeddings={config.max_position_embeddings}")
        if position_ids is None and self.embeddings.position_embedding_type == "absolute":
            position_ids = self._positions(input_ids, inputs_embeds, past_length)

        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, training=training)
        hidden, cache, all_hidden, all_attn, all_cross = self.encoder(
            hidden, mask, head_masks, encoder_hidden_states, encoder_mask, past_key_values, use_cache,
            output_attentions, output_hidden_states, training=training,
        )
        return TFBaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden, pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            past_key_values=cache, hidden_states=all_hidden, attentions=all_attn, cross_attentions=all_cross,
        )


class TFRobertaPreTrainedModel(TFPreTrainedModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"


class TFRobertaModel(TFRobertaPreTrainedModel):
    """The bare RoBERTa encoder (or decoder, with ``is_decoder``; cross-attention with
    ``add_cross_attention``): hidden states and the pooled first token."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.roberta = TFRobertaMainLayer(config, name="roberta")

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, training=False):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        output = self.roberta(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds, encoder_hidden_states,
            encoder_attention_mask, past_key_values, use_cache, output_attentions, output_hidden_states,
            training=training,
        )
        return as_output(output, return_dict)


class TFRobertaLMHead(L.Block):
    """Dense, GELU, LayerNorm, then the projection onto the vocabulary: the word embedding matrix
    (transposed) unless ``tie_word_embeddings`` is off, plus a vocabulary bias."""

    def __init__(self, config: RobertaConfig, input_embeddings, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.dense(config.hidden_size, config)
        self.layer_norm = L.layer_norm(config)
        self.activation = L.get_activation("gelu")
        self.tied = getattr(config, "tie_word_embeddings", True)
        # A tied head reads the embedding layer's matrix without tracking that layer as its own: one
        # variable, trained once and saved under the embedding's key.
        self._embedding_matrix = lambda: input_embeddings.embeddings
        if not self.tied:
            self.decoder = L.dense(config.vocab_size, config, use_bias=False)
        self.bias = self.add_weight(name="bias", shape=(config.vocab_size,), initializer="zeros")

    def call(self, features):
        hidden = self.layer_norm(self.activation(self.dense(features)))
        if self.tied:
            logits = ops.matmul(hidden, ops.transpose(ops.cast(self._embedding_matrix(), hidden.dtype)))
        else:
            logits = self.decoder(hidden)
        return logits + ops.cast(self.bias, logits.dtype)


class _TFRobertaLMHeadModel(TFRobertaPreTrainedModel):
    """Shared by the masked and causal language models: the main layer without pooler, and the LM head."""

    # A tied head has no matrix of its own; PyTorch checkpoints still name it (and the bias twice).
    _keys_to_ignore_on_load_unexpected = [
        r"\.position_ids$", r"^lm_head\.decoder\.weight$", r"^lm_head\.decoder\.bias$"
    ]

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.roberta = TFRobertaMainLayer(config, add_pooling_layer=False, name="roberta")
        self.lm_head = TFRobertaLMHead(config, self.roberta.embeddings.word_embeddings, name="lm_head")

    def get_output_embeddings(self):
        return self.lm_head


class TFRobertaForCausalLM(TFGenerationMixin, _TFRobertaLMHeadModel):
    """RoBERTa as a left-to-right language model (set ``is_decoder=True``); labels are the input ids,
    shifted inside the loss, -100 ignored. With ``add_cross_attention`` it also attends to an encoder.
    ``generate`` decodes greedily or by sampling, eagerly or under XLA."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        if not config.is_decoder:
            logger.warning("TFRobertaForCausalLM is meant to run with is_decoder=True; without it attention is "
                           "bidirectional")
        super().__init__(config, *inputs, **kwargs)

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        body = self.roberta(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds, encoder_hidden_states,
            encoder_attention_mask, past_key_values, use_cache, output_attentions, output_hidden_states,
            training=training,
        )
        logits = self.lm_head(body.last_hidden_state)
        output = TFCausalLMOutputWithCrossAttentions(
            loss=L.causal_lm_loss(logits, labels) if labels is not None else None, logits=logits,
            past_key_values=body.past_key_values, hidden_states=body.hidden_states, attentions=body.attentions,
            cross_attentions=body.cross_attentions,
        )
        return as_output(output, return_dict)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      cache_position=None, encoder_hidden_states=None, encoder_attention_mask=None,
                                      **kwargs):
        if past_key_values is not None:
            input_ids = input_ids[:, -1:]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values,
                  "encoder_hidden_states": encoder_hidden_states, "encoder_attention_mask": encoder_attention_mask}
        if past_key_values is not None and cache_position is not None:
            # A preallocated cache is longer than what it holds: number the new token from its index in
            # the sequence, as the model does from the cache length when the cache grows.
            inputs["position_ids"] = L.position_ids_after_padding(input_ids, self.config.pad_token_id, cache_position)
        return inputs


class TFRobertaForMaskedLM(_TFRobertaLMHeadModel):
    """RoBERTa's pre-training objective: predict masked tokens. Labels of -100 are ignored by the loss."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        if config.is_decoder:
            logger.warning("TFRobertaForMaskedLM is meant to run with is_decoder=False (bidirectional attention)")
        super().__init__(config, *inputs, **kwargs)

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        body = self.roberta(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            training=training)
        logits = self.lm_head(body.last_hidden_state)
        output = TFMaskedLMOutput(
            loss=L.token_loss(logits, labels) if labels is not None else None, logits=logits,
            hidden_states=body.hidden_states, attentions=body.attentions,
        )
        return as_output(output, return_dict)


class TFRobertaClassificationHead(L.Block):
    """Sentence-level head on the ``<s>`` token: dropout, dense with tanh, dropout, projection."""

    def __init__(self, config: RobertaConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.dense(config.hidden_size, config, activation="tanh")
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = keras.layers.Dropout(rate)
        self.out_proj = L.dense(config.num_labels, config)

    def call(self, features, training=False):
        x = self.dropout(features[:, 0, :], training=training)
        x = self.dropout(self.dense(x), training=training)
        return self.out_proj(x)


class TFRobertaForSequenceClassification(TFRobertaPreTrainedModel):
    """Classification (cross-entropy) or regression (one label: squared error) of the whole sequence;
    the loss has one value per example."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        self.roberta = TFRobertaMainLayer(config, add_pooling_layer=False, name="roberta")
        self.classifier = TFRobertaClassificationHead(config, name="classifier")

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        body = self.roberta(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            training=training)
        logits = self.classifier(body.last_hidden_state, training=training)
        loss = L.sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        output = TFSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=body.hidden_states,
                                            attentions=body.attentions)
        return as_output(output, return_dict)


class TFRobertaForMultipleChoice(TFRobertaPreTrainedModel):
    """Scores each of ``num_choices`` candidate sequences from the pooled ``<s>`` token; inputs are
    (batch, num_choices, sequence)."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.roberta = TFRobertaMainLayer(config, name="roberta")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)
        self.classifier = L.dense(1, config)

    @property
    def dummy_inputs(self) -> dict:
        return {"input_ids": np.array([[[0, 5, 6, 7, 2], [0, 8, 9, 10, 2]]], dtype="int32")}

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or len(reference.shape) < 3:
            raise ValueError(
                "pass input_ids of shape (batch, num_choices, sequence) or inputs_embeds of shape "
                f"(batch, num_choices, sequence, hidden), got {None if reference is None else tuple(reference.shape)}"
            )
        num_choices = ops.shape(reference)[1]

        def flat(t):
            if t is None:
                return None
            t = ops.convert_to_tensor(t)
            return ops.reshape(t, (-1,) + tuple(ops.shape(t)[2:]))

        body = self.roberta(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids), head_mask,
                            flat(inputs_embeds), output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states, training=training)
        pooled = self.dropout(body.pooler_output, training=training)
        logits = ops.reshape(self.classifier(pooled), (-1, num_choices))
        output = TFMultipleChoiceModelOutput(
            loss=L.choice_loss(logits, labels) if labels is not None else None, logits=logits,
            hidden_states=body.hidden_states, attentions=body.attentions,
        )
        return as_output(output, return_dict)


class TFRobertaForTokenClassification(TFRobertaPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored, the loss is their mean."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        self.roberta = TFRobertaMainLayer(config, add_pooling_layer=False, name="roberta")
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = keras.layers.Dropout(rate)
        self.classifier = L.dense(config.num_labels, config)

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        body = self.roberta(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            training=training)
        logits = self.classifier(self.dropout(body.last_hidden_state, training=training))
        output = TFTokenClassifierOutput(
            loss=L.token_loss(logits, labels) if labels is not None else None, logits=logits,
            hidden_states=body.hidden_states, attentions=body.attentions,
        )
        return as_output(output, return_dict)


class TFRobertaForQuestionAnswering(TFRobertaPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2); the loss has one
    value per example."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        if config.num_labels != 2:
            raise ValueError(f"question answering needs config.num_labels == 2 (start, end), got {config.num_labels}")
        self.num_labels = config.num_labels
        self.roberta = TFRobertaMainLayer(config, add_pooling_layer=False, name="roberta")
        self.qa_outputs = L.dense(config.num_labels, config)

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None,
             start_positions=None, end_positions=None, training=False):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        body = self.roberta(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            training=training)
        logits = self.qa_outputs(body.last_hidden_state)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = L.span_loss(start_logits, end_logits, start_positions, end_positions)
        output = TFQuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=body.hidden_states,
            attentions=body.attentions,
        )
        return as_output(output, return_dict)


__all__ = [
    "TFRobertaPreTrainedModel",
    "TFRobertaModel",
    "TFRobertaForCausalLM",
    "TFRobertaForMaskedLM",
    "TFRobertaForSequenceClassification",
    "TFRobertaForMultipleChoice",
    "TFRobertaForTokenClassification",
    "TFRobertaForQuestionAnswering",
]

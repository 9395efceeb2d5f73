"""RoBERTa in Keras 3 (Liu et al., 2019): BERT's architecture, pre-trained longer on more text with
dynamic masking and no next-sentence objective.

Read top-down: the main layer (fairseq position numbering, the BERT encoder stack of ``keras/layers.py``,
the pooler), the bare model, then the heads. Attribute names are the PyTorch checkpoint's module names,
so the canonical safetensors load by rule.
"""

from __future__ import annotations

import logging

from ...configs import RobertaConfig
from ...outputs import (
    TFBaseModelOutputWithPoolingAndCrossAttentions,
    TFCausalLMOutputWithCrossAttentions,
    TFMaskedLMOutput,
)
from .. import layers as L
from ..generation import TFGenerationMixin
from ..modeling import TFPreTrainedModel, as_output, unpack_inputs

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
        positions = L.fairseq_positions(input_ids, inputs_embeds, padding_idx, past_length)
        table, top = self.config.max_position_embeddings, L.largest(positions)
        if top is not None and top >= table:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(
                f"{name} holds a sequence of {top - padding_idx} positions (non-padding tokens, cached ones "
                f"included), expected at most {table - padding_idx - 1}: RoBERTa positions start at "
                f"pad_token_id + 1 = {padding_idx + 1} and max_position_embeddings is {table}"
            )
        return positions

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=False, output_hidden_states=False, training=False):
        config = self.config
        past_length, mask, encoder_mask, head_masks = L.prepare_encoder_inputs(
            config, input_ids, inputs_embeds, config.hidden_size, attention_mask, head_mask, encoder_hidden_states,
            encoder_attention_mask, past_key_values, self.compute_dtype, token_type_ids, position_ids,
        )
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

    call = L.bert_model_call


class TFRobertaLMHead(L.LMHead):
    """Dense, GELU, LayerNorm, then the projection onto the vocabulary: the word embedding matrix
    (transposed) unless ``tie_word_embeddings`` is off, plus a vocabulary bias."""

    def __init__(self, config: RobertaConfig, input_embeddings, **kwargs):
        super().__init__(config, input_embeddings, getattr(config, "tie_word_embeddings", True), **kwargs)


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
        body, return_dict = self._encode(locals())
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
        body, return_dict = self._encode(locals())
        return L.token_head_output(TFMaskedLMOutput, self.lm_head(body.last_hidden_state), labels, body, return_dict)


class TFRobertaClassificationHead(L.ClassificationHead):
    """Sentence-level head on the ``<s>`` token: dropout, dense with tanh, dropout, projection."""

    def __init__(self, config: RobertaConfig, **kwargs):
        super().__init__(config, "tanh", L.classifier_dropout_rate(config), **kwargs)


class TFRobertaForSequenceClassification(TFRobertaPreTrainedModel):
    """Classification (cross-entropy) or regression (one label: squared error) of the whole sequence;
    the loss has one value per example."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.head_body(self, TFRobertaMainLayer(config, add_pooling_layer=False, name="roberta"))
        self.classifier = TFRobertaClassificationHead(config, name="classifier")

    call = L.bert_sequence_classification_call


class TFRobertaForMultipleChoice(TFRobertaPreTrainedModel):
    """Scores each of ``num_choices`` candidate sequences from the pooled ``<s>`` token; inputs are
    (batch, num_choices, sequence)."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_pooled_choice_classifier(self, TFRobertaMainLayer(config, name="roberta"))

    dummy_inputs = L.choice_dummy_inputs_property

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        num_choices = L.count_choices(input_ids, inputs_embeds, "hidden", exact_rank=False)
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds = L.flatten_choices(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
        body, return_dict = self._encode(locals())
        return L.pooled_choice_output(self, body, num_choices, labels, return_dict, training)


class TFRobertaForTokenClassification(TFRobertaPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored, the loss is their mean."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_token_classifier(self, TFRobertaMainLayer(config, add_pooling_layer=False, name="roberta"),
                               L.classifier_dropout_rate(config))

    call = L.bert_token_classification_call


class TFRobertaForQuestionAnswering(TFRobertaPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2); the loss has one
    value per example."""

    def __init__(self, config: RobertaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_span_classifier(self, TFRobertaMainLayer(config, add_pooling_layer=False, name="roberta"))

    call = L.bert_question_answering_call

"""ELECTRA in PyTorch (Clark et al., 2020): a BERT encoder trained as a replaced-token discriminator.

Read top-down: embeddings (optionally narrower than the encoder, then projected), the BERT encoder stack
(shared, in ``pt/bert.py``), the bare model, then the heads: discriminator, generator, task heads.
Module attribute names are the checkpoint keys of the reference checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from ...configs import ElectraConfig
from ...outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    ElectraForPreTrainingOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
)
from .. import layers as L
from ..bert import (STACKED_KEYS, BertEmbeddings, BertEncoder, causal_lm_forward, encode, prepare_encoder_inputs,
                    question_answering_forward, sequence_classification_forward, token_classification_forward)
from ..generation import GenerationMixin
from ..modeling import PreTrainedModel


class ElectraEmbeddings(BertEmbeddings):
    """Word + position + token-type embeddings, LayerNorm and dropout, in ``embedding_size`` dims;
    positions count from 0 (after any cached ones)."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config, config.embedding_size)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, past_length=0):
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if position_ids is None:
            position_ids = self.position_ids[:, past_length : past_length + length]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(position_ids).expand(
                (input_ids if input_ids is not None else inputs_embeds).shape[0], -1
            )
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.combine(inputs_embeds, token_type_ids, position_ids)


class ElectraPreTrainedModel(PreTrainedModel):
    _keys_loaded_unmapped = STACKED_KEYS
    config_class = ElectraConfig
    base_model_prefix = "electra"
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        L.init_normal_weights(module, self.config.initializer_range)


class ElectraModel(ElectraPreTrainedModel):
    """The bare ELECTRA encoder (or decoder, with ``is_decoder``): hidden states, no head. When
    ``embedding_size`` differs from ``hidden_size`` the embeddings are projected up before the encoder."""

    _input_embeddings = "embeddings.word_embeddings"

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.embeddings = ElectraEmbeddings(config)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = L.Linear(config.embedding_size, config.hidden_size)
        self.encoder = BertEncoder(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        config = self.config
        output_attentions, output_hidden_states, return_dict = L.output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        # As in the reference's 4.37 ELECTRA, a cache is returned only when asked for explicitly (config.use_cache
        # is not consulted), and only by a decoder.
        use_cache = bool(use_cache) and config.is_decoder and not (self.encoder.gradient_checkpointing and self.training)
        batch, length, past_length, mask, encoder_mask, head_masks = prepare_encoder_inputs(
            config, input_ids, inputs_embeds, config.embedding_size, attention_mask, head_mask,
            encoder_hidden_states, encoder_attention_mask, past_key_values, self.dtype,
        )
        if position_ids is None and config.position_embedding_type == "absolute":
            L.check_length(past_length + length, config.max_position_embeddings)
        L.check_ids("token_type_ids", token_type_ids, config.type_vocab_size, f"type_vocab_size={config.type_vocab_size}")
        L.check_ids("position_ids", position_ids, config.max_position_embeddings,
                    f"max_position_embeddings={config.max_position_embeddings}")

        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length)
        if hasattr(self, "embeddings_project"):
            hidden = self.embeddings_project(hidden)
        hidden, cache, all_hidden, all_attn, all_cross = self.encoder(
            hidden, mask, head_masks, encoder_hidden_states, encoder_mask, past_key_values, use_cache,
            output_attentions, output_hidden_states,
        )
        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden, past_key_values=cache, hidden_states=all_hidden, attentions=all_attn,
            cross_attentions=all_cross,
        )
        return L.pack_output(output, return_dict)


class ElectraDiscriminatorPredictions(nn.Module):
    """One logit per token: has this token been replaced by the generator?"""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = L.Linear(config.hidden_size, config.hidden_size)
        self.activation = L.get_activation(config.hidden_act)
        self.dense_prediction = L.Linear(config.hidden_size, 1)

    def forward(self, hidden_states):
        return self.dense_prediction(self.activation(self.dense(hidden_states))).squeeze(-1)


class ElectraForPreTraining(ElectraPreTrainedModel):
    """ELECTRA's discriminator: replaced-token detection. ``labels`` are 1 for replaced tokens and 0 for
    original ones; the loss is binary cross-entropy over the positions the attention mask keeps."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        body = encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                      output_attentions, output_hidden_states)
        logits = self.discriminator_predictions(body.last_hidden_state)
        loss = None
        if labels is not None:
            target = labels.to(logits.dtype)
            if attention_mask is not None and attention_mask.dim() == 2:
                keep = attention_mask.reshape(-1, logits.shape[1]) == 1
                loss = nn.functional.binary_cross_entropy_with_logits(logits[keep].float(), target[keep].float())
            else:
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float())
        return L.head_output(ElectraForPreTrainingOutput, body, return_dict, self.config, loss=loss, logits=logits)


class ElectraGeneratorPredictions(nn.Module):
    """The generator's transform before the LM projection: dense to ``embedding_size``, GELU, LayerNorm."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.activation = L.get_activation("gelu")
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dense = L.Linear(config.hidden_size, config.embedding_size)

    def forward(self, hidden_states):
        return self.LayerNorm(self.activation(self.dense(hidden_states)))


class _ElectraLMHeadModel(ElectraPreTrainedModel):
    """Shared by the masked and causal generators: the LM head ties to the word embeddings."""

    _tied_weights_keys = ["generator_lm_head.weight"]
    _output_embeddings = "generator_lm_head"

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.generator_predictions = ElectraGeneratorPredictions(config)
        self.generator_lm_head = L.Linear(config.embedding_size, config.vocab_size)
        self.post_init()

    def _lm_logits(self, hidden_states):
        return self.generator_lm_head(self.generator_predictions(hidden_states))


class ElectraForMaskedLM(_ElectraLMHeadModel):
    """ELECTRA's generator: predicts masked tokens. Labels of -100 are ignored by the loss."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        body = encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                      output_attentions, output_hidden_states)
        logits = self._lm_logits(body.last_hidden_state)
        return L.labelled_output(MaskedLMOutput, logits, labels, body, return_dict, self.config)


class ElectraForCausalLM(GenerationMixin, _ElectraLMHeadModel):
    """ELECTRA as a left-to-right language model (set ``is_decoder=True``); labels are the input ids,
    shifted inside the loss, -100 ignored. With ``add_cross_attention`` it also attends to an encoder."""

    def __init__(self, config: ElectraConfig):
        if not config.is_decoder:
            import logging

            logging.getLogger("polyformers").warning(
                "ElectraForCausalLM is meant to run with is_decoder=True; without it attention is bidirectional"
            )
        super().__init__(config)

    forward = causal_lm_forward

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, use_cache=None,
                                      **kwargs):
        # Like the reference, positions count from the first column even for left-padded prompts, and
        # token_type_ids are not passed on; only the tokens the cache has not seen are fed.
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if past_key_values is not None:
            input_ids = L.uncached_tokens(input_ids, past_key_values)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values,
                "use_cache": use_cache}


class ElectraClassificationHead(L.ClassificationHead):
    """Sentence-level head on the first token: dropout, dense, GELU, dropout, projection."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config.hidden_size, config.num_labels, L.classifier_dropout(config), L.get_activation("gelu"))


class ElectraForSequenceClassification(ElectraPreTrainedModel):
    """Classification or regression on the whole sequence; the loss follows ``config.problem_type``."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        L.head_body(self, ElectraModel(config))
        self.classifier = ElectraClassificationHead(config)
        self.post_init()

    forward = sequence_classification_forward


class ElectraForTokenClassification(ElectraPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        L.add_token_classifier(self, ElectraModel(config), L.classifier_dropout(config))
        self.post_init()

    forward = token_classification_forward


class ElectraForQuestionAnswering(ElectraPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2)."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        L.add_span_classifier(self, ElectraModel(config))
        self.post_init()

    forward = question_answering_forward


class ElectraForMultipleChoice(ElectraPreTrainedModel):
    """Scores each of ``num_choices`` candidate sequences; inputs are (batch, num_choices, sequence)."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.sequence_summary = L.SequenceSummary(config)
        self.classifier = L.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None:
            raise ValueError("pass input_ids or inputs_embeds of shape (batch, num_choices, sequence)")
        num_choices = reference.shape[1]
        flat = L.flatten_choices
        body = encode(self, flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                      head_mask, flat(inputs_embeds), output_attentions, output_hidden_states)
        logits = self.classifier(self.sequence_summary(body.last_hidden_state)).view(-1, num_choices)
        return L.labelled_output(MultipleChoiceModelOutput, logits, labels, body, return_dict, self.config,
                                 L.multiple_choice_loss)

"""RoBERTa in PyTorch (Liu et al., 2019): BERT's architecture, pre-trained longer on more text with
dynamic masking and no next-sentence objective.

Read top-down: position ids (RoBERTa's one architectural quirk: fairseq numbers positions after the
padding index and gives padding tokens the padding position), embeddings, the BERT encoder stack
(shared, in ``pt/bert.py``), the pooler, the bare model, then the heads. Module attribute names are the
checkpoint keys of the reference checkpoints.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ...configs import RobertaConfig
from ...outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
)
from .. import layers as L
from ..bert import (STACKED_KEYS, BertEmbeddings, BertEncoder, causal_lm_forward, encode, prepare_encoder_inputs,
                    question_answering_forward, sequence_classification_forward, token_classification_forward)
from ..cache import reorder_legacy_or_cache
from ..generation import GenerationMixin
from ..modeling import PreTrainedModel

logger = logging.getLogger("polyformers")


def create_position_ids_from_inputs_embeds(inputs_embeds: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Embeddings do not say which rows are padding, so every token gets the next position after
    ``padding_idx``. As in the reference, cached positions are not added here."""
    batch, length = inputs_embeds.shape[:2]
    positions = torch.arange(padding_idx + 1, padding_idx + 1 + length, device=inputs_embeds.device)
    return positions[None, :].expand(batch, length)


class RobertaEmbeddings(BertEmbeddings):
    """Word + position + token-type embeddings, LayerNorm and dropout; positions come from the tokens.

    The ``position_ids`` buffer is not used and not saved: older releases saved it in checkpoints, and a
    model buffer of that name lets the loader skip the stale key quietly, as the reference does."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config, config.hidden_size, position_padding_idx=config.pad_token_id)
        self.padding_idx = config.pad_token_id

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, past_length=0):
        if position_ids is None and self.position_embedding_type == "absolute":
            position_ids = self._positions(input_ids, inputs_embeds, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        return self.combine(inputs_embeds, token_type_ids, position_ids)

    def _positions(self, input_ids, inputs_embeds, past_length):
        if self.padding_idx is None:
            raise ValueError(
                "RoBERTa numbers positions after config.pad_token_id, which is None; set it or pass position_ids"
            )
        if input_ids is not None:
            name, positions = "input_ids", L.position_ids_after_padding(input_ids, self.padding_idx, past_length)
        else:
            name, positions = "inputs_embeds", create_position_ids_from_inputs_embeds(inputs_embeds, self.padding_idx)
        table = self.position_embeddings.num_embeddings
        if positions.numel() and int(positions.max()) >= table:
            raise ValueError(
                f"{name} holds a sequence of {int(positions.max()) - self.padding_idx} positions (non-padding tokens, "
                f"cached ones included), expected at most {table - self.padding_idx - 1}: RoBERTa positions start at "
                f"pad_token_id + 1 = {self.padding_idx + 1} and max_position_embeddings is {table}"
            )
        return positions


class RobertaPooler(nn.Module):
    """The first token's (``<s>``) final state through a dense layer and tanh."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = L.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        return torch.tanh(self.dense(hidden_states[:, 0]))


class RobertaPreTrainedModel(PreTrainedModel):
    _keys_loaded_unmapped = STACKED_KEYS
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RobertaEmbeddings", "RobertaSelfAttention"]

    def _init_weights(self, module: nn.Module) -> None:
        L.init_normal_weights(module, self.config.initializer_range)
        if isinstance(module, RobertaLMHead):
            module.bias.data.zero_()


class RobertaModel(RobertaPreTrainedModel):
    """The bare RoBERTa encoder (or decoder, with ``is_decoder``; cross-attention with
    ``add_cross_attention``): hidden states and, with ``add_pooling_layer``, the pooled first token."""

    _input_embeddings = "embeddings.word_embeddings"

    def __init__(self, config: RobertaConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = RobertaEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = RobertaPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        config = self.config
        output_attentions, output_hidden_states, return_dict = L.output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        # Only a decoder caches, by default when config.use_cache says so; checkpointed training
        # recomputes layers, so it cannot hand back their keys and values.
        use_cache = config.use_cache if use_cache is None else use_cache
        checkpointing = self.encoder.gradient_checkpointing and self.training
        use_cache = bool(use_cache) and config.is_decoder and not checkpointing
        _, _, past_length, mask, encoder_mask, head_masks = prepare_encoder_inputs(
            config, input_ids, inputs_embeds, config.hidden_size, attention_mask, head_mask,
            encoder_hidden_states, encoder_attention_mask, past_key_values, self.dtype,
        )
        L.check_ids("token_type_ids", token_type_ids, config.type_vocab_size,
                    f"type_vocab_size={config.type_vocab_size}")
        L.check_ids("position_ids", position_ids, config.max_position_embeddings,
                    f"max_position_embeddings={config.max_position_embeddings}")

        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length)
        hidden, cache, all_hidden, all_attn, all_cross = self.encoder(
            hidden, mask, head_masks, encoder_hidden_states, encoder_mask, past_key_values, use_cache,
            output_attentions, output_hidden_states,
        )
        pooled = self.pooler(hidden) if self.pooler is not None else None
        if not return_dict:
            # The reference keeps the pooled slot even when it is None, so that heads find the encoder's
            # extra outputs from index 2 on.
            return (hidden, pooled) + tuple(v for v in (cache, all_hidden, all_attn, all_cross) if v is not None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden, pooler_output=pooled, past_key_values=cache, hidden_states=all_hidden,
            attentions=all_attn, cross_attentions=all_cross,
        )


class RobertaLMHead(nn.Module):
    """Dense, GELU, LayerNorm, then the projection onto the vocabulary (tied to the word embeddings).

    The vocabulary bias is one parameter under two names, ``bias`` and ``decoder.bias``; checkpoints
    store it as ``lm_head.bias``."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = L.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = L.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias
        self.activation = L.get_activation("gelu")

    def forward(self, features):
        return self.decoder(self.layer_norm(self.activation(self.dense(features))))

    def tie_bias(self) -> None:
        # Loading, resizing or materialising replaces one of the two names' parameter; share it again,
        # keeping the one that holds data.
        if self.decoder.bias.device.type == "meta":
            self.decoder.bias = self.bias
        else:
            self.bias = self.decoder.bias


class _RobertaLMHeadModel(RobertaPreTrainedModel):
    """Shared by the masked and causal language models: the body without pooler, and the LM head."""

    _tied_weights_keys = ["lm_head.decoder.weight", "lm_head.decoder.bias"]
    _output_embeddings = "lm_head.decoder"

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    def _lm_logits(self, hidden_states):
        return self.lm_head(hidden_states)

    def tie_weights(self) -> None:
        super().tie_weights()
        self.lm_head.tie_bias()

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None):
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of)
        self.lm_head.tie_bias()
        return embeddings

    def _load_weights(self, *args, **kwargs):
        info = super()._load_weights(*args, **kwargs)
        self.lm_head.tie_bias()  # a checkpoint without the LM head leaves both names initialised apart
        return info


class RobertaForCausalLM(GenerationMixin, _RobertaLMHeadModel):
    """RoBERTa as a left-to-right language model (set ``is_decoder=True``); labels are the input ids,
    shifted inside the loss, -100 ignored. With ``add_cross_attention`` it also attends to an encoder."""

    def __init__(self, config: RobertaConfig):
        if not config.is_decoder:
            logger.warning(
                "RobertaForCausalLM is meant to run with is_decoder=True; without it attention is bidirectional"
            )
        super().__init__(config)

    forward = causal_lm_forward

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if past_key_values is not None:
            input_ids = L.uncached_tokens(input_ids, past_key_values)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values}

    def _reorder_cache(self, past_key_values, beam_idx):
        return reorder_legacy_or_cache(past_key_values, beam_idx)


class RobertaForMaskedLM(_RobertaLMHeadModel):
    """RoBERTa's pre-training objective: predict masked tokens. Labels of -100 are ignored by the loss."""

    def __init__(self, config: RobertaConfig):
        if config.is_decoder:
            logger.warning("RobertaForMaskedLM is meant to run with is_decoder=False (bidirectional self-attention)")
        super().__init__(config)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.roberta(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            encoder_hidden_states, encoder_attention_mask, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states, return_dict=True)
        logits = self._lm_logits(body.last_hidden_state)
        return L.labelled_output(MaskedLMOutput, logits, labels, body, return_dict, self.config)


class RobertaClassificationHead(L.ClassificationHead):
    """Sentence-level head on the ``<s>`` token: dropout, dense, tanh, dropout, projection."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config.hidden_size, config.num_labels, L.classifier_dropout(config), torch.tanh)


class RobertaForSequenceClassification(RobertaPreTrainedModel):
    """Classification or regression on the whole sequence; the loss follows ``config.problem_type``."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        L.head_body(self, RobertaModel(config, add_pooling_layer=False))
        self.classifier = RobertaClassificationHead(config)
        self.post_init()

    forward = sequence_classification_forward


class RobertaForMultipleChoice(RobertaPreTrainedModel):
    """Scores each of ``num_choices`` candidate sequences from the pooled ``<s>`` token; inputs are
    (batch, num_choices, sequence)."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        L.add_pooled_choice_classifier(self, RobertaModel(config))
        self.post_init()

    # The argument order differs from the other heads (token_type_ids and labels come early), as in the
    # reference, so positional calls written for it keep working.
    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, labels=None, position_ids=None,
                head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() < 3:
            raise ValueError(
                "pass input_ids of shape (batch, num_choices, sequence) or inputs_embeds of shape "
                f"(batch, num_choices, sequence, hidden), got {None if reference is None else tuple(reference.shape)}"
            )
        num_choices = reference.shape[1]
        flat = L.flatten_choices
        body = encode(self, flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                      head_mask, flat(inputs_embeds), output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(body.pooler_output)).view(-1, num_choices)
        return L.labelled_output(MultipleChoiceModelOutput, logits, labels, body, return_dict, self.config,
                                 L.multiple_choice_loss)


class RobertaForTokenClassification(RobertaPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        L.add_token_classifier(self, RobertaModel(config, add_pooling_layer=False), L.classifier_dropout(config))
        self.post_init()

    forward = token_classification_forward


class RobertaForQuestionAnswering(RobertaPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2)."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        L.add_span_classifier(self, RobertaModel(config, add_pooling_layer=False))
        self.post_init()

    forward = question_answering_forward

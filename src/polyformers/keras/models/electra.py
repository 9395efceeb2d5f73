"""ELECTRA in Keras 3 (Clark et al., 2020): a BERT encoder trained as a replaced-token discriminator.

Read top-down: the main layer (embeddings, optionally narrower than the encoder and then projected up,
and the BERT encoder stack of ``keras/layers.py``), the bare model, then the heads: discriminator,
generator, task heads. Attribute names are the PyTorch checkpoint's module names, so the canonical
safetensors load by rule.
"""

from __future__ import annotations

from ...configs import ElectraConfig
from ...outputs import (
    TFBaseModelOutputWithPastAndCrossAttentions,
    TFElectraForPreTrainingOutput,
    TFMaskedLMOutput,
)
from .. import layers as L
from ..modeling import TFPreTrainedModel, unpack_inputs

from keras import ops  # noqa: E402  (after polyformers.keras has chosen the backend)

# Tensor-parallel layout for keras.distribution.ModelParallel (polyformers.keras.distribution.layout_map):
# the BERT stack's rules; embeddings, their projection and the heads stay replicated.
LAYOUT_RULES = L.BERT_LAYOUT_RULES


class TFElectraMainLayer(L.Block):
    """Embeddings in ``embedding_size`` dims, their projection to ``hidden_size`` when the two differ,
    and the encoder (or decoder, with ``is_decoder``; cross-attention with ``add_cross_attention``)."""

    def __init__(self, config: ElectraConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = L.BertEmbeddings(config, embedding_size=config.embedding_size)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = L.dense(config.hidden_size, config)
        self.encoder = L.BertEncoder(config)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=False, output_hidden_states=False, training=False):
        config = self.config
        past_length, mask, encoder_mask, head_masks = L.prepare_encoder_inputs(
            config, input_ids, inputs_embeds, config.embedding_size, attention_mask, head_mask, encoder_hidden_states,
            encoder_attention_mask, past_key_values, self.compute_dtype, token_type_ids, position_ids,
        )
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if (position_ids is None and config.position_embedding_type == "absolute" and isinstance(length, int)
                and isinstance(past_length, int) and past_length + length > config.max_position_embeddings):
            raise ValueError(
                f"the input needs {past_length + length} positions (cached ones included), but "
                f"max_position_embeddings={config.max_position_embeddings}"
            )

        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length,
                                 training=training)
        if hasattr(self, "embeddings_project"):
            hidden = self.embeddings_project(hidden)
        hidden, cache, all_hidden, all_attn, all_cross = self.encoder(
            hidden, mask, head_masks, encoder_hidden_states, encoder_mask, past_key_values, use_cache,
            output_attentions, output_hidden_states, training=training,
        )
        return TFBaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden, past_key_values=cache, hidden_states=all_hidden, attentions=all_attn,
            cross_attentions=all_cross,
        )


class TFElectraPreTrainedModel(TFPreTrainedModel):
    config_class = ElectraConfig
    base_model_prefix = "electra"


class TFElectraModel(TFElectraPreTrainedModel):
    """The bare ELECTRA encoder (or decoder): hidden states, no pooler. Both the generator's and the
    discriminator's checkpoints load into it."""

    def __init__(self, config: ElectraConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.electra = TFElectraMainLayer(config, name="electra")

    call = L.bert_model_call


class TFElectraDiscriminatorPredictions(L.Block):
    """One logit per token: has this token been replaced by the generator?"""

    def __init__(self, config: ElectraConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.dense(config.hidden_size, config)
        self.activation = L.get_activation(config.hidden_act)
        self.dense_prediction = L.dense(1, config)

    def call(self, hidden_states):
        return ops.squeeze(self.dense_prediction(self.activation(self.dense(hidden_states))), -1)


def replaced_token_loss(logits, labels, attention_mask=None):
    """Binary cross-entropy of the replaced-token logits, averaged over the positions the attention mask
    keeps (all of them without a mask); shape (1,)."""
    labels = ops.cast(ops.convert_to_tensor(labels), "float32")
    per_token = ops.binary_crossentropy(labels, ops.cast(logits, "float32"), from_logits=True)
    if attention_mask is None:
        keep = ops.ones_like(per_token)
    else:
        keep = ops.cast(ops.equal(ops.reshape(ops.convert_to_tensor(attention_mask), ops.shape(per_token)), 1),
                        "float32")
    return ops.reshape(ops.sum(per_token * keep) / ops.sum(keep), (1,))


class TFElectraForPreTraining(TFElectraPreTrainedModel):
    """ELECTRA's discriminator: replaced-token detection, one logit per token. Beyond the reference's TF
    class, ``labels`` (1 for replaced tokens, 0 for original ones) give ``loss``, of shape (1,), as the
    output class documents."""

    def __init__(self, config: ElectraConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.electra = TFElectraMainLayer(config, name="electra")
        self.discriminator_predictions = TFElectraDiscriminatorPredictions(config, name="discriminator_predictions")

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        body, return_dict = self._encode(locals())
        logits = self.discriminator_predictions(body.last_hidden_state)
        loss = replaced_token_loss(logits, labels, attention_mask) if labels is not None else None
        return L.head_output(TFElectraForPreTrainingOutput, body, return_dict, loss=loss, logits=logits)


class TFElectraGeneratorPredictions(L.Block):
    """The generator's transform before the LM projection: dense to ``embedding_size``, GELU, LayerNorm."""

    def __init__(self, config: ElectraConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.dense(config.embedding_size, config)
        self.activation = L.get_activation("gelu")
        self.LayerNorm = L.layer_norm(config)

    def call(self, hidden_states):
        return self.LayerNorm(self.activation(self.dense(hidden_states)))


class TFElectraMaskedLMHead(L.Block):
    """The projection onto the vocabulary through the word embedding matrix (transposed), plus a
    vocabulary bias."""

    def __init__(self, config: ElectraConfig, input_embeddings, **kwargs):
        super().__init__(**kwargs)
        # Read, not tracked: the matrix is the embedding layer's variable, trained and saved once.
        self._embedding_matrix = lambda: input_embeddings.embeddings
        self.bias = self.add_weight(name="bias", shape=(config.vocab_size,), initializer="zeros")

    def call(self, hidden_states):
        return L.tied_logits(hidden_states, self._embedding_matrix(), self.bias)


class TFElectraForMaskedLM(TFElectraPreTrainedModel):
    """ELECTRA's generator: predicts masked tokens; labels of -100 are ignored, the loss is the mean over
    the others (shape (1,)). The LM head is tied to the word embeddings unless ``tie_word_embeddings`` is
    off, as in the PyTorch class."""

    # A tied head has no matrix of its own; PyTorch checkpoints still name it.
    _keys_to_ignore_on_load_unexpected = [r"\.position_ids$", r"^generator_lm_head\.weight$"]

    def __init__(self, config: ElectraConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.electra = TFElectraMainLayer(config, name="electra")
        self.generator_predictions = TFElectraGeneratorPredictions(config, name="generator_predictions")
        if getattr(config, "tie_word_embeddings", True):
            self.generator_lm_head = TFElectraMaskedLMHead(config, self.electra.embeddings.word_embeddings,
                                                           name="generator_lm_head")
        else:
            self.generator_lm_head = L.dense(config.vocab_size, config, name="generator_lm_head")

    def get_output_embeddings(self):
        return self.generator_lm_head

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        body, return_dict = self._encode(locals())
        logits = self.generator_lm_head(self.generator_predictions(body.last_hidden_state))
        return L.token_head_output(TFMaskedLMOutput, logits, labels, body, return_dict)


class TFElectraClassificationHead(L.ClassificationHead):
    """Sentence-level head on the first token: dropout, dense, GELU (where BERT has tanh), dropout,
    projection."""

    def __init__(self, config: ElectraConfig, **kwargs):
        super().__init__(config, "gelu", L.classifier_dropout_rate(config), **kwargs)


class TFElectraForSequenceClassification(TFElectraPreTrainedModel):
    """Classification (cross-entropy) or regression (one label: squared error) of the whole sequence;
    the loss has one value per example."""

    def __init__(self, config: ElectraConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.head_body(self, TFElectraMainLayer(config, name="electra"))
        self.classifier = TFElectraClassificationHead(config, name="classifier")

    call = L.bert_sequence_classification_call


class TFElectraForMultipleChoice(TFElectraPreTrainedModel):
    """Scores each of ``num_choices`` candidate sequences through the config's sequence summary (the
    first token, projected, GELU, by default); inputs are (batch, num_choices, sequence)."""

    def __init__(self, config: ElectraConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.electra = TFElectraMainLayer(config, name="electra")
        self.sequence_summary = L.SequenceSummary(config, name="sequence_summary")
        self.classifier = L.dense(1, config)

    dummy_inputs = L.choice_dummy_inputs_property

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             training=False):
        num_choices = L.count_choices(input_ids, inputs_embeds, "embedding_size")
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds = L.flatten_choices(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
        body, return_dict = self._encode(locals())
        summary = self.sequence_summary(body.last_hidden_state, training=training)
        return L.choice_head_output(self.classifier(summary), num_choices, labels, body, return_dict)


class TFElectraForTokenClassification(TFElectraPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored, the loss is the mean over the
    others (shape (1,))."""

    def __init__(self, config: ElectraConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_token_classifier(self, TFElectraMainLayer(config, name="electra"), L.classifier_dropout_rate(config))

    call = L.bert_token_classification_call


class TFElectraForQuestionAnswering(TFElectraPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2); the loss has one
    value per example, the mean of the start and end cross-entropies."""

    def __init__(self, config: ElectraConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_span_classifier(self, TFElectraMainLayer(config, name="electra"))

    call = L.bert_question_answering_call

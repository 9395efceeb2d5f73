"""MPNet in Keras 3 (Song et al., 2020): a BERT-shaped encoder with a learned, bucketed relative position bias.

Read top-down: embeddings (word + absolute position, numbered like RoBERTa's), the relative position bias
shared by every layer, attention and the post-norm block, the encoder, the main layer with its pooler, the
bare model, then the heads. Attribute names are the PyTorch checkpoint's module names (``attention.attn.q``,
``encoder.relative_attention_bias``, ``lm_head.layer_norm``), so the canonical safetensors load by rule.
"""

from __future__ import annotations

import math

from ...configs import MPNetConfig
from ...outputs import (
    TFBaseModelOutputWithPooling,
    TFMaskedLMOutput,
    TFTokenClassifierOutput,
)
from .. import layers as L
from ..modeling import TFPreTrainedModel, as_output, unpack_inputs

import keras  # noqa: E402  (after polyformers.keras has chosen the backend)
from keras import ops

# The reference pins the padding id at 1 (fairseq's <pad>) whatever ``pad_token_id`` says: it is the
# origin of the position numbering.
PADDING_IDX = 1
# The reference always buckets relative positions into 32 buckets up to a distance of 128;
# ``relative_attention_num_buckets`` only sizes the bias table.
NUM_BUCKETS = 32
MAX_DISTANCE = 128


# Tensor-parallel layout for keras.distribution.ModelParallel (polyformers.keras.distribution.layout_map):
# Keras matches each regex against a whole variable path; q, k, v and the first feed-forward projection
# split their output columns over the "model" axis (whole heads per device), o and the second projection
# their input rows. The feed-forward layers are BERT's, and so are their rules. Embeddings, the relative
# position table and the heads stay replicated.
LAYOUT_RULES = (
    (r".*/attention/attn/(q|k|v)/kernel", (None, "model")),
    (r".*/attention/attn/(q|k|v)/bias", ("model",)),
    (r".*/attention/attn/o/kernel", ("model", None)),
) + L.BERT_FEED_FORWARD_LAYOUT_RULES


class TFMPNetEmbeddings(L.Block):
    """Word + absolute position embeddings, LayerNorm and dropout (MPNet has no token types)."""

    def __init__(self, config: MPNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.word_embeddings = L.embedding(config.vocab_size, config.hidden_size, config)
        self.position_embeddings = L.embedding(config.max_position_embeddings, config.hidden_size, config)
        for table in (self.word_embeddings, self.position_embeddings):
            table.build()  # the tied LM head reads the word table before any call
        self.LayerNorm = L.layer_norm(config)
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)

    def call(self, input_ids=None, position_ids=None, inputs_embeds=None, training=False):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.dropout(self.LayerNorm(inputs_embeds + self.position_embeddings(position_ids)), training=training)


def relative_position_bucket(relative_position, num_buckets: int = NUM_BUCKETS, max_distance: int = MAX_DISTANCE):
    """T5-style buckets of ``key - query`` offsets: keys before the query take the lower half of the
    buckets, keys after it the upper half. Within a half, distances below a quarter of the buckets are
    exact; longer ones share logarithmically wider buckets, the last covering ``max_distance`` and beyond."""
    half = num_buckets // 2
    distance = -ops.cast(relative_position, "int32")
    bucket = ops.cast(distance < 0, "int32") * half
    distance = ops.abs(distance)
    exact = half // 2
    # float32 as in the PyTorch model; no offset below 5000 lands on another bucket in float64 either.
    scaled = ops.log(ops.cast(ops.maximum(distance, 1), "float32") / exact) / math.log(max_distance / exact)
    wide = ops.minimum(exact + ops.cast(scaled * (half - exact), "int32"), half - 1)
    return bucket + ops.where(distance < exact, distance, wide)


class TFMPNetSelfAttention(L.Block):
    """Multi-head self-attention whose scores get the relative position bias (and padding mask) added."""

    def __init__(self, config: MPNetConfig, **kwargs):
        super().__init__(**kwargs)
        L.check_head_split(config)
        self.num_heads = config.num_attention_heads
        self.q = L.dense(config.hidden_size, config)
        self.k = L.dense(config.hidden_size, config)
        self.v = L.dense(config.hidden_size, config)
        self.o = L.dense(config.hidden_size, config)
        self.dropout = keras.layers.Dropout(config.attention_probs_dropout_prob)

    def call(self, hidden_states, bias, head_mask=None, training=False):
        query, key, value = (L.split_heads(proj(hidden_states), self.num_heads) for proj in (self.q, self.k, self.v))
        context, probs = L.attend(query, key, value, bias, dropout=self.dropout, head_mask=head_mask,
                                  training=training)
        return self.o(L.merge_heads(context)), probs


class TFMPNetAttention(L.Block):
    """Attention, dropout, residual, then LayerNorm (post-norm)."""

    def __init__(self, config: MPNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.attn = TFMPNetSelfAttention(config)
        self.LayerNorm = L.layer_norm(config)
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)

    def call(self, hidden_states, bias, head_mask=None, training=False):
        attended, probs = self.attn(hidden_states, bias, head_mask, training=training)
        return self.LayerNorm(self.dropout(attended, training=training) + hidden_states), probs


class TFMPNetLayer(L.Block):
    """One encoder block: attention, then BERT's feed-forward (``intermediate`` and ``output``)."""

    def __init__(self, config: MPNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.attention = TFMPNetAttention(config)
        self.intermediate = L.BertIntermediate(config)
        self.output_ = L.BertSelfOutput(config)

    def call(self, hidden_states, bias, head_mask=None, training=False):
        hidden_states, probs = self.attention(hidden_states, bias, head_mask, training=training)
        return self.output_(self.intermediate(hidden_states), hidden_states, training=training), probs


class TFMPNetEncoder(L.Block):
    """The layer stack plus the relative position bias table they all share (one scalar per bucket and head)."""

    def __init__(self, config: MPNetConfig, **kwargs):
        super().__init__(**kwargs)
        if config.relative_attention_num_buckets < NUM_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets must be at least {NUM_BUCKETS} (MPNet always uses {NUM_BUCKETS} "
                f"buckets), got {config.relative_attention_num_buckets}"
            )
        self.layer = [TFMPNetLayer(config, name=f"layer_{i}") for i in range(config.num_hidden_layers)]
        self.relative_attention_bias = L.embedding(config.relative_attention_num_buckets,
                                                   config.num_attention_heads, config)

    def position_bias(self, length):
        """(1, heads, query, key) bias from token offsets within the sequence (padding does not shift them)."""
        positions = ops.arange(length)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None])
        return ops.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None]

    def call(self, hidden_states, mask, head_masks, output_attentions=False, output_hidden_states=False,
             training=False):
        bias = ops.cast(self.position_bias(ops.shape(hidden_states)[1]), hidden_states.dtype) + mask
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        for layer, head_mask in zip(self.layer, head_masks):
            hidden_states, probs = layer(hidden_states, bias, head_mask, training=training)
            if output_attentions:
                all_attn += (probs,)
            if output_hidden_states:
                all_hidden += (hidden_states,)
        return hidden_states, all_hidden, all_attn


class TFMPNetMainLayer(L.Block):
    """Embeddings, the encoder and, with ``add_pooling_layer``, the pooler (first token, dense, tanh)."""

    def __init__(self, config: MPNetConfig, add_pooling_layer: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = TFMPNetEmbeddings(config)
        self.encoder = TFMPNetEncoder(config)
        self.pooler = L.BertPooler(config) if add_pooling_layer else None

    def _positions(self, input_ids, inputs_embeds):
        positions = L.fairseq_positions(input_ids, inputs_embeds, PADDING_IDX)
        table, top = self.config.max_position_embeddings, L.largest(positions)
        if top is not None and top >= table:
            raise ValueError(
                f"the input needs position id {top} but max_position_embeddings={table}: MPNet numbers "
                f"tokens from {PADDING_IDX + 1}, so at most {table - PADDING_IDX - 1} non-padding tokens fit, got "
                f"{positions.shape[1]} tokens"
            )
        return positions

    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             output_attentions=False, output_hidden_states=False, training=False):
        config = self.config
        _, mask, _, head_masks = L.prepare_encoder_inputs(
            config, input_ids, inputs_embeds, config.hidden_size, attention_mask, head_mask, None, None, None,
            self.compute_dtype, position_ids=position_ids,
        )
        if position_ids is None:
            position_ids = self._positions(input_ids, inputs_embeds)
        hidden = self.embeddings(input_ids, position_ids, inputs_embeds, training=training)
        hidden, all_hidden, all_attn = self.encoder(hidden, mask, head_masks, output_attentions, output_hidden_states,
                                                    training=training)
        return TFBaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            hidden_states=all_hidden, attentions=all_attn,
        )


class TFMPNetPreTrainedModel(TFPreTrainedModel):
    config_class = MPNetConfig
    base_model_prefix = "mpnet"
    # The reference's TF heads keep a pooler they never use; their tf_model.h5 files carry its weights.
    _keys_to_ignore_on_load_unexpected = [r"\.position_ids$", r"^mpnet\.pooler\."]


class TFMPNetModel(TFMPNetPreTrainedModel):
    """The bare MPNet encoder: hidden states and the pooled first token."""

    def __init__(self, config: MPNetConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.mpnet = TFMPNetMainLayer(config, name="mpnet")

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, training=False):
        output, return_dict = self._encode(locals())
        return as_output(output, return_dict)


class TFMPNetLMHead(L.LMHead):
    """Dense, GELU, LayerNorm, then the projection onto the vocabulary through the word embedding matrix
    (transposed), plus a vocabulary bias: always tied, as in the reference's TF class."""

    def __init__(self, config: MPNetConfig, input_embeddings, **kwargs):
        super().__init__(config, input_embeddings, True, **kwargs)


class TFMPNetForMaskedLM(TFMPNetPreTrainedModel):
    """Predicts masked tokens; labels of -100 are ignored, the loss is the mean over the others."""

    # The tied matrix has no variable of its own; PyTorch checkpoints still name it, and the bias twice.
    _keys_to_ignore_on_load_unexpected = TFMPNetPreTrainedModel._keys_to_ignore_on_load_unexpected + [
        r"^lm_head\.decoder\.weight$", r"^lm_head\.decoder\.bias$"
    ]

    def __init__(self, config: MPNetConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.mpnet = TFMPNetMainLayer(config, add_pooling_layer=False, name="mpnet")
        self.lm_head = TFMPNetLMHead(config, self.mpnet.embeddings.word_embeddings, name="lm_head")

    def get_output_embeddings(self):
        return self.lm_head

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=False):
        body, return_dict = self._encode(locals())
        return L.token_head_output(TFMaskedLMOutput, self.lm_head(body.last_hidden_state), labels, body, return_dict)


class TFMPNetClassificationHead(L.ClassificationHead):
    """Sentence-level head on the first token: dropout, dense with tanh, dropout, projection; MPNet has no
    ``classifier_dropout``, its dropout is ``hidden_dropout_prob``."""

    def __init__(self, config: MPNetConfig, **kwargs):
        super().__init__(config, "tanh", config.hidden_dropout_prob, **kwargs)


class TFMPNetForSequenceClassification(TFMPNetPreTrainedModel):
    """Classification (cross-entropy) or regression (one label: squared error) of the whole sequence;
    the loss has one value per example."""

    def __init__(self, config: MPNetConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.head_body(self, TFMPNetMainLayer(config, add_pooling_layer=False, name="mpnet"))
        self.classifier = TFMPNetClassificationHead(config, name="classifier")

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=False):
        body, return_dict = self._encode(locals())
        logits = self.classifier(body.last_hidden_state, training=training)
        return L.sequence_head_output(logits, labels, self.config, body, return_dict)


class TFMPNetForMultipleChoice(TFMPNetPreTrainedModel):
    """Scores each of ``num_choices`` candidate sequences from its pooled first token; inputs are
    (batch, num_choices, sequence)."""

    def __init__(self, config: MPNetConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_pooled_choice_classifier(self, TFMPNetMainLayer(config, name="mpnet"))

    dummy_inputs = L.choice_dummy_inputs_property

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=False):
        num_choices = L.count_choices(input_ids, inputs_embeds, "hidden_size")
        input_ids, attention_mask, position_ids, inputs_embeds = L.flatten_choices(
            input_ids, attention_mask, position_ids, inputs_embeds
        )
        body, return_dict = self._encode(locals())
        return L.pooled_choice_output(self, body, num_choices, labels, return_dict, training)


class TFMPNetForTokenClassification(TFMPNetPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored, the loss is the mean over the
    others (shape (1,))."""

    def __init__(self, config: MPNetConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_token_classifier(self, TFMPNetMainLayer(config, add_pooling_layer=False, name="mpnet"),
                               config.hidden_dropout_prob)

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, labels=None, training=False):
        body, return_dict = self._encode(locals())
        logits = self.classifier(self.dropout(body.last_hidden_state, training=training))
        return L.token_head_output(TFTokenClassifierOutput, logits, labels, body, return_dict)


class TFMPNetForQuestionAnswering(TFMPNetPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2); the loss has one
    value per example, the mean of the start and end cross-entropies."""

    def __init__(self, config: MPNetConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        L.add_span_classifier(self, TFMPNetMainLayer(config, add_pooling_layer=False, name="mpnet"))

    @unpack_inputs
    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, start_positions=None,
             end_positions=None, training=False):
        body, return_dict = self._encode(locals())
        logits = self.qa_outputs(body.last_hidden_state)
        return L.span_head_output(logits, start_positions, end_positions, body, return_dict)

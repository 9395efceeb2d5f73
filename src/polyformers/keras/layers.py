"""Keras 3 primitives shared by every family: activations, input checks, masks, attention with a cache,
the BERT encoder stack, the heads' losses with the reference's TensorFlow semantics, and what the
encoder families' task heads share (classification and LM heads, multiple-choice inputs, outputs).

Everything is written with ``keras.ops`` so the same layers run on any Keras backend. Attribute names
of layers are the PyTorch checkpoint's module names (``attention.self.query``, ``LayerNorm``, ...):
:mod:`polyformers.keras.modeling` derives each variable's checkpoint key from them. Where Keras reserves
the name (``output``, ``summary``), the attribute carries a trailing underscore that the key drops.
"""

from __future__ import annotations

import math
from typing import Optional

import ml_dtypes
import numpy as np

import keras
from keras import ops

from .._shared import check_cross_attention, checked_position_embedding_type, pick_activation
from ..outputs import (
    TFMultipleChoiceModelOutput,
    TFQuestionAnsweringModelOutput,
    TFSequenceClassifierOutput,
    TFTokenClassifierOutput,
)
from .modeling import Composite, as_output, unpack_inputs

# ---------------------------------------------------------------------------------------------------
# Activations and building blocks


def _gelu_tanh(x):
    return ops.gelu(x, approximate=True)


def _gelu_erf(x):
    # Written out with erf: TensorFlow's own exact gelu goes through erfc, about twice as slow on CPU.
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


_ACTIVATIONS = {
    "gelu": _gelu_erf,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "quick_gelu": lambda x: x * ops.sigmoid(1.702 * x),
    "relu": ops.relu,
    "relu6": ops.relu6,
    "silu": ops.silu,
    "swish": ops.silu,
    "tanh": ops.tanh,
    "sigmoid": ops.sigmoid,
    "linear": lambda x: x,
}


def get_activation(name):
    """The activation a config names (``hidden_act``); callables pass through."""
    return pick_activation(_ACTIVATIONS, name)


class Block(Composite, keras.layers.Layer):
    """A layer made of other layers (see :class:`Composite`). Calls pass flags and None positionally, as
    the PyTorch modules do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._allow_non_tensor_positional_args = True


def initializer(config):
    # The reference's TF models draw from a truncated normal of ``initializer_range``.
    return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


def dense(units: int, config, **kwargs) -> keras.layers.Dense:
    return keras.layers.Dense(units, kernel_initializer=initializer(config), **kwargs)


def layer_norm(config) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=config.layer_norm_eps)


def embedding(rows: int, width: int, config) -> keras.layers.Embedding:
    return keras.layers.Embedding(rows, width, embeddings_initializer=initializer(config))


# ---------------------------------------------------------------------------------------------------
# Input checks: values are checked only when they are concrete (eager); in a traced graph the shapes
# and dtypes still are.


def concrete(x) -> Optional[np.ndarray]:
    """``x`` as a numpy array when it holds values now, None while it is traced symbolically."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x
    try:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    except Exception:  # a symbolic tensor (tf.function, jax.jit) has no values yet
        return None


def check_ids(name: str, ids, limit: int, what: str) -> None:
    """Integer ids within ``[0, limit)``: wrong dtypes always raise, values when they are known."""
    if ids is None:
        return
    dtype = keras.backend.standardize_dtype(ids.dtype)
    if "int" not in dtype:
        raise TypeError(f"{name} must hold integer ids (int32 or int64), got dtype {dtype}")
    values = concrete(ids)
    if values is not None and values.size:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= limit:
            bad = low if low < 0 else high
            raise IndexError(f"{name} holds id {bad}, outside [0, {limit}) (the {what})")


def check_shape(name: str, x, expected: tuple) -> None:
    """``expected`` may hold None for a dimension that is free."""
    if x is None:
        return
    shape = tuple(x.shape)
    if len(shape) != len(expected) or any(e is not None and s is not None and s != e for s, e in zip(shape, expected)):
        shown = ", ".join("any" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} has shape {shape}, expected ({shown}{',' if len(expected) == 1 else ''})")


# ---------------------------------------------------------------------------------------------------
# Masks: additive, 0 where attention is allowed and the dtype's minimum where it is not.


def min_value(dtype) -> float:
    return float(ml_dtypes.finfo(keras.backend.standardize_dtype(dtype)).min)


def padding_bias(mask, dtype):
    """(batch, key) 1/0 mask -> additive (batch, 1, 1, key)."""
    mask = ops.cast(mask, dtype)[:, None, None, :]
    return (1.0 - mask) * min_value(dtype)


def causal_bias(mask, query_length: int, dtype):
    """Causal mask over ``cached + new`` keys combined with a (batch, key) padding mask."""
    key_length = ops.shape(mask)[-1]
    query = ops.arange(query_length)[:, None] + (key_length - query_length)
    key = ops.arange(key_length)[None, :]
    allowed = ops.cast(key <= query, dtype)[None, None] * ops.cast(mask, dtype)[:, None, None, :]
    return (1.0 - allowed) * min_value(dtype)


def expand_head_mask(head_mask, num_layers: int, dtype) -> list:
    """``head_mask`` of shape (heads,) or (layers, heads) -> per-layer (1, heads, 1, 1) multipliers."""
    if head_mask is None:
        return [None] * num_layers
    head_mask = ops.cast(ops.convert_to_tensor(head_mask), dtype)
    if len(head_mask.shape) == 1:
        head_mask = ops.broadcast_to(head_mask[None, :], (num_layers, head_mask.shape[0]))
    elif len(head_mask.shape) != 2:
        raise ValueError(f"head_mask must have shape (heads,) or (layers, heads), got {tuple(head_mask.shape)}")
    if head_mask.shape[0] != num_layers:
        raise ValueError(f"head_mask covers {head_mask.shape[0]} layers, expected {num_layers} (num_hidden_layers)")
    return [head_mask[i][None, :, None, None] for i in range(num_layers)]


def position_ids_after_padding(input_ids, padding_idx: int, past_length=0):
    """fairseq's numbering (RoBERTa, MPNet): a row's real tokens are ``padding_idx + 1 + past``, ``+ 2``,
    ...; padding tokens get ``padding_idx``, whose embedding row is the padding row."""
    real = ops.cast(ops.not_equal(input_ids, padding_idx), "int32")
    return (ops.cumsum(real, axis=1) + past_length) * real + padding_idx


def fairseq_positions(input_ids, inputs_embeds, padding_idx: int, past_length=0):
    """Position ids of RoBERTa-style models: :func:`position_ids_after_padding` for ``input_ids``; for
    ``inputs_embeds``, which do not say which rows are padding, every token takes the next position after
    ``padding_idx`` (cached positions are not added, as in the reference)."""
    if input_ids is not None:
        return position_ids_after_padding(input_ids, padding_idx, past_length)
    batch, length = ops.shape(inputs_embeds)[0], ops.shape(inputs_embeds)[1]
    return ops.broadcast_to(ops.arange(padding_idx + 1, padding_idx + 1 + length)[None], (batch, length))


def largest(x) -> Optional[int]:
    """The largest value of ``x`` when its values are known now and it is not empty, else None."""
    values = concrete(x)
    return int(values.max()) if values is not None and values.size else None


# ---------------------------------------------------------------------------------------------------
# Attention


def check_head_split(config) -> None:
    """The hidden size must split evenly into ``num_attention_heads`` heads."""
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"hidden_size ({config.hidden_size}) must be divisible by num_attention_heads "
            f"({config.num_attention_heads})"
        )


def split_heads(x, num_heads: int):
    """(batch, seq, heads * dim) -> (batch, heads, seq, dim)."""
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    # The head size stays static when batch and length are free (a serving signature): attention scales by it.
    x = ops.reshape(x, (batch, length, num_heads, x.shape[-1] // num_heads))
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """(batch, heads, seq, dim) -> (batch, seq, heads * dim)."""
    batch, heads, length, size = (ops.shape(x)[i] for i in range(4))
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch, length, heads * size))


def attend(query, key, value, bias=None, *, dropout=None, head_mask=None, training=False):
    """Scaled dot-product attention over (batch, heads, seq, dim); ``bias`` is added to the scaled
    scores, ``dropout`` (a Dropout layer) applies to the probabilities. Returns (context, weights): the
    probabilities after dropout and head mask, which the reference returns as attentions."""
    scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) * (1.0 / math.sqrt(query.shape[-1]))
    if bias is not None:
        scores = scores + ops.cast(bias, scores.dtype)
    probs = ops.softmax(scores, axis=-1)
    weights = dropout(probs, training=training) if dropout is not None else probs
    if head_mask is not None:
        weights = weights * head_mask
    return ops.matmul(weights, value), weights


class BertSelfAttention(Block):
    """Multi-head attention. A decoder keeps (key, value) per layer; as cross-attention it attends to
    the encoder's states, whose projections are computed once and reused from the cache afterwards."""

    def __init__(self, config, position_embedding_type: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        check_head_split(config)
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = dense(config.hidden_size, config)
        self.key = dense(config.hidden_size, config)
        self.value = dense(config.hidden_size, config)
        self.dropout = keras.layers.Dropout(config.attention_probs_dropout_prob)
        self.position_embedding_type = checked_position_embedding_type(config, position_embedding_type)
        self.max_position_embeddings = config.max_position_embeddings
        if self.position_embedding_type != "absolute":
            self.distance_embedding = embedding(2 * config.max_position_embeddings - 1, self.head_size, config)
        self.is_decoder = config.is_decoder

    def _relative_bias(self, query, key, cached: bool):
        # Shaw et al.: a learned vector per clipped distance, dotted with the query (and the key for
        # "relative_key_query"), scaled like the scores.
        q_len, k_len = ops.shape(query)[2], ops.shape(key)[2]
        left = ops.full((1, 1), k_len - 1, "int32") if cached else ops.arange(q_len)[:, None]
        right = ops.arange(k_len)[None, :]
        distance = ops.cast(self.distance_embedding(left - right + self.max_position_embeddings - 1), query.dtype)
        bias = ops.einsum("bhld,lrd->bhlr", query, distance)
        if self.position_embedding_type == "relative_key_query":
            bias = bias + ops.einsum("bhrd,lrd->bhlr", key, distance)
        return bias / math.sqrt(self.head_size)

    def call(self, hidden_states, mask=None, head_mask=None, encoder_hidden_states=None, past_key_value=None,
             training=False):
        query = split_heads(self.query(hidden_states), self.num_heads)
        cross = encoder_hidden_states is not None
        if cross and past_key_value is not None:
            key, value = past_key_value
        else:
            source = encoder_hidden_states if cross else hidden_states
            key = split_heads(self.key(source), self.num_heads)
            value = split_heads(self.value(source), self.num_heads)
            if past_key_value is not None:
                key = ops.concatenate([ops.cast(past_key_value[0], key.dtype), key], axis=2)
                value = ops.concatenate([ops.cast(past_key_value[1], value.dtype), value], axis=2)
        bias = mask
        if self.position_embedding_type != "absolute":
            relative = self._relative_bias(query, key, cached=past_key_value is not None)
            bias = relative if bias is None else bias + relative
        context, probs = attend(query, key, value, bias, dropout=self.dropout, head_mask=head_mask, training=training)
        present = (key, value) if self.is_decoder else None
        return merge_heads(context), probs, present


class BertSelfOutput(Block):
    """Projection, dropout, then the residual and a post-norm."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(config.hidden_size, config)
        self.LayerNorm = layer_norm(config)
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)

    def call(self, hidden_states, residual, training=False):
        return self.LayerNorm(self.dropout(self.dense(hidden_states), training=training) + residual)


class BertAttention(Block):
    def __init__(self, config, position_embedding_type: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.self = BertSelfAttention(config, position_embedding_type)
        self.output_ = BertSelfOutput(config)

    def call(self, hidden_states, mask=None, head_mask=None, encoder_hidden_states=None, past_key_value=None,
             training=False):
        context, probs, present = self.self(
            hidden_states, mask, head_mask, encoder_hidden_states, past_key_value, training=training
        )
        return self.output_(context, hidden_states, training=training), probs, present


class BertIntermediate(Block):
    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(config.intermediate_size, config)
        self.intermediate_act_fn = get_activation(config.hidden_act)

    def call(self, hidden_states):
        # On (tokens, width) TensorFlow fuses matmul, bias and activation into one kernel; a 3-D Dense
        # puts a reshape between them and loses that.
        shape = ops.shape(hidden_states)
        flat = ops.reshape(hidden_states, (-1, hidden_states.shape[-1]))
        output = self.intermediate_act_fn(self.dense(flat))
        return ops.reshape(output, (shape[0], shape[1], output.shape[-1]))


class BertLayer(Block):
    """Post-norm transformer block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.attention = BertAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        if self.add_cross_attention:
            if not self.is_decoder:
                raise ValueError(
                    "add_cross_attention=True needs is_decoder=True (cross-attention is a decoder feature)"
                )
            self.crossattention = BertAttention(config, position_embedding_type="absolute")
        self.intermediate = BertIntermediate(config)
        self.output_ = BertSelfOutput(config)

    def call(self, hidden_states, mask=None, head_mask=None, encoder_hidden_states=None, encoder_mask=None,
             past_key_value=None, training=False):
        # A decoder layer's cache is (self key, self value, cross key, cross value).
        self_past = tuple(past_key_value[:2]) if past_key_value is not None else None
        hidden_states, self_probs, present = self.attention(
            hidden_states, mask, head_mask, past_key_value=self_past, training=training
        )
        cross_probs = None
        if self.is_decoder and encoder_hidden_states is not None:
            check_cross_attention(self.add_cross_attention)
            cross_past = tuple(past_key_value[-2:]) if past_key_value is not None and len(past_key_value) == 4 else None
            hidden_states, cross_probs, cross_present = self.crossattention(
                hidden_states, encoder_mask, head_mask, encoder_hidden_states, cross_past, training=training
            )
            present = present + cross_present
        hidden_states = self.output_(self.intermediate(hidden_states), hidden_states, training=training)
        return hidden_states, self_probs, cross_probs, present


# Tensor-parallel layout of the BERT stack (and its cross-attention), as data for keras.distribution
# (see polyformers.keras.distribution): Keras matches each regex against a whole variable path, and the
# axes name, per dimension, the mesh axis that splits it ("model") or None. Query, key, value and the
# first feed-forward projection split their output columns (whole heads per device); the attention
# output and the second projection split their input rows, so each block needs one sum across devices.
# The feed-forward rules also serve MPNet, whose blocks reuse BERT's feed-forward layers.
BERT_FEED_FORWARD_LAYOUT_RULES = (
    (r".*/intermediate/dense/kernel", (None, "model")),
    (r".*/intermediate/dense/bias", ("model",)),
    (r".*/layer_\d+/output_/dense/kernel", ("model", None)),
)
BERT_LAYOUT_RULES = (
    (r".*/(cross)?attention/self/(query|key|value)/kernel", (None, "model")),
    (r".*/(cross)?attention/self/(query|key|value)/bias", ("model",)),
    (r".*/(cross)?attention/output_/dense/kernel", ("model", None)),
) + BERT_FEED_FORWARD_LAYOUT_RULES


class BertEncoder(Block):
    """The stack of :class:`BertLayer`; collects caches, attentions and hidden states as asked. As in the
    reference's TF classes, only a decoder caches, by default (``use_cache=None``) when
    ``config.use_cache`` says so."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.layer = [BertLayer(config, name=f"layer_{i}") for i in range(config.num_hidden_layers)]

    def call(self, hidden_states, mask, head_masks, encoder_hidden_states, encoder_mask, past_key_values,
             use_cache, output_attentions, output_hidden_states, training=False):
        use_cache = bool(self.config.use_cache if use_cache is None else use_cache) and self.config.is_decoder
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        all_cross = () if output_attentions and self.config.add_cross_attention else None
        cache = () if use_cache else None
        for i, layer in enumerate(self.layer):
            past = past_key_values[i] if past_key_values is not None else None
            hidden_states, probs, cross_probs, present = layer(
                hidden_states, mask, head_masks[i], encoder_hidden_states, encoder_mask, past, training=training
            )
            if use_cache:
                cache += (present,)
            if output_attentions:
                all_attn += (probs,)
                if all_cross is not None:
                    all_cross += (cross_probs,)
            if output_hidden_states:
                all_hidden += (hidden_states,)
        return hidden_states, cache, all_hidden, all_attn, all_cross


class BertEmbeddings(Block):
    """Word + position + token-type embeddings, LayerNorm and dropout. The family decides the position
    ids; ``embedding_size`` narrower than the hidden size is ELECTRA's factorised embedding."""

    def __init__(self, config, embedding_size: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        width = embedding_size or config.hidden_size
        self.word_embeddings = embedding(config.vocab_size, width, config)
        self.position_embeddings = embedding(config.max_position_embeddings, width, config)
        self.token_type_embeddings = embedding(config.type_vocab_size, width, config)
        for table in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            table.build()  # tables exist whether or not a call uses them (relative positions, tied heads)
        self.LayerNorm = layer_norm(config)
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)
        self.position_embedding_type = getattr(config, "position_embedding_type", "absolute")

    def call(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, past_length=0,
             training=False):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        shape = ops.shape(inputs_embeds)[:2]
        if token_type_ids is None:
            token_type_ids = ops.zeros(shape, "int32")
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.position_embedding_type == "absolute":
            if position_ids is None:
                position_ids = ops.arange(shape[1])[None, :] + past_length
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings), training=training)


class BertPooler(Block):
    """The first token's final state through a dense layer and tanh."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(config.hidden_size, config, activation="tanh")

    def call(self, hidden_states):
        return self.dense(hidden_states[:, 0])


class SequenceSummary(Block):
    """Pools a sequence into one vector (first/last/mean token, then an optional projection, activation
    and dropouts), configured by a config's ``summary_*`` fields."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.summary_type = getattr(config, "summary_type", "last")
        if self.summary_type not in ("first", "last", "mean"):
            raise ValueError(f"summary_type must be 'first', 'last' or 'mean', got {self.summary_type!r}")
        self.summary_ = None
        if getattr(config, "summary_use_proj", False):
            to_labels = getattr(config, "summary_proj_to_labels", False) and config.num_labels > 0
            self.summary_ = dense(config.num_labels if to_labels else config.hidden_size, config)
        name = getattr(config, "summary_activation", None)
        self.activation = get_activation(name) if name else (lambda x: x)
        self.first_dropout = keras.layers.Dropout(getattr(config, "summary_first_dropout", 0) or 0)
        self.last_dropout = keras.layers.Dropout(getattr(config, "summary_last_dropout", 0) or 0)

    def call(self, hidden_states, training=False):
        if self.summary_type == "first":
            output = hidden_states[:, 0]
        elif self.summary_type == "last":
            output = hidden_states[:, -1]
        else:
            output = ops.mean(hidden_states, axis=1)
        output = self.first_dropout(output, training=training)
        if self.summary_ is not None:
            output = self.summary_(output)
        return self.last_dropout(self.activation(output), training=training)


def prepare_encoder_inputs(config, input_ids, inputs_embeds, embedding_size, attention_mask, head_mask,
                           encoder_hidden_states, encoder_attention_mask, past_key_values, dtype,
                           token_type_ids=None, position_ids=None):
    """Validate the inputs of a BERT-style model (``token_type_ids`` and ``position_ids`` too, where the
    family takes them) and build its additive masks.

    Returns ``(past_length, mask, encoder_mask, head_masks)``; the causal mask is used when the config
    is a decoder, the encoder mask only when a decoder is given encoder states.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        check_shape("input_ids", input_ids, (None, None))
        check_ids("input_ids", input_ids, config.vocab_size, f"vocab_size={config.vocab_size}")
        batch, length = ops.shape(input_ids)[0], ops.shape(input_ids)[1]
    else:
        check_shape("inputs_embeds", inputs_embeds, (None, None, embedding_size))
        batch, length = ops.shape(inputs_embeds)[0], ops.shape(inputs_embeds)[1]
    past_length = ops.shape(past_key_values[0][0])[2] if past_key_values is not None else 0
    if attention_mask is None:
        attention_mask = ops.ones((batch, length + past_length), "int32")
    check_shape("attention_mask", attention_mask, (_static(batch), _static(length + past_length)))
    if config.is_decoder:
        mask = causal_bias(attention_mask, length, dtype)
    else:
        mask = padding_bias(attention_mask, dtype)
    encoder_mask = None
    if config.is_decoder and encoder_hidden_states is not None:
        if encoder_attention_mask is None:
            encoder_attention_mask = ops.ones(ops.shape(encoder_hidden_states)[:2], "int32")
        check_shape("encoder_attention_mask", encoder_attention_mask, tuple(encoder_hidden_states.shape[:2]))
        encoder_mask = padding_bias(encoder_attention_mask, dtype)
    head_masks = expand_head_mask(head_mask, config.num_hidden_layers, dtype)
    if token_type_ids is not None:
        check_ids("token_type_ids", token_type_ids, config.type_vocab_size, f"type_vocab_size={config.type_vocab_size}")
    check_ids("position_ids", position_ids, config.max_position_embeddings,
              f"max_position_embeddings={config.max_position_embeddings}")
    return past_length, mask, encoder_mask, head_masks


def _static(dim):
    """A dimension known while tracing, or None (free) when the graph decides it."""
    return dim if isinstance(dim, int) else None


# ---------------------------------------------------------------------------------------------------
# Losses, with the reference's TensorFlow shapes: token-level losses are the mean over the labels that
# are not -100, returned with shape (1,); sequence-level losses are one value per example.


def token_loss(logits, labels):
    """Cross-entropy over positions whose label is not -100, averaged; shape (1,)."""
    labels = ops.convert_to_tensor(labels)
    keep = ops.cast(ops.not_equal(labels, -100), "float32")
    per_token = ops.sparse_categorical_crossentropy(ops.relu(labels), ops.cast(logits, "float32"), from_logits=True)
    return ops.reshape(ops.sum(per_token * keep) / ops.sum(keep), (1,))


def causal_lm_loss(logits, labels):
    """Position t's logits against the label at t+1 (labels are the inputs, unshifted); shape (1,)."""
    return token_loss(logits[:, :-1], ops.convert_to_tensor(labels)[:, 1:])


def sequence_classification_loss(logits, labels, config):
    """One loss per example: squared error for one label, cross-entropy for several, per-example mean of
    binary cross-entropies when ``config.problem_type`` is multi-label."""
    labels = ops.convert_to_tensor(labels)
    logits = ops.cast(logits, "float32")
    if config.num_labels == 1 or config.problem_type == "regression":
        labels = ops.cast(ops.reshape(labels, ops.shape(logits)), "float32")
        return ops.mean(ops.square(logits - labels), axis=-1)
    if config.problem_type == "multi_label_classification":
        return ops.mean(ops.binary_crossentropy(ops.cast(labels, "float32"), logits, from_logits=True), axis=-1)
    return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """Extractive QA, one loss per example: the mean of the start and end cross-entropies. Positions
    outside the sequence (answers cut off by truncation) contribute nothing."""
    length = ops.shape(start_logits)[1]

    def one(logits, positions):
        positions = ops.reshape(ops.convert_to_tensor(positions), (-1,))
        inside = ops.logical_and(positions >= 0, positions < length)
        safe = ops.where(inside, positions, 0)
        loss = ops.sparse_categorical_crossentropy(safe, ops.cast(logits, "float32"), from_logits=True)
        return loss * ops.cast(inside, "float32")

    return (one(start_logits, start_positions) + one(end_logits, end_positions)) / 2.0


def choice_loss(logits, labels):
    """Multiple choice: cross-entropy over the choices, one value per example."""
    return ops.sparse_categorical_crossentropy(ops.convert_to_tensor(labels), ops.cast(logits, "float32"),
                                               from_logits=True)


# ---------------------------------------------------------------------------------------------------
# Heads: the layers and the input handling that the encoder families' task heads share


def classifier_dropout_rate(config) -> float:
    """``classifier_dropout`` where the config sets it, else ``hidden_dropout_prob``."""
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class ClassificationHead(Block):
    """Sentence-level head on the first token: dropout, dense, ``activation``, dropout, projection onto
    the labels."""

    def __init__(self, config, activation: str, dropout_rate: float, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(config.hidden_size, config)
        self.activation = get_activation(activation)
        self.dropout = keras.layers.Dropout(dropout_rate)
        self.out_proj = dense(config.num_labels, config)

    def call(self, features, training=False):
        x = self.dropout(features[:, 0, :], training=training)
        x = self.dropout(self.activation(self.dense(x)), training=training)
        return self.out_proj(x)


def tied_logits(hidden_states, embedding_matrix, bias):
    """Scores over the vocabulary through the (vocab, width) word embedding matrix, transposed, plus the
    vocabulary bias."""
    logits = ops.matmul(hidden_states, ops.transpose(ops.cast(embedding_matrix, hidden_states.dtype)))
    return logits + ops.cast(bias, logits.dtype)


class LMHead(Block):
    """Dense, GELU, LayerNorm, then the projection onto the vocabulary, plus a vocabulary bias: through
    the word embedding matrix when ``tied``, else through a ``decoder`` matrix of its own."""

    def __init__(self, config, input_embeddings, tied: bool, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(config.hidden_size, config)
        self.layer_norm = layer_norm(config)
        self.activation = get_activation("gelu")
        self.tied = tied
        # A tied head reads the embedding layer's matrix without tracking that layer as its own: one
        # variable, trained once and saved under the embedding's key.
        self._embedding_matrix = lambda: input_embeddings.embeddings
        if not tied:
            self.decoder = dense(config.vocab_size, config, use_bias=False)
        self.bias = self.add_weight(name="bias", shape=(config.vocab_size,), initializer="zeros")

    def call(self, features):
        hidden = self.layer_norm(self.activation(self.dense(features)))
        if self.tied:
            return tied_logits(hidden, self._embedding_matrix(), self.bias)
        logits = self.decoder(hidden)
        return logits + ops.cast(self.bias, logits.dtype)


def count_choices(input_ids, inputs_embeds, width: str, exact_rank: bool = True):
    """The number of choices of multiple-choice inputs: ``input_ids`` of shape (batch, num_choices,
    sequence) or ``inputs_embeds`` with a ``width`` dimension more. ``exact_rank=False`` accepts any
    rank from 3 up, as RoBERTa's check does."""
    reference = input_ids if input_ids is not None else inputs_embeds
    expected = 3 if input_ids is not None else 4
    if reference is None or (len(reference.shape) != expected if exact_rank else len(reference.shape) < 3):
        raise ValueError(
            "pass input_ids of shape (batch, num_choices, sequence) or inputs_embeds of shape "
            f"(batch, num_choices, sequence, {width}), got {None if reference is None else tuple(reference.shape)}"
        )
    return ops.shape(reference)[1]


def choice_dummy_inputs() -> dict:
    """Multiple-choice inputs for building the variables: one example, two choices."""
    return {"input_ids": np.array([[[0, 5, 6, 7, 2], [0, 8, 9, 10, 2]]], dtype="int32")}


# ``dummy_inputs`` of the multiple-choice heads, which a class body takes as its own property.
choice_dummy_inputs_property = property(lambda self: choice_dummy_inputs(), doc=choice_dummy_inputs.__doc__)


def flatten_choices(*tensors) -> tuple:
    """Each (batch, num_choices, ...) tensor as (batch * num_choices, ...), the choices run as sequences of
    their own; None stays None."""
    flat = []
    for t in tensors:
        if t is not None:
            t = ops.convert_to_tensor(t)
            t = ops.reshape(t, (-1,) + tuple(ops.shape(t)[2:]))
        flat.append(t)
    return tuple(flat)


def check_span_labels(config) -> None:
    """Extractive question answering scores a start and an end per token."""
    if config.num_labels != 2:
        raise ValueError(f"question answering needs config.num_labels == 2 (start, end), got {config.num_labels}")


def head_body(model, main_layer, num_labels: bool = True) -> None:
    """A task head model's first layers: ``num_labels`` from its config (unless ``num_labels=False``), then
    ``main_layer`` under the model's ``base_model_prefix``, the key prefix of its weights in checkpoints."""
    if num_labels:
        model.num_labels = model.config.num_labels
    setattr(model, model.base_model_prefix, main_layer)


def add_token_classifier(model, main_layer, dropout_rate: float) -> None:
    """The layers of a token-classification head: :func:`head_body`, then ``dropout`` and the
    ``classifier`` onto the labels."""
    head_body(model, main_layer)
    model.dropout = keras.layers.Dropout(dropout_rate)
    model.classifier = dense(model.config.num_labels, model.config)


def add_span_classifier(model, main_layer) -> None:
    """The layers of an extractive question-answering head (``num_labels`` must be 2): :func:`head_body`,
    then ``qa_outputs``, the start and end logits."""
    check_span_labels(model.config)
    head_body(model, main_layer)
    model.qa_outputs = dense(model.config.num_labels, model.config)


def add_pooled_choice_classifier(model, main_layer) -> None:
    """The layers of a multiple-choice head that scores each choice's pooled first token: the main layer
    (with its pooler), then ``dropout`` (``hidden_dropout_prob``) and the one-score ``classifier``; the
    call ends with :func:`pooled_choice_output`."""
    head_body(model, main_layer, num_labels=False)
    model.dropout = keras.layers.Dropout(model.config.hidden_dropout_prob)
    model.classifier = dense(1, model.config)


def pooled_choice_output(model, body, num_choices, labels, return_dict: bool, training=False):
    """Multiple choice from the main layer's pooled outputs (one per flattened choice): ``model.dropout``,
    ``model.classifier``, then as :func:`choice_head_output`."""
    pooled = model.dropout(body.pooler_output, training=training)
    return choice_head_output(model.classifier(pooled), num_choices, labels, body, return_dict)


def head_output(output_class, body, return_dict: bool, **fields):
    """A head's output: its own ``fields`` plus the main layer's (``body``) hidden states and attentions,
    as ``output_class`` or, with ``return_dict=False``, the tuple of the fields that are set."""
    return as_output(output_class(**fields, hidden_states=body.hidden_states, attentions=body.attentions),
                     return_dict)


def token_head_output(output_class, logits, labels, body, return_dict: bool):
    """A per-token head (masked LM, token classification); its loss is :func:`token_loss`."""
    loss = token_loss(logits, labels) if labels is not None else None
    return head_output(output_class, body, return_dict, loss=loss, logits=logits)


def sequence_head_output(logits, labels, config, body, return_dict: bool):
    """Sequence classification or regression; its loss is :func:`sequence_classification_loss`."""
    loss = sequence_classification_loss(logits, labels, config) if labels is not None else None
    return head_output(TFSequenceClassifierOutput, body, return_dict, loss=loss, logits=logits)


def choice_head_output(scores, num_choices, labels, body, return_dict: bool):
    """Multiple choice: one score per flattened choice, regrouped as (batch, num_choices) logits."""
    logits = ops.reshape(scores, (-1, num_choices))
    loss = choice_loss(logits, labels) if labels is not None else None
    return head_output(TFMultipleChoiceModelOutput, body, return_dict, loss=loss, logits=logits)


def span_head_output(logits, start_positions, end_positions, body, return_dict: bool):
    """Extractive QA from (batch, sequence, 2) logits; the loss needs both start and end positions."""
    start_logits, end_logits = logits[..., 0], logits[..., 1]
    loss = None
    if start_positions is not None and end_positions is not None:
        loss = span_loss(start_logits, end_logits, start_positions, end_positions)
    return head_output(TFQuestionAnsweringModelOutput, body, return_dict, loss=loss, start_logits=start_logits,
                       end_logits=end_logits)


# ---------------------------------------------------------------------------------------------------
# ``call`` of the models whose inputs are BERT's (ELECTRA, RoBERTa) where the computation after the main
# layer is the same: the family classes take these functions as their ``call``.


@unpack_inputs
def bert_model_call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                    past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                    return_dict=None, training=False):
    """The bare model: the main layer's output."""
    output, return_dict = self._encode(locals())
    return as_output(output, return_dict)


@unpack_inputs
def bert_sequence_classification_call(self, input_ids=None, attention_mask=None, token_type_ids=None,
                                      position_ids=None, head_mask=None, inputs_embeds=None, output_attentions=None,
                                      output_hidden_states=None, return_dict=None, labels=None, training=False):
    """``self.classifier`` on the hidden states; the loss is :func:`sequence_classification_loss`."""
    body, return_dict = self._encode(locals())
    logits = self.classifier(body.last_hidden_state, training=training)
    return sequence_head_output(logits, labels, self.config, body, return_dict)


@unpack_inputs
def bert_token_classification_call(self, input_ids=None, attention_mask=None, token_type_ids=None,
                                   position_ids=None, head_mask=None, inputs_embeds=None, output_attentions=None,
                                   output_hidden_states=None, return_dict=None, labels=None, training=False):
    """``self.classifier`` on each token's hidden state after ``self.dropout``; the loss is :func:`token_loss`."""
    body, return_dict = self._encode(locals())
    logits = self.classifier(self.dropout(body.last_hidden_state, training=training))
    return token_head_output(TFTokenClassifierOutput, logits, labels, body, return_dict)


@unpack_inputs
def bert_question_answering_call(self, input_ids=None, attention_mask=None, token_type_ids=None,
                                 position_ids=None, head_mask=None, inputs_embeds=None, output_attentions=None,
                                 output_hidden_states=None, return_dict=None, start_positions=None,
                                 end_positions=None, training=False):
    """Start and end logits from ``self.qa_outputs``; the loss is :func:`span_loss`."""
    body, return_dict = self._encode(locals())
    logits = self.qa_outputs(body.last_hidden_state)
    return span_head_output(logits, start_positions, end_positions, body, return_dict)

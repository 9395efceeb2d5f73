"""Generation for the Keras models on TensorFlow: greedy decoding, sampling, beam search (and beam sampling) and
contrastive search, eager or under XLA.

Every loop keeps its state at one shape, which is what ``tf.function(jit_compile=True)`` needs: the
sequences live in a ``(rows, max_length)`` buffer filled with padding, and the self-attention cache is
preallocated with ``max_length - 1`` slots per layer. Slot ``j`` holds token ``j``'s keys and values once
that token has been fed; the slots not yet written are masked out. A decoder layer appends the new token's
keys after all the slots, so each step's attention mask is the filled slots plus the new token, and the new
keys are then written into their own slot. Eagerly a loop stops as soon as nothing is left to decide and the
sequences are cut to the generated length; in a graph (XLA) they keep ``max_length`` columns, the unused ones
holding ``pad_token_id``, as the reference's TF ``generate`` does there.

Logits processors see that buffer and ``cur_len``, the number of tokens it holds (the reference's TF
processor signature ``(input_ids, scores, cur_len)``), so each is a few vectorised tensor operations that
run unchanged in both modes.

Sampling with a given ``seed`` draws every step with that seed, as the reference's TF ``generate`` does, so
seeded draws are the reference's. Contrastive search runs the model on the ``top_k`` candidates of every row
at once and keeps, besides the cache, the last layer's hidden state of every position in a
``(rows, max_length, hidden)`` buffer for the degeneration penalty. Attentions and hidden states
(``output_attentions`` / ``output_hidden_states``) are collected eagerly only, as in the reference.

Beam search makes the choices of polyformers' PyTorch ``generate``, token for token: per prompt it keeps
``num_beams`` running rows and a table of at most ``num_beams`` finished hypotheses (tokens, score, length,
beam trail). A step ranks ``num_beams * vocab`` continuations, lets the best ``num_beams`` that do not end
become the running rows and the endings among the first ``num_beams`` candidates enter the table, where the
best ``num_beams`` survive; a prompt is done once its table is full and no running row could still beat its
worst entry. Hypothesis scores are kept in float64, as the PyTorch bookkeeping keeps them in Python floats.

A model takes part by inheriting :class:`TFGenerationMixin` (before its ``TFPreTrainedModel`` base) and
implementing ``prepare_inputs_for_generation(input_ids, past_key_values=None, attention_mask=None,
cache_position=None, **kwargs)``, which returns the keyword arguments of its ``call``. With a cache,
``input_ids`` holds only the new token and ``cache_position`` is its index in the sequence: the fixed-size
cache cannot say how many tokens came before, so position ids must come from there. The model's
``past_key_values`` are per layer a tuple whose first two tensors are the self-attention keys and values,
``(batch, heads, length, head_dim)``; further ones (cross-attention) pass through unchanged.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Optional

import numpy as np
import tensorflow as tf

from ..generation_config import FIELDS, GenerationConfig
from ..outputs import (
    TFBeamSampleDecoderOnlyOutput,
    TFBeamSearchDecoderOnlyOutput,
    TFContrastiveSearchDecoderOnlyOutput,
    TFGreedySearchDecoderOnlyOutput,
    TFSampleDecoderOnlyOutput,
)

logger = logging.getLogger("polyformers")

# Settings that generate honours; any other one away from its default selects something it does not do.
# ``use_cache=False`` is accepted, but the loop always keeps the cache: the same tokens, less work.
_HONOURED = {
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "num_beams", "use_cache",
    "early_stopping", "length_penalty", "temperature", "top_k", "top_p", "repetition_penalty",
    "no_repeat_ngram_size", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
    "begin_suppress_tokens", "remove_invalid_values", "renormalize_logits", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "pad_token_id", "bos_token_id", "eos_token_id",
    "decoder_start_token_id", "penalty_alpha", "forced_decoder_ids", "output_attentions", "output_hidden_states",
}


def _is_contrastive(config) -> bool:
    """The reference's TF rule: no sampling, penalty_alpha > 0 and top_k > 1 mean contrastive search."""
    return (
        not config.do_sample and config.penalty_alpha is not None and config.penalty_alpha > 0
        and config.top_k is not None and config.top_k > 1
    )


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, (int, np.integer)) else [int(v) for v in value]


def _is_positive_int(value, low: int = 1) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low


# ===================================================================================================
# Logits processors: (input_ids buffer, scores (rows, vocab), cur_len) -> new scores


def _vocab_mask(token_ids, vocab: int):
    """(vocab,) bool, True at ``token_ids`` (a static list)."""
    ids = tf.constant(list(token_ids) or [-1], tf.int32)
    return tf.reduce_any(tf.range(vocab)[:, None] == ids[None, :], axis=1)


def _ban(scores, token_ids):
    return tf.where(_vocab_mask(token_ids, scores.shape[-1])[None, :], tf.constant(-np.inf, scores.dtype), scores)


def _force(scores, token_ids):
    allowed = tf.broadcast_to(_vocab_mask(token_ids, scores.shape[-1])[None, :], tf.shape(scores))
    return tf.where(allowed, tf.zeros_like(scores), tf.constant(-np.inf, scores.dtype))


def _occurs(tokens, where, vocab: int):
    """(rows, vocab) bool: which tokens appear in each row of ``tokens`` at the places ``where`` is True."""
    tokens = tf.cast(tokens, tf.int32)
    rows = tf.broadcast_to(tf.range(tf.shape(tokens)[0])[:, None], tf.shape(tokens))
    indices = tf.reshape(tf.stack([rows, tokens], axis=-1), (-1, 2))
    hits = tf.reshape(tf.cast(tf.broadcast_to(where, tf.shape(tokens)), tf.int32), (-1,))
    return tf.tensor_scatter_nd_add(tf.zeros((tf.shape(tokens)[0], vocab), tf.int32), indices, hits) > 0


def _filled(input_ids, cur_len):
    """(1, length) bool: the columns of the buffer that hold tokens."""
    return tf.range(input_ids.shape[1])[None, :] < cur_len


class TFLogitsProcessor:
    """Base class: next-token scores from the scores and the tokens so far. ``input_ids`` may be a longer
    buffer than the tokens so far (under XLA it is): only its first ``cur_len`` columns count."""

    def __call__(self, input_ids, scores, cur_len):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores, cur_len)")


class TFLogitsWarper(TFLogitsProcessor):
    """Base class of the processors that only reshape the sampling distribution (applied after the others)."""


class TFLogitsProcessorList(list):
    """Processors applied in order."""

    def __call__(self, input_ids, scores, cur_len):
        for processor in self:
            scores = processor(input_ids, scores, cur_len)
        return scores


class TFTemperatureLogitsWarper(TFLogitsWarper):
    """Divides the scores by ``temperature``: below 1 sharpens the distribution, above 1 flattens it."""

    def __init__(self, temperature: float):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(
                f"temperature: expected a number > 0, given {temperature!r}; for greedy decoding set do_sample=False"
            )
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores, cur_len):
        return scores / self.temperature


class TFTopKLogitsWarper(TFLogitsWarper):
    """Keeps the ``top_k`` highest scores (ties with the k-th included), the rest become ``filter_value``."""

    def __init__(self, top_k: int, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not _is_positive_int(top_k):
            raise ValueError(f"top_k: expected an int > 0, given {top_k!r}")
        if not _is_positive_int(min_tokens_to_keep):
            raise ValueError(f"min_tokens_to_keep: expected an int >= 1, given {min_tokens_to_keep!r}")
        self.top_k = max(int(top_k), int(min_tokens_to_keep))
        self.filter_value = filter_value

    def __call__(self, input_ids, scores, cur_len):
        kth = tf.math.top_k(scores, k=min(self.top_k, scores.shape[-1])).values[:, -1:]
        return tf.where(scores < kth, tf.constant(self.filter_value, scores.dtype), scores)


class TFTopPLogitsWarper(TFLogitsWarper):
    """Nucleus sampling (Holtzman et al.): keeps the smallest set of most likely tokens whose probability
    reaches ``top_p``, and at least ``min_tokens_to_keep``."""

    def __init__(self, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], given {top_p!r}")
        if not _is_positive_int(min_tokens_to_keep):
            raise ValueError(f"min_tokens_to_keep: expected an int >= 1, given {min_tokens_to_keep!r}")
        self.top_p = float(top_p)
        self.filter_value = filter_value
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids, scores, cur_len):
        # Ascending order: the tokens to drop are a prefix whose total probability stays within 1 - top_p.
        vocab = scores.shape[-1]
        order = tf.argsort(scores, axis=-1, direction="ASCENDING", stable=True)
        ranked = tf.gather(scores, order, batch_dims=1)
        cumulative = tf.math.cumsum(tf.nn.softmax(ranked, axis=-1), axis=-1)
        drop = (cumulative <= 1 - self.top_p) & (tf.range(vocab) < vocab - self.min_tokens_to_keep)[None, :]
        drop = tf.gather(drop, tf.argsort(order, axis=-1), batch_dims=1)  # back to vocabulary order
        return tf.where(drop, tf.constant(self.filter_value, scores.dtype), scores)


class TFRepetitionPenaltyLogitsProcessor(TFLogitsProcessor):
    """Makes every token already in the sequence less likely: positive scores are divided by ``penalty``,
    negative ones multiplied (CTRL, Keskar et al. 2019)."""

    def __init__(self, penalty: float):
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"repetition_penalty: expected a number > 0, given {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, input_ids, scores, cur_len):
        seen = _occurs(input_ids, _filled(input_ids, cur_len), scores.shape[-1])
        penalised = tf.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return tf.where(seen, penalised, scores)


class TFNoRepeatNGramLogitsProcessor(TFLogitsProcessor):
    """Bans any token that would complete an n-gram of size ``ngram_size`` already in the sequence (the
    prompt included)."""

    def __init__(self, ngram_size: int):
        if not _is_positive_int(ngram_size):
            raise ValueError(f"no_repeat_ngram_size: expected an int > 0, given {ngram_size!r}")
        self.ngram_size = int(ngram_size)

    def __call__(self, input_ids, scores, cur_len):
        n, length = self.ngram_size, input_ids.shape[1]
        starts = length - n + 1  # n-grams the buffer can hold, by first position
        if starts <= 0:
            return scores
        input_ids = tf.cast(input_ids, tf.int32)
        # The n-gram starting at i is banned-to-complete when its first n - 1 tokens are the sequence's last
        # n - 1; it must lie entirely in the filled part, i <= cur_len - n.
        followers = input_ids[:, n - 1: n - 1 + starts]
        matches = tf.range(starts)[None, :] <= cur_len - n
        if n > 1:
            heads = tf.stack([input_ids[:, j: j + starts] for j in range(n - 1)], axis=-1)
            tail = tf.gather(input_ids, tf.maximum(cur_len - (n - 1) + tf.range(n - 1), 0), axis=1)
            matches = matches & tf.reduce_all(heads == tail[:, None, :], axis=-1)
        banned = _occurs(followers, matches, scores.shape[-1])
        return tf.where(banned, tf.constant(-np.inf, scores.dtype), scores)


class TFNoBadWordsLogitsProcessor(TFLogitsProcessor):
    """Never completes one of ``bad_words_ids`` (lists of token ids): a one-token word is always banned, a
    longer one when the sequence ends with all of it but its last token. End-of-sequence tokens alone are
    never banned, so generation can still stop."""

    def __init__(self, bad_words_ids, eos_token_id=None):
        if (
            not isinstance(bad_words_ids, (list, tuple)) or not bad_words_ids
            or not all(isinstance(w, (list, tuple)) and w and all(_is_positive_int(t, 0) for t in w)
                       for w in bad_words_ids)
        ):
            raise ValueError(
                f"bad_words_ids: expected a non-empty list of non-empty lists of token ids, given {bad_words_ids!r}"
            )
        eos = _ids(eos_token_id)
        words = [[int(t) for t in w] for w in bad_words_ids if not (len(w) == 1 and int(w[0]) in eos)]
        self.single = sorted({w[0] for w in words if len(w) == 1})
        self.multi = [w for w in words if len(w) > 1]

    def __call__(self, input_ids, scores, cur_len):
        vocab = scores.shape[-1]
        too_big = sorted({t for w in [self.single, *self.multi] for t in w if t >= vocab})
        if too_big:
            raise ValueError(f"bad_words_ids: token ids {too_big} are outside the model's vocabulary of {vocab}")
        banned = tf.broadcast_to(_vocab_mask(self.single, vocab)[None, :], tf.shape(scores)) if self.single \
            else tf.zeros_like(scores, tf.bool)
        input_ids = tf.cast(input_ids, tf.int32)
        for word in self.multi:
            prefix = word[:-1]
            tail = tf.gather(input_ids, tf.maximum(cur_len - len(prefix) + tf.range(len(prefix)), 0), axis=1)
            ends_with_prefix = tf.reduce_all(tail == tf.constant(prefix, tf.int32)[None, :], axis=1)
            ends_with_prefix = ends_with_prefix & (len(word) <= cur_len)
            banned = banned | (ends_with_prefix[:, None] & (tf.range(vocab) == word[-1])[None, :])
        return tf.where(banned, tf.constant(-np.inf, scores.dtype), scores)


class TFMinLengthLogitsProcessor(TFLogitsProcessor):
    """Bans the end-of-sequence tokens while the sequence (prompt included) is shorter than ``min_length``."""

    def __init__(self, min_length: int, eos_token_id):
        if not _is_positive_int(min_length, 0):
            raise ValueError(f"min_length: expected an int >= 0, given {min_length!r}")
        self.min_length = int(min_length)
        self.eos_token_id = _ids(eos_token_id)

    def __call__(self, input_ids, scores, cur_len):
        return tf.where(cur_len < self.min_length, _ban(scores, self.eos_token_id), scores)


class TFMinNewTokensLengthLogitsProcessor(TFLogitsProcessor):
    """Bans the end-of-sequence tokens until ``min_new_tokens`` tokens follow the prompt."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id):
        for name, value in (("prompt_length_to_skip", prompt_length_to_skip), ("min_new_tokens", min_new_tokens)):
            if not _is_positive_int(value, 0):
                raise ValueError(f"{name}: expected an int >= 0, given {value!r}")
        self.prompt_length_to_skip = int(prompt_length_to_skip)
        self.min_new_tokens = int(min_new_tokens)
        self.eos_token_id = _ids(eos_token_id)

    def __call__(self, input_ids, scores, cur_len):
        early = cur_len - self.prompt_length_to_skip < self.min_new_tokens
        return tf.where(early, _ban(scores, self.eos_token_id), scores)


class TFForcedBOSTokenLogitsProcessor(TFLogitsProcessor):
    """Forces ``bos_token_id`` as the first generated token (after a one-token start)."""

    def __init__(self, bos_token_id: int):
        self.bos_token_id = _ids(bos_token_id)

    def __call__(self, input_ids, scores, cur_len):
        return tf.where(tf.equal(cur_len, 1), _force(scores, self.bos_token_id), scores)


class TFForcedEOSTokenLogitsProcessor(TFLogitsProcessor):
    """Forces an end-of-sequence token as the last token when ``max_length`` is reached."""

    def __init__(self, max_length: int, eos_token_id):
        self.max_length = int(max_length)
        self.eos_token_id = _ids(eos_token_id)

    def __call__(self, input_ids, scores, cur_len):
        return tf.where(tf.equal(cur_len, self.max_length - 1), _force(scores, self.eos_token_id), scores)


class TFSuppressTokensLogitsProcessor(TFLogitsProcessor):
    """Never generates the tokens of ``suppress_tokens``."""

    def __init__(self, suppress_tokens):
        self.suppress_tokens = _ids(suppress_tokens)

    def __call__(self, input_ids, scores, cur_len):
        return _ban(scores, self.suppress_tokens)


class TFSuppressTokensAtBeginLogitsProcessor(TFLogitsProcessor):
    """Bans ``begin_suppress_tokens`` at the first generated position only."""

    def __init__(self, begin_suppress_tokens, begin_index: int):
        self.begin_suppress_tokens = _ids(begin_suppress_tokens)
        self.begin_index = int(begin_index)

    def __call__(self, input_ids, scores, cur_len):
        return tf.where(tf.equal(cur_len, self.begin_index), _ban(scores, self.begin_suppress_tokens), scores)


class TFForceTokensLogitsProcessor(TFLogitsProcessor):
    """Forces chosen tokens at chosen positions: ``force_token_map`` holds ``[index, token_id]`` pairs, where
    ``index`` counts the whole sequence (prompt included), so the token at ``index`` is forced when ``cur_len``
    reaches it. A ``None`` token leaves its position free."""

    def __init__(self, force_token_map):
        if (
            not isinstance(force_token_map, (list, tuple, dict)) or not force_token_map
            or not all(isinstance(pair, (list, tuple)) and len(pair) == 2 and _is_positive_int(pair[0], 0)
                       and (pair[1] is None or _is_positive_int(pair[1], 0))
                       for pair in (force_token_map.items() if isinstance(force_token_map, dict) else force_token_map))
        ):
            raise ValueError(
                "forced_decoder_ids: expected a non-empty list of [index >= 0, token id >= 0 or None] pairs, given "
                f"{force_token_map!r}"
            )
        pairs = dict(force_token_map.items() if isinstance(force_token_map, dict) else force_token_map)
        table = np.full((max(pairs) + 1,), -1, np.int32)
        for index, token in pairs.items():
            if token is not None:
                table[index] = token
        self.force_token_array = table

    def __call__(self, input_ids, scores, cur_len):
        vocab = scores.shape[-1]
        too_big = sorted(int(t) for t in self.force_token_array if t >= vocab)
        if too_big:
            raise ValueError(f"forced_decoder_ids: token ids {too_big} are outside the model's vocabulary of {vocab}")
        table = tf.constant(self.force_token_array, tf.int32)
        token = tf.gather(table, tf.minimum(cur_len, len(self.force_token_array) - 1))
        active = (cur_len < len(self.force_token_array)) & (token >= 0)
        forced = tf.where(tf.range(vocab)[None, :] == token, tf.zeros_like(scores), tf.constant(-np.inf, scores.dtype))
        return tf.where(active, forced, scores)


class TFInfNanRemoveLogitsProcessor(TFLogitsProcessor):
    """Replaces NaN by 0 and infinities by the dtype's extremes, so that sampling never fails on them."""

    def __call__(self, input_ids, scores, cur_len):
        scores = tf.where(tf.math.is_nan(scores), tf.zeros_like(scores), scores)
        scores = tf.where(scores == np.inf, tf.fill(tf.shape(scores), scores.dtype.max), scores)
        return tf.where(scores == -np.inf, tf.fill(tf.shape(scores), scores.dtype.min), scores)


class TFLogitNormalization(TFLogitsWarper):
    """Log-softmax, so that scores are log-probabilities again after the other processors."""

    def __call__(self, input_ids, scores, cur_len):
        return tf.nn.log_softmax(scores, axis=-1)


# ---------------------------------------------------------------------------------------------------


def _seed_pair(seed):
    """``seed``: None (fresh randomness each call, also in a compiled graph), an int, or two ints."""
    if seed is None:
        return tf.random.uniform((2,), maxval=2**31 - 1, dtype=tf.int32)
    pair = [seed, 0] if isinstance(seed, (int, np.integer)) else list(seed)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) for s in pair):
        raise ValueError(f"seed: expected an int or two ints for the stateless sampler, given {seed!r}")
    return tf.constant(pair, dtype=tf.int32)


def _write_column(buffer, column, values):
    """``buffer`` (..., length) with ``values`` (...) written at index ``column`` of its last axis."""
    at = tf.range(buffer.shape[-1]) == column
    return tf.where(at, tf.cast(values, buffer.dtype)[..., None], buffer)


def _write(buffer, update, start):
    """``buffer`` with ``update`` written at ``start`` (one index per axis), a fixed-shape update XLA keeps
    in place."""
    from tensorflow.compiler.tf2xla.python import xla  # the op XLA lowers to an in-place update

    return xla.dynamic_update_slice(buffer, tf.cast(update, buffer.dtype), tf.stack(start))


def _last_logits(outputs):
    return tf.cast(outputs.logits[:, -1, :], tf.float32)


def _slot_cache(cache, present, position, pick=None):
    """``cache`` with the keys and values of the token just fed (the last entries of ``present``, of the rows
    ``pick`` when given) written into slot ``position``."""
    at = [0, 0, position, 0]

    def newest(t):
        t = t[:, :, -1:]
        return t if pick is None else tf.gather(t, pick, axis=0)

    return tuple(
        (_write(old[0], newest(new[0]), at), _write(old[1], newest(new[1]), at)) + tuple(old[2:])
        for old, new in zip(cache, present)
    )


def _contrastive_choice(context, cur_len, candidates, probs, alpha: float, k: int):
    """Per prompt row, the index among its ``k`` candidates with the best contrastive score
    ``(1 - alpha) * probability - alpha * degeneration``, where degeneration is the candidate's highest cosine
    similarity to the last hidden state of any position before ``cur_len``. ``context``: (rows, max_length,
    hidden), filled up to ``cur_len``; ``candidates``: (rows * k, hidden); ``probs``: (rows, k)."""

    def unit(x):
        norm = tf.norm(x, axis=-1, keepdims=True)
        return x / tf.where(norm > 0, norm, tf.ones_like(norm))  # the unfilled (zero) positions stay zero

    candidates = tf.reshape(unit(candidates), (tf.shape(probs)[0], k, candidates.shape[-1]))
    similarity = tf.linalg.matmul(unit(context), candidates, transpose_b=True)  # (rows, max_length, k)
    filled = (tf.range(context.shape[1]) < cur_len)[None, :, None]
    degeneration = tf.reduce_max(tf.where(filled, similarity, tf.constant(-np.inf, similarity.dtype)), axis=1)
    score = (1.0 - alpha) * probs - alpha * degeneration
    return tf.argmax(score, axis=-1, output_type=tf.int32)


class _Trace:
    """The attentions and hidden states of each step, when ``return_dict_in_generate`` comes with
    ``output_attentions`` / ``output_hidden_states``: per step, one tensor per layer as the model returns them
    for the token(s) fed, with the attention weights over the positions so far (the reference's layout, not
    the preallocated cache's). Like the reference's TF ``generate``, they are collected eagerly only: inside
    a compiled function the asked-for fields are empty tuples."""

    def __init__(self, config, eager: bool):
        wanted = bool(config.return_dict_in_generate)
        self.asked_attentions = wanted and bool(config.output_attentions)
        self.asked_hidden_states = wanted and bool(config.output_hidden_states)
        self.attentions = self.asked_attentions and eager
        self.hidden_states = self.asked_hidden_states and eager
        self._attentions, self._hidden_states = [], []

    def add(self, outputs, position, pick=None):
        """Note a forward pass; ``position``: the index of the single token fed (None for the prompt);
        ``pick``: the rows to keep (contrastive search keeps the chosen candidates)."""
        def rows(t):
            return t if pick is None else tf.gather(t, pick, axis=0)

        if self.attentions:
            layers = tuple(rows(a) for a in outputs.attentions)
            if position is not None:  # the filled slots, then the token itself
                p = int(position)
                layers = tuple(tf.concat([a[..., :p], a[..., -1:]], axis=-1) for a in layers)
            self._attentions.append(layers)
        if self.hidden_states:
            self._hidden_states.append(tuple(rows(h) for h in outputs.hidden_states))

    def fields(self, steps: int) -> dict:
        return {
            "attentions": tuple(self._attentions[:steps]) if self.asked_attentions else None,
            "hidden_states": tuple(self._hidden_states[:steps]) if self.asked_hidden_states else None,
        }


class _Hypotheses:
    """Per prompt, up to ``num_beams`` finished sequences: tokens (ending with their end-of-sequence token
    when they have one), score (summed log-probability / generated length ** length_penalty, float64),
    length (tokens before the end), validity and beam trail. Arrays are (batch, num_beams, ...)."""

    @staticmethod
    def empty(batch, beams, max_length, steps, pad):
        return (
            tf.fill((batch, beams, max_length), pad),
            tf.zeros((batch, beams), tf.float64),
            tf.zeros((batch, beams), tf.int32),
            tf.zeros((batch, beams), tf.bool),
            tf.fill((batch, beams, steps), -1),
        )

    @staticmethod
    def merge(kept, candidates, beams: int):
        """The best ``num_beams`` of both, earlier entries first among equal scores: the same set as adding
        the candidates one by one, each replacing the worst kept one when it beats it."""
        merged = [tf.concat([a, b], axis=1) for a, b in zip(kept, candidates)]
        scores, valid = merged[1], merged[3]
        lowest = tf.constant(np.finfo(np.float64).min, tf.float64)  # a valid -inf still ranks above a free slot
        key = tf.where(valid, tf.maximum(scores, lowest), tf.constant(-np.inf, tf.float64))
        best = tf.math.top_k(key, k=beams).indices
        return tuple(tf.gather(t, best, batch_dims=1) for t in merged)


# ===================================================================================================


class TFGenerationMixin:
    """``generate()`` for the Keras language models; see the module docstring for the model's side."""

    @property
    def generation_config(self) -> GenerationConfig:
        config = self.__dict__.get("_generation_config")
        if config is None:
            config = GenerationConfig.from_model_config(self.config)
            self.__dict__["_generation_config"] = config
        return config

    @generation_config.setter
    def generation_config(self, value: Optional[GenerationConfig]) -> None:
        if value is not None and not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config: expected a GenerationConfig, given {type(value).__name__}")
        self.__dict__["_generation_config"] = value

    def can_generate(self) -> bool:
        return True

    def generate(self, inputs=None, generation_config: Optional[GenerationConfig] = None, logits_processor=None,
                 seed=None, **kwargs):
        """Generate token ids after the prompt ``inputs`` (``input_ids``): greedily, by sampling (``do_sample``
        with ``temperature``, ``top_k``, ``top_p``; ``seed``, two ints, makes it reproducible), by beam search
        (``num_beams`` > 1 with ``length_penalty``, ``early_stopping``, ``num_return_sequences``; with
        ``do_sample`` beam sampling), or by contrastive search (``penalty_alpha`` > 0 with ``top_k`` > 1 and no
        sampling; as in the reference's TF ``generate`` it takes precedence over ``num_beams``).

        Settings come from ``generation_config`` (default: the model's, read from ``generation_config.json``
        by ``from_pretrained``), overridden by keyword arguments that are fields of it (``max_new_tokens=20``,
        ``repetition_penalty=1.2``, ``no_repeat_ngram_size``, ``bad_words_ids``, ``min_length``,
        ``min_new_tokens``, ``forced_bos_token_id``, ``forced_eos_token_id``, ``forced_decoder_ids``, ...); the
        other keyword arguments
        are model inputs (``attention_mask`` for left-padded prompts, ...). ``logits_processor`` adds
        processors called as ``processor(input_ids, scores, cur_len)``. Returns the sequences, prompt
        included, or with ``return_dict_in_generate=True`` a ``TFGreedySearchDecoderOnlyOutput``,
        ``TFSampleDecoderOnlyOutput``, ``TFBeamSearchDecoderOnlyOutput``, ``TFBeamSampleDecoderOnlyOutput`` or
        ``TFContrastiveSearchDecoderOnlyOutput`` holding them (beam search adds ``sequences_scores`` and
        ``beam_indices``) and, with ``output_scores``, the processed scores of each step; with
        ``output_attentions`` / ``output_hidden_states``, per step the model's attentions / hidden states
        (eagerly; empty tuples inside a compiled function). Runs eagerly or inside
        ``tf.function(model.generate, jit_compile=True)``.
        """
        config, model_kwargs = self._generation_settings(generation_config, kwargs)
        input_ids = self._prompt(inputs, config, model_kwargs)
        eager = tf.executing_eagerly()
        if eager:
            self.build_model()
        elif not getattr(self, "_built_by_call", False):
            raise RuntimeError(
                f"{type(self).__name__}.generate inside a tf.function needs a built model: load it with "
                "from_pretrained or call model.build_model() first"
            )

        batch, prompt_length = input_ids.shape
        if prompt_length is None:
            raise ValueError("input_ids: generate needs a prompt length known when tracing, given a free length")
        self._resolve_max_length(config, kwargs, generation_config, prompt_length)
        eos = _ids(config.eos_token_id)
        if config.pad_token_id is None and eos:
            logger.warning("Setting `pad_token_id` to `eos_token_id`:%s for open-end generation.", eos[0])
            config.pad_token_id = eos[0]

        attention_mask = model_kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = self._default_attention_mask(input_ids, config)
        attention_mask = tf.cast(attention_mask, tf.int32)
        processors = self._logits_processors(config, prompt_length, logits_processor)
        warpers = self._logits_warpers(config) if config.do_sample else TFLogitsProcessorList()
        # The reference's TF rule: penalty_alpha > 0 and top_k > 1 without sampling select contrastive search,
        # whatever num_beams says.
        contrastive = _is_contrastive(config)
        if contrastive and config.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences: contrastive search (penalty_alpha > 0, top_k > 1) returns one sequence per "
                f"prompt, so it must be 1, given {config.num_return_sequences}"
            )
        beam = config.num_beams > 1 and not contrastive
        copies = config.num_beams if beam else config.num_return_sequences if config.do_sample else 1
        if copies > 1:  # the copies of a prompt are neighbours
            input_ids = tf.repeat(input_ids, copies, axis=0)
            attention_mask = tf.repeat(attention_mask, copies, axis=0)
            model_kwargs = {k: tf.repeat(v, copies, axis=0) if tf.is_tensor(v) or isinstance(v, np.ndarray) else v
                            for k, v in model_kwargs.items()}
        fixed_seed = seed is not None
        seed = _seed_pair(seed) if config.do_sample else None
        if contrastive:
            return self._contrastive_search(input_ids, attention_mask, config, processors, model_kwargs, eager)
        if beam:
            return self._beam_search(input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager)
        return self._sample(input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager,
                            fixed_seed)

    # -- preparation ----------------------------------------------------------------------------------

    def _generation_settings(self, generation_config, kwargs):
        if generation_config is None:
            generation_config = self.generation_config
        elif not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config: expected a GenerationConfig, given {type(generation_config).__name__}")
        config = copy.deepcopy(generation_config)
        model_kwargs = config.update(**kwargs)
        config.validate()
        for name, (default, _) in FIELDS.items():
            if name not in _HONOURED and getattr(config, name) != default:
                raise ValueError(
                    f"{name}: not supported by {type(self).__name__}.generate, given {getattr(config, name)!r}; "
                    f"leave it at {default!r}"
                )
        accepted = set(self._generation_input_names())
        unknown = sorted(k for k, v in model_kwargs.items() if v is not None and k not in accepted)
        if unknown:
            raise ValueError(
                f"generate got keyword arguments that are neither generation settings nor inputs of "
                f"{type(self).__name__}: {unknown} (check for typos)"
            )
        return config, {k: v for k, v in model_kwargs.items() if v is not None}

    def _generation_input_names(self) -> tuple:
        return ("input_ids", "attention_mask", "encoder_hidden_states", "encoder_attention_mask")

    @staticmethod
    def _resolve_max_length(config, kwargs, generation_config, prompt_length: int) -> None:
        if config.max_new_tokens is not None:
            config.max_length = prompt_length + config.max_new_tokens
        elif "max_length" not in kwargs and config.max_length == 20 and generation_config is None:
            warnings.warn(
                "Using the model-agnostic default `max_length` (=20) to control the generation length. We "
                "recommend setting `max_new_tokens` to control the maximum length of the generation.", UserWarning,
            )
        if config.max_length <= prompt_length:
            raise ValueError(
                f"max_length: must exceed the prompt's {prompt_length} tokens to generate anything, given "
                f"{config.max_length}; set max_new_tokens instead"
            )
        if config.min_length and config.min_length > config.max_length:
            # The reference's TF generate refuses this too.
            raise ValueError(
                f"min_length: expected at most max_length={config.max_length} (prompt included), given "
                f"{config.min_length}"
            )

    def _prompt(self, inputs, config, model_kwargs):
        given = model_kwargs.pop("input_ids", None)
        if given is not None and inputs is not None:
            raise ValueError("inputs: pass the prompt either as inputs or as input_ids, not both")
        inputs = given if given is not None else inputs
        if inputs is None:
            if config.bos_token_id is None:
                raise ValueError("bos_token_id: needed to start generation when no input_ids are given, given None")
            return tf.fill((1, 1), tf.constant(int(config.bos_token_id), tf.int32))
        inputs = tf.convert_to_tensor(inputs)
        if inputs.shape.rank != 2 or not inputs.dtype.is_integer:
            raise ValueError(
                f"input_ids: expected integer token ids of shape (batch, sequence), given {inputs.dtype.name} "
                f"of shape {tuple(inputs.shape)}"
            )
        return inputs

    @staticmethod
    def _default_attention_mask(input_ids, config):
        """Mask out pad tokens, unless padding cannot be told from an end-of-sequence token."""
        pad = config.pad_token_id
        if pad is None or pad in _ids(config.eos_token_id):
            return tf.ones_like(input_ids, dtype=tf.int32)
        return tf.cast(tf.not_equal(input_ids, pad), tf.int32)

    @staticmethod
    def _logits_processors(config, prompt_length: int, custom) -> TFLogitsProcessorList:
        """The processors the settings ask for, in the reference's order, then the caller's own."""
        processors = TFLogitsProcessorList()
        eos = config.eos_token_id
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            processors.append(TFRepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size:
            processors.append(TFNoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            processors.append(TFNoBadWordsLogitsProcessor(config.bad_words_ids, eos))
        if config.min_length and eos is not None:
            processors.append(TFMinLengthLogitsProcessor(config.min_length, eos))
        if config.min_new_tokens and eos is not None:
            processors.append(TFMinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos))
        if config.forced_bos_token_id is not None:
            processors.append(TFForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
        if config.forced_eos_token_id is not None:
            processors.append(TFForcedEOSTokenLogitsProcessor(config.max_length, config.forced_eos_token_id))
        if config.remove_invalid_values:
            processors.append(TFInfNanRemoveLogitsProcessor())
        if config.suppress_tokens is not None:
            processors.append(TFSuppressTokensLogitsProcessor(config.suppress_tokens))
        if config.begin_suppress_tokens is not None:
            # With a forced first token, the first free position is one later.
            begin = prompt_length + (1 if prompt_length == 1 and config.forced_bos_token_id is not None else 0)
            if config.forced_decoder_ids is not None:  # and after the last forced one, as the reference counts
                begin += config.forced_decoder_ids[-1][0]
            processors.append(TFSuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin))
        if config.forced_decoder_ids is not None:
            processors.append(TFForceTokensLogitsProcessor(config.forced_decoder_ids))
        custom = [] if custom is None else custom
        if not isinstance(custom, (list, tuple)) or not all(callable(p) for p in custom):
            raise TypeError(
                f"logits_processor: expected a TFLogitsProcessorList of processors called as "
                f"processor(input_ids, scores, cur_len), given {type(custom).__name__}"
            )
        for theirs in custom:
            if any(type(theirs) is type(mine) for mine in processors):
                raise ValueError(
                    f"logits_processor: a {type(theirs).__name__} was passed, but the generation settings already "
                    "create one; change the setting instead of passing the processor"
                )
        processors.extend(custom)
        if config.renormalize_logits:
            processors.append(TFLogitNormalization())
        return processors

    @staticmethod
    def _logits_warpers(config) -> TFLogitsProcessorList:
        # Beam sampling must keep at least one token besides the end-of-sequence ones, so beams can continue.
        keep = (len(_ids(config.eos_token_id)) + 1 if isinstance(config.eos_token_id, list) else 2) \
            if config.num_beams > 1 else 1
        warpers = TFLogitsProcessorList()
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TFTemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            warpers.append(TFTopKLogitsWarper(config.top_k, min_tokens_to_keep=keep))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TFTopPLogitsWarper(config.top_p, min_tokens_to_keep=keep))
        if config.renormalize_logits:
            warpers.append(TFLogitNormalization())
        return warpers

    # -- the model, one step at a time ----------------------------------------------------------------

    def _forward(self, input_ids, past, attention_mask, cache_position, model_kwargs, trace=None,
                 hidden: bool = False):
        """One pass of the model: the outputs, with their last position's logits as float32 in ``logits``. The
        last layer's hidden states are asked for with ``hidden``; ``trace`` notes attentions and hidden states
        where the caller asked for them."""
        inputs = self.prepare_inputs_for_generation(
            input_ids, past_key_values=past, attention_mask=attention_mask, cache_position=cache_position,
            **model_kwargs,
        )
        inputs.update(use_cache=True, return_dict=True)
        if trace is not None and trace.attentions:
            inputs["output_attentions"] = True
        if hidden or trace is not None and trace.hidden_states:
            inputs["output_hidden_states"] = True
        return self(**inputs, training=False)

    def _prefill(self, input_ids, attention_mask, max_length: int, model_kwargs, trace=None, slots=None,
                 hidden: bool = False):
        """The prompt in one pass: the model's outputs, the cache grown to its preallocated ``slots`` (by
        default ``max_length - 1``) and the attention mask of every position the sequences can reach."""
        rows, prompt_length = tf.shape(input_ids)[0], input_ids.shape[1]
        slots = max_length - 1 if slots is None else slots
        outputs = self._forward(input_ids, None, attention_mask, tf.constant(0, tf.int32), model_kwargs, trace,
                                hidden)
        if trace is not None:
            trace.add(outputs, None)
        widen = [[0, 0], [0, 0], [0, slots - prompt_length], [0, 0]]
        cache = tuple((tf.pad(layer[0], widen), tf.pad(layer[1], widen)) + tuple(layer[2:])
                      for layer in outputs.past_key_values)
        # Generated tokens are always attended to, even after a row ends, as the reference does.
        full_mask = tf.concat([attention_mask, tf.ones((rows, max_length - prompt_length), tf.int32)], axis=1)
        return outputs, cache, full_mask

    def _feed(self, tokens, position, cache, full_mask, model_kwargs, trace=None, hidden: bool = False):
        """Feed ``tokens`` (rows, 1) as the token at ``position``: the model's outputs; its keys and values
        are the last entries of the returned cache (see :func:`_slot_cache`)."""
        slots = cache[0][0].shape[2]
        filled = tf.cast(tf.range(slots) < position, tf.int32)[None, :] * full_mask[:, :slots]
        mask = tf.concat([filled, tf.ones((tf.shape(tokens)[0], 1), tf.int32)], axis=1)
        outputs = self._forward(tokens, cache, mask, position, model_kwargs, trace, hidden)
        return outputs

    def _extend(self, sequences, cur_len, cache, full_mask, model_kwargs, trace=None):
        """Feed the token at ``cur_len - 1``: the next-token logits, and its keys and values in their slot."""
        position = cur_len - 1
        token = tf.gather(sequences, [position], axis=1)
        outputs = self._feed(token, position, cache, full_mask, model_kwargs, trace)
        if trace is not None:
            trace.add(outputs, position)
        return _last_logits(outputs), _slot_cache(cache, outputs.past_key_values, position)

    # -- greedy decoding and sampling -----------------------------------------------------------------

    def _sample(self, input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager: bool,
                fixed_seed: bool = False):
        rows, prompt_length = tf.shape(input_ids)[0], input_ids.shape[1]
        max_length = config.max_length
        eos = tf.constant(_ids(config.eos_token_id) or [-1], tf.int32)
        pad = tf.constant(0 if config.pad_token_id is None else int(config.pad_token_id), tf.int32)
        record = config.return_dict_in_generate and config.output_scores

        def choose(logits, cur_len, sequences, unfinished, scores):
            """Pick the token at ``cur_len``, write it, and note which rows have ended."""
            logits = processors(sequences, logits, cur_len)
            if config.do_sample:
                logits = warpers(sequences, logits, cur_len)
                # A given seed draws every step with that same seed, as the reference's TF sampling does (so
                # that its seeded draws are ours); without one each step folds its index into a random pair.
                step_seed = seed if fixed_seed else tf.random.experimental.stateless_fold_in(seed, cur_len)
                tokens = tf.random.stateless_categorical(logits, 1, seed=step_seed, dtype=tf.int32)[:, 0]
            else:
                tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            tokens = tf.where(unfinished, tokens, pad)
            sequences = _write_column(sequences, cur_len, tokens)
            unfinished = unfinished & ~tf.reduce_any(tokens[:, None] == eos[None, :], axis=-1)
            if record:
                scores = tf.tensor_scatter_nd_update(scores, [[cur_len - prompt_length]], logits[None])
            return sequences, unfinished, scores

        trace = _Trace(config, eager)
        outputs, cache, full_mask = self._prefill(input_ids, attention_mask, max_length, model_kwargs, trace)
        logits = _last_logits(outputs)
        sequences = tf.concat(
            [tf.cast(input_ids, tf.int32), tf.fill((rows, max_length - prompt_length), pad)], axis=1
        )
        scores = tf.zeros((max_length - prompt_length, rows, logits.shape[-1]), tf.float32) if record else tf.zeros(())
        unfinished = tf.ones((rows,), tf.bool)
        cur_len = tf.constant(prompt_length, tf.int32)
        sequences, unfinished, scores = choose(logits, cur_len, sequences, unfinished, scores)
        cur_len += 1

        def keep_going(cur_len, sequences, unfinished, cache, scores):
            return (cur_len < max_length) & tf.reduce_any(unfinished)

        def step(cur_len, sequences, unfinished, cache, scores):
            logits, cache = self._extend(sequences, cur_len, cache, full_mask, model_kwargs, trace)
            sequences, unfinished, scores = choose(logits, cur_len, sequences, unfinished, scores)
            return cur_len + 1, sequences, unfinished, cache, scores

        cur_len, sequences, unfinished, cache, scores = tf.while_loop(
            keep_going, step, (cur_len, sequences, unfinished, cache, scores),
            maximum_iterations=max_length - prompt_length,
        )
        steps = max_length - prompt_length
        if eager:
            steps = int(cur_len) - prompt_length
            sequences = sequences[:, : int(cur_len)]
        sequences = tf.cast(sequences, input_ids.dtype)
        if not config.return_dict_in_generate:
            return sequences
        cls = TFSampleDecoderOnlyOutput if config.do_sample else TFGreedySearchDecoderOnlyOutput
        return cls(sequences=sequences, scores=tuple(tf.unstack(scores[:steps])) if record else None,
                   **trace.fields(steps))

    # -- contrastive search ---------------------------------------------------------------------------

    def _contrastive_search(self, input_ids, attention_mask, config, processors, model_kwargs, eager: bool):
        """Contrastive search (Su et al. 2022): of the ``top_k`` most likely next tokens, take the one that
        maximises ``(1 - penalty_alpha) * probability - penalty_alpha * degeneration``, where degeneration is
        the highest cosine similarity between the candidate's last hidden state and those of every earlier
        position (prompt included, padding too, as in the reference).

        Each step runs the model once on all ``top_k`` candidates of every row (rows x top_k, with the cache
        repeated) and keeps the chosen candidate's keys and values, hidden state and logits, so the next
        step's distribution is already known. The cache has ``max_length`` slots: the candidates of the last
        position are fed too.
        """
        k, alpha = int(config.top_k), float(config.penalty_alpha)
        rows, prompt_length = tf.shape(input_ids)[0], input_ids.shape[1]
        max_length = config.max_length
        steps = max_length - prompt_length
        eos = tf.constant(_ids(config.eos_token_id) or [-1], tf.int32)
        pad = tf.constant(0 if config.pad_token_id is None else int(config.pad_token_id), tf.int32)
        record = config.return_dict_in_generate and config.output_scores
        trace = _Trace(config, eager)

        outputs, cache, full_mask = self._prefill(input_ids, attention_mask, max_length, model_kwargs, trace,
                                                  slots=max_length, hidden=True)
        logits = _last_logits(outputs)
        vocab = logits.shape[-1]
        if k > vocab:
            raise ValueError(
                f"top_k: contrastive search ranks top_k candidates among the model's {vocab} tokens, so it must be "
                f"at most {vocab}, given {k}"
            )
        # The last layer's hidden state of every position so far, zeros after.
        context = tf.pad(tf.cast(outputs.hidden_states[-1], tf.float32), [[0, 0], [0, steps], [0, 0]])
        candidate_mask = tf.repeat(full_mask, k, axis=0)
        candidate_kwargs = {name: tf.repeat(v, k, axis=0) if tf.is_tensor(v) or isinstance(v, np.ndarray) else v
                            for name, v in model_kwargs.items()}
        sequences = tf.concat([tf.cast(input_ids, tf.int32), tf.fill((rows, steps), pad)], axis=1)
        scores = tf.zeros((steps, rows, vocab), tf.float32) if record else tf.zeros(())
        unfinished = tf.ones((rows,), tf.bool)
        cur_len = tf.constant(prompt_length, tf.int32)

        def keep_going(cur_len, sequences, unfinished, cache, context, logits, scores):
            return (cur_len < max_length) & tf.reduce_any(unfinished)

        def step(cur_len, sequences, unfinished, cache, context, logits, scores):
            processed = processors(sequences, logits, cur_len)
            if record:
                scores = tf.tensor_scatter_nd_update(scores, [[cur_len - prompt_length]], processed[None])
            top_probs, top_ids = tf.math.top_k(tf.nn.softmax(processed, axis=-1), k=k)
            repeated = tf.nest.map_structure(lambda t: tf.repeat(t, k, axis=0), cache)
            outputs = self._feed(tf.reshape(top_ids, (-1, 1)), cur_len, repeated, candidate_mask, candidate_kwargs,
                                 trace, hidden=True)
            candidate_hidden = tf.cast(outputs.hidden_states[-1][:, -1, :], tf.float32)  # (rows * k, hidden)
            selected = _contrastive_choice(context, cur_len, candidate_hidden, top_probs, alpha, k)
            pick = tf.range(rows) * k + selected
            trace.add(outputs, cur_len, pick)
            context = _write(context, tf.gather(candidate_hidden, pick)[:, None, :], [0, cur_len, 0])
            logits = tf.gather(_last_logits(outputs), pick)
            cache = _slot_cache(cache, outputs.past_key_values, cur_len, pick)
            tokens = tf.where(unfinished, tf.gather(top_ids, selected, batch_dims=1), pad)
            sequences = _write_column(sequences, cur_len, tokens)
            unfinished = unfinished & ~tf.reduce_any(tokens[:, None] == eos[None, :], axis=-1)
            return cur_len + 1, sequences, unfinished, cache, context, logits, scores

        cur_len, sequences, _, _, _, _, scores = tf.while_loop(
            keep_going, step, (cur_len, sequences, unfinished, cache, context, logits, scores),
            maximum_iterations=steps,
        )
        taken = steps
        if eager:
            taken = int(cur_len) - prompt_length
            sequences = sequences[:, : int(cur_len)]
        sequences = tf.cast(sequences, input_ids.dtype)
        if not config.return_dict_in_generate:
            return sequences
        return TFContrastiveSearchDecoderOnlyOutput(
            sequences=sequences, scores=tuple(tf.unstack(scores[:taken])) if record else None, **trace.fields(taken)
        )

    # -- beam search ----------------------------------------------------------------------------------

    def _beam_search(self, input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager: bool):
        beams, keep = config.num_beams, config.num_return_sequences
        rows, prompt_length = input_ids.shape[0], input_ids.shape[1]
        if rows is None:
            raise ValueError("input_ids: beam search needs a batch size known when tracing, given a free batch size")
        batch = rows // beams
        max_length = config.max_length
        steps = max_length - prompt_length
        length_penalty, early_stopping = float(config.length_penalty), config.early_stopping
        eos_ids = _ids(config.eos_token_id)
        eos = tf.constant(eos_ids or [-1], tf.int32)
        pad = tf.constant(0 if config.pad_token_id is None else int(config.pad_token_id), tf.int32)
        record = config.return_dict_in_generate and config.output_scores
        # Enough candidates that num_beams survive even if every end-of-sequence token is among them.
        width = 2 * beams if config.do_sample else max(2, 1 + len(eos_ids)) * beams
        first_of = tf.range(batch)[:, None] * beams  # row of each prompt's first beam

        def normalise(total, generated):
            return tf.cast(total, tf.float64) / tf.cast(generated, tf.float64) ** length_penalty

        def choose(logits, cur_len, state):
            running, running_scores, trails, hypotheses, done, cache, scores = state
            step_scores = processors(running, tf.nn.log_softmax(logits, axis=-1), cur_len)
            if config.do_sample:
                step_scores = warpers(running, step_scores, cur_len)
            if record:
                scores = tf.tensor_scatter_nd_update(scores, [[cur_len - prompt_length]], step_scores[None])
            vocab = step_scores.shape[-1]
            totals = tf.reshape(step_scores + running_scores[:, None], (batch, beams * vocab))
            if config.do_sample:
                # Drawing without replacement: the Gumbel-top-k trick, then the draws in order of score.
                noise = tf.random.stateless_uniform(
                    tf.shape(totals), seed=tf.random.experimental.stateless_fold_in(seed, cur_len),
                    minval=np.finfo(np.float32).tiny, maxval=1.0,
                )
                candidates = tf.math.top_k(totals - tf.math.log(-tf.math.log(noise)), k=width).indices
                candidate_totals, order = tf.math.top_k(tf.gather(totals, candidates, batch_dims=1), k=width)
                candidates = tf.gather(candidates, order, batch_dims=1)
            else:
                candidate_totals, candidates = tf.math.top_k(totals, k=width)
            sources = candidates // vocab + first_of
            tokens = candidates % vocab
            ends = tf.reduce_any(tokens[..., None] == eos, axis=-1)

            # Endings among the first num_beams candidates become hypotheses, unless the prompt is done. They
            # end with the first end-of-sequence id whichever ended them, as the PyTorch search writes them.
            generated = cur_len + 1 - prompt_length
            finished = (
                _write_column(tf.gather(running, sources[:, :beams]), cur_len, tf.fill((batch, beams), eos[0])),
                normalise(candidate_totals[:, :beams], generated),
                tf.fill((batch, beams), cur_len),
                ends[:, :beams] & ~done[:, None],
                _write_column(tf.gather(trails, sources[:, :beams]), generated - 1, sources[:, :beams]),
            )
            hypotheses = _Hypotheses.merge(hypotheses, finished, beams)

            # The first num_beams candidates that do not end continue.
            rank = tf.range(width)[None, :]
            chosen = tf.math.top_k(-tf.cast(tf.where(ends, width + rank, rank), tf.float32), k=beams).indices
            next_scores = tf.gather(candidate_totals, chosen, batch_dims=1)
            next_tokens = tf.gather(tokens, chosen, batch_dims=1)
            next_sources = tf.gather(sources, chosen, batch_dims=1)
            # A done prompt's rows idle, as in the PyTorch search: padding after row 0, score 0.
            idle = done[:, None]
            next_scores = tf.reshape(tf.where(idle, 0.0, next_scores), (-1,))
            next_tokens = tf.reshape(tf.where(idle, pad, next_tokens), (-1,))
            next_sources = tf.reshape(tf.where(idle, 0, next_sources), (-1,))
            running = _write_column(tf.gather(running, next_sources), cur_len, next_tokens)
            trails = _write_column(tf.gather(trails, next_sources), generated - 1, next_sources)
            cache = tf.nest.map_structure(lambda t: tf.gather(t, next_sources, axis=0), cache)

            # A prompt is done when its table is full and no running beam can still beat the worst entry.
            valid, table_scores = hypotheses[3], hypotheses[1]
            full = tf.reduce_all(valid, axis=1)
            if early_stopping is True:
                newly = full
            else:
                horizon = steps if early_stopping == "never" and length_penalty > 0.0 else generated
                worst = tf.reduce_min(tf.where(valid, table_scores, tf.constant(np.inf, tf.float64)), axis=1)
                newly = full & (worst >= normalise(candidate_totals[:, 0], horizon))
            done = done | newly
            return running, next_scores, trails, hypotheses, done, cache, scores

        trace = _Trace(config, eager)
        outputs, cache, full_mask = self._prefill(input_ids, attention_mask, max_length, model_kwargs, trace)
        logits = _last_logits(outputs)
        running = tf.concat([tf.cast(input_ids, tf.int32), tf.fill((rows, steps), pad)], axis=1)
        # All beams start identical: only the first may expand at the first step (beam sampling draws them).
        start = [0.0] + [0.0 if config.do_sample else -1e9] * (beams - 1)
        running_scores = tf.tile(tf.constant(start, tf.float32), [batch])
        scores = tf.zeros((steps, rows, logits.shape[-1]), tf.float32) if record else tf.zeros(())
        state = (running, running_scores, tf.fill((rows, steps), -1),
                 _Hypotheses.empty(batch, beams, max_length, steps, pad), tf.zeros((batch,), tf.bool), cache, scores)
        cur_len = tf.constant(prompt_length, tf.int32)
        state = choose(logits, cur_len, state)

        def keep_going(cur_len, *state):
            return (cur_len + 1 < max_length) & ~tf.reduce_all(state[4])

        def step(cur_len, *state):
            cur_len += 1
            logits, cache = self._extend(state[0], cur_len, state[5], full_mask, model_kwargs, trace)
            return (cur_len,) + choose(logits, cur_len, state[:5] + (cache,) + state[6:])

        cur_len, *state = tf.while_loop(keep_going, step, (cur_len,) + state, maximum_iterations=steps - 1)
        running, running_scores, trails, hypotheses, done, _, scores = state
        cur_len += 1  # tokens in the running rows

        # Prompts still open at max_length take their running beams as hypotheses.
        open_beams = (
            tf.reshape(running, (batch, beams, max_length)),
            normalise(tf.reshape(running_scores, (batch, beams)), cur_len - prompt_length),
            tf.fill((batch, beams), cur_len),
            tf.broadcast_to(~done[:, None], (batch, beams)),
            tf.reshape(trails, (batch, beams, steps)),
        )
        tokens, table_scores, lengths, valid, beam_trails = _Hypotheses.merge(hypotheses, open_beams, beams)
        key = tf.where(valid, table_scores, tf.constant(-np.inf, tf.float64))
        best = tf.math.top_k(key, k=keep).indices
        sequences = tf.reshape(tf.gather(tokens, best, batch_dims=1), (batch * keep, max_length))
        sequence_scores = tf.cast(tf.reshape(tf.gather(table_scores, best, batch_dims=1), (-1,)), tf.float32)
        beam_trails = tf.reshape(tf.gather(beam_trails, best, batch_dims=1), (batch * keep, steps))
        taken = steps
        if eager:
            # One end-of-sequence token after the longest shorter hypothesis, as the PyTorch search returns.
            width_out = min(int(tf.reduce_max(tf.gather(lengths, best, batch_dims=1))) + 1, max_length)
            sequences = sequences[:, :width_out]
            beam_trails = beam_trails[:, : width_out - prompt_length]
            taken = int(cur_len) - prompt_length
        sequences = tf.cast(sequences, input_ids.dtype)
        if not config.return_dict_in_generate:
            return sequences
        cls = TFBeamSampleDecoderOnlyOutput if config.do_sample else TFBeamSearchDecoderOnlyOutput
        return cls(
            sequences=sequences,
            sequences_scores=sequence_scores,
            scores=tuple(tf.unstack(scores[:taken])) if record else None,
            beam_indices=beam_trails,
            **trace.fields(taken),
        )


__all__ = [
    "TFGenerationMixin",
    "TFLogitsProcessor",
    "TFLogitsWarper",
    "TFLogitsProcessorList",
    "TFTemperatureLogitsWarper",
    "TFTopKLogitsWarper",
    "TFTopPLogitsWarper",
    "TFRepetitionPenaltyLogitsProcessor",
    "TFNoRepeatNGramLogitsProcessor",
    "TFNoBadWordsLogitsProcessor",
    "TFMinLengthLogitsProcessor",
    "TFMinNewTokensLengthLogitsProcessor",
    "TFForcedBOSTokenLogitsProcessor",
    "TFForcedEOSTokenLogitsProcessor",
    "TFSuppressTokensLogitsProcessor",
    "TFSuppressTokensAtBeginLogitsProcessor",
    "TFForceTokensLogitsProcessor",
    "TFInfNanRemoveLogitsProcessor",
    "TFLogitNormalization",
]

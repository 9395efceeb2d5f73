"""Logits processors and warpers for the Keras ``generate``: ``(input_ids buffer, scores (rows, vocab), cur_len)
-> new scores``.

Logits processors see the fixed-shape sequence buffer and ``cur_len``, the number of tokens it holds (the
reference's TF processor signature ``(input_ids, scores, cur_len)``), so each is a few vectorised tensor
operations that run unchanged eagerly and under XLA.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, (int, np.integer)) else [int(v) for v in value]


def _is_positive_int(value, low: int = 1) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low



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

"""Contrastive search for the Keras ``generate``.

Contrastive search runs the model on the ``top_k`` candidates of every row at once and keeps, besides the
cache, the last layer's hidden state of every position in a ``(rows, max_length, hidden)`` buffer for the
degeneration penalty.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ...outputs import TFContrastiveSearchDecoderOnlyOutput
from .loop import _last_logits, _slot_cache, _Trace, _write, _write_column
from .processors import _ids


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


def contrastive_search(model, input_ids, attention_mask, config, processors, model_kwargs, eager: bool):
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

    outputs, cache, full_mask = model._prefill(input_ids, attention_mask, max_length, model_kwargs, trace,
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
        outputs = model._feed(tf.reshape(top_ids, (-1, 1)), cur_len, repeated, candidate_mask, candidate_kwargs,
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

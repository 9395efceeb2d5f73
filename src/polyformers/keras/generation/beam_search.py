"""Beam search and beam sampling for the Keras ``generate``.

Beam search makes the choices of polyformers' PyTorch ``generate``, token for token: per prompt it keeps
``num_beams`` running rows and a table of at most ``num_beams`` finished hypotheses (tokens, score, length,
beam trail). A step ranks ``num_beams * vocab`` continuations, lets the best ``num_beams`` that do not end
become the running rows and the endings among the first ``num_beams`` candidates enter the table, where the
best ``num_beams`` survive; a prompt is done once its table is full and no running row could still beat its
worst entry. Hypothesis scores are kept in float64, as the PyTorch bookkeeping keeps them in Python floats.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ...outputs import TFBeamSampleDecoderOnlyOutput, TFBeamSearchDecoderOnlyOutput
from .loop import _last_logits, _Trace, _write_column
from .processors import _ids


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


def beam_search(model, input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager: bool):
    """Beam search, or beam sampling with ``do_sample``, of ``model`` from the prompt ``input_ids``."""
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
    outputs, cache, full_mask = model._prefill(input_ids, attention_mask, max_length, model_kwargs, trace)
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
        logits, cache = model._extend(state[0], cur_len, state[5], full_mask, model_kwargs, trace)
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

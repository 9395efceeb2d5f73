"""Greedy decoding and sampling for the Keras ``generate``.

Sampling with a given ``seed`` draws every step with that seed, as the reference's TF ``generate`` does, so
seeded draws are the reference's; without one each step folds its index into a random pair.
"""

from __future__ import annotations

import tensorflow as tf

from ...outputs import TFGreedySearchDecoderOnlyOutput, TFSampleDecoderOnlyOutput
from .loop import _last_logits, _Trace, _write_column
from .processors import _ids


def sample(model, input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager: bool,
           fixed_seed: bool = False):
    """Greedy decoding, or sampling with ``do_sample``, of ``model`` from the prompt ``input_ids``."""
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
    outputs, cache, full_mask = model._prefill(input_ids, attention_mask, max_length, model_kwargs, trace)
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
        logits, cache = model._extend(sequences, cur_len, cache, full_mask, model_kwargs, trace)
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

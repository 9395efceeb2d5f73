"""Generation for the Keras models on TensorFlow: greedy decoding and sampling, eager or under XLA.

One loop serves both modes. Its state never changes shape, which is what ``tf.function(jit_compile=True)``
needs: the sequences live in a ``(batch, max_length)`` buffer filled with padding, and the self-attention
cache is preallocated with ``max_length - 1`` slots per layer. Slot ``j`` holds token ``j``'s keys and
values once that token has been fed; the slots not yet written are masked out. A decoder layer appends
the new token's keys after all the slots, so each step's attention mask is the filled slots plus the new
token, and the new keys are then written into their own slot. Eagerly the loop stops as soon as every row
has ended and the sequences are cut to the generated length; in a graph (XLA) they keep ``max_length``
columns, the unused ones holding ``pad_token_id``, as the reference's TF ``generate`` does there.

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
from ..outputs import TFGreedySearchDecoderOnlyOutput, TFSampleDecoderOnlyOutput

logger = logging.getLogger("polyformers")

# Settings that generate honours; any other one away from its default selects something it does not do.
# ``use_cache=False`` is accepted, but the loop always keeps the cache: the same tokens, less work.
_HONOURED = {
    "max_length", "max_new_tokens", "do_sample", "use_cache", "temperature", "top_k", "top_p",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "pad_token_id", "bos_token_id",
    "eos_token_id", "decoder_start_token_id",
    # beam-search settings, meaningless (and ignored, as in the reference) with one beam
    "early_stopping", "length_penalty",
}


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, (int, np.integer)) else [int(v) for v in value]


# ---------------------------------------------------------------------------------------------------
# Sampling warpers on (batch, vocab) float32 scores, in the order the reference applies them


def _temperature(scores, temperature: float):
    return scores / temperature


def _top_k(scores, k: int):
    k = min(k, scores.shape[-1])
    kth = tf.math.top_k(scores, k=k).values[:, -1:]
    return tf.where(scores < kth, tf.constant(-np.inf, scores.dtype), scores)


def _top_p(scores, p: float):
    """Keep the most probable tokens whose probabilities, summed before each, stay below ``p`` (at least
    one): the nucleus of Holtzman et al."""
    ranked = tf.math.top_k(scores, k=scores.shape[-1]).values
    probs = tf.nn.softmax(ranked, axis=-1)
    before = tf.math.cumsum(probs, axis=-1, exclusive=True)
    kept = tf.maximum(tf.reduce_sum(tf.cast(before < p, tf.int32), axis=-1), 1)
    threshold = tf.gather(ranked, kept - 1, batch_dims=1)[:, None]
    return tf.where(scores < threshold, tf.constant(-np.inf, scores.dtype), scores)


def _seed_pair(seed):
    """``seed``: None (fresh randomness each call, also in a compiled graph), an int, or two ints."""
    if seed is None:
        return tf.random.uniform((2,), maxval=2**31 - 1, dtype=tf.int32)
    pair = [seed, 0] if isinstance(seed, (int, np.integer)) else list(seed)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) for s in pair):
        raise ValueError(f"seed: expected an int or two ints for the stateless sampler, given {seed!r}")
    return tf.constant(pair, dtype=tf.int32)


# ---------------------------------------------------------------------------------------------------


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
        """Generate token ids after the prompt ``inputs`` (``input_ids``), greedily or, with ``do_sample``, by
        sampling (``temperature``, ``top_k``, ``top_p``; ``seed`` makes it reproducible).

        Settings come from ``generation_config`` (default: the model's), overridden by keyword arguments
        that are fields of it (``max_new_tokens=20``, ...); the other keyword arguments are model inputs
        (``attention_mask`` for left-padded prompts, ...). Returns the sequences, prompt included, or with
        ``return_dict_in_generate=True`` a ``TFGreedySearchDecoderOnlyOutput`` / ``TFSampleDecoderOnlyOutput``
        holding them and, with ``output_scores``, the processed scores of each step. Runs eagerly or inside
        ``tf.function(model.generate, jit_compile=True)``.
        """
        if logits_processor:
            raise ValueError(
                f"logits_processor: custom processors are not supported by {type(self).__name__}.generate, "
                f"given {type(logits_processor).__name__}"
            )
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
        eos = _ids(config.eos_token_id)
        if config.pad_token_id is None and eos:
            logger.warning("Setting `pad_token_id` to `eos_token_id`:%s for open-end generation.", eos[0])
            config.pad_token_id = eos[0]

        attention_mask = model_kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = self._default_attention_mask(input_ids, config)
        attention_mask = tf.cast(attention_mask, tf.int32)
        copies = config.num_return_sequences if config.do_sample else 1
        if copies > 1:
            input_ids = tf.repeat(input_ids, copies, axis=0)
            attention_mask = tf.repeat(attention_mask, copies, axis=0)
            model_kwargs = {k: tf.repeat(v, copies, axis=0) if tf.is_tensor(v) or isinstance(v, np.ndarray) else v
                            for k, v in model_kwargs.items()}
        seed = _seed_pair(seed) if config.do_sample else None
        sequences, scores = self._decode(input_ids, attention_mask, config, seed, model_kwargs, eager)
        sequences = tf.cast(sequences, input_ids.dtype)
        if not config.return_dict_in_generate:
            return sequences
        cls = TFSampleDecoderOnlyOutput if config.do_sample else TFGreedySearchDecoderOnlyOutput
        return cls(sequences=sequences, scores=scores)

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
                    f"{name}: not supported by {type(self).__name__}.generate (greedy decoding and sampling only), "
                    f"given {getattr(config, name)!r}; leave it at {default!r}"
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

    # -- the loop -------------------------------------------------------------------------------------

    def _forward(self, input_ids, past, attention_mask, cache_position, model_kwargs):
        inputs = self.prepare_inputs_for_generation(
            input_ids, past_key_values=past, attention_mask=attention_mask, cache_position=cache_position,
            **model_kwargs,
        )
        inputs.update(use_cache=True, return_dict=True)
        outputs = self(**inputs, training=False)
        return tf.cast(outputs.logits[:, -1, :], tf.float32), outputs.past_key_values

    def _decode(self, input_ids, attention_mask, config, seed, model_kwargs, eager: bool):
        batch, prompt_length = tf.shape(input_ids)[0], input_ids.shape[1]
        max_length = config.max_length
        slots = max_length - 1
        eos = tf.constant(_ids(config.eos_token_id) or [-1], tf.int32)
        pad = tf.constant(0 if config.pad_token_id is None else int(config.pad_token_id), tf.int32)
        record = config.return_dict_in_generate and config.output_scores

        def choose(logits, cur_len, sequences, unfinished, scores):
            """Pick the token at ``cur_len``, write it, and note which rows have ended."""
            if config.do_sample:
                if config.temperature is not None and config.temperature != 1.0:
                    logits = _temperature(logits, config.temperature)
                if config.top_k:
                    logits = _top_k(logits, config.top_k)
                if config.top_p is not None and config.top_p < 1.0:
                    logits = _top_p(logits, config.top_p)
                step_seed = tf.random.experimental.stateless_fold_in(seed, cur_len)
                tokens = tf.random.stateless_categorical(logits, 1, seed=step_seed, dtype=tf.int32)[:, 0]
            else:
                tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            tokens = tf.where(unfinished, tokens, pad)
            sequences = tf.tensor_scatter_nd_update(
                sequences, tf.stack([tf.range(batch), tf.fill((batch,), cur_len)], axis=1), tokens
            )
            unfinished = unfinished & ~tf.reduce_any(tokens[:, None] == eos[None, :], axis=-1)
            if record:
                scores = tf.tensor_scatter_nd_update(scores, [[cur_len - prompt_length]], logits[None])
            return sequences, unfinished, scores

        # The prompt in one pass; its cache then grows to the preallocated slots.
        logits, past = self._forward(input_ids, None, attention_mask, tf.constant(0, tf.int32), model_kwargs)
        widen = [[0, 0], [0, 0], [0, slots - prompt_length], [0, 0]]
        cache = tuple((tf.pad(layer[0], widen), tf.pad(layer[1], widen)) + tuple(layer[2:]) for layer in past)
        sequences = tf.concat(
            [tf.cast(input_ids, tf.int32), tf.fill((batch, max_length - prompt_length), pad)], axis=1
        )
        # Generated tokens are always attended to, even after a row ends, as the reference does.
        full_mask = tf.concat([attention_mask, tf.ones((batch, max_length - prompt_length), tf.int32)], axis=1)
        scores = tf.zeros((max_length - prompt_length, batch, logits.shape[-1]), tf.float32) if record else tf.zeros(())
        unfinished = tf.ones((batch,), tf.bool)
        cur_len = tf.constant(prompt_length, tf.int32)
        sequences, unfinished, scores = choose(logits, cur_len, sequences, unfinished, scores)
        cur_len += 1

        def keep_going(cur_len, sequences, unfinished, cache, scores):
            return (cur_len < max_length) & tf.reduce_any(unfinished)

        def step(cur_len, sequences, unfinished, cache, scores):
            position = cur_len - 1
            token = tf.gather(sequences, [position], axis=1)
            filled = tf.cast(tf.range(slots) < position, tf.int32)[None, :] * full_mask[:, :slots]
            mask = tf.concat([filled, tf.ones((batch, 1), tf.int32)], axis=1)
            logits, present = self._forward(token, cache, mask, position, model_kwargs)
            at = [0, 0, position, 0]
            cache = tuple(
                (_write(old[0], new[0][:, :, -1:], at), _write(old[1], new[1][:, :, -1:], at)) + tuple(old[2:])
                for old, new in zip(cache, present)
            )
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
        return sequences, (tuple(tf.unstack(scores[:steps])) if record else None)


def _write(buffer, update, start):
    """``buffer`` with ``update`` written at ``start`` (one index per axis), a fixed-shape update XLA keeps
    in place."""
    from tensorflow.compiler.tf2xla.python import xla  # the op XLA lowers to an in-place update

    return xla.dynamic_update_slice(buffer, tf.cast(update, buffer.dtype), tf.stack(start))


__all__ = ["TFGenerationMixin"]

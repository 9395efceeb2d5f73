"""The ``generate`` entry of the Keras models: :class:`TFGenerationMixin` checks the arguments, prepares the
prompt, builds the logits processors and picks a decoding strategy from the settings; it also runs the
model one step at a time for the strategies.

A model takes part by inheriting :class:`TFGenerationMixin` (before its ``TFPreTrainedModel`` base) and
implementing ``prepare_inputs_for_generation(input_ids, past_key_values=None, attention_mask=None,
cache_position=None, **kwargs)``, which returns the keyword arguments of its ``call``. With a cache,
``input_ids`` holds only the new token and ``cache_position`` is its index in the sequence: the fixed-size
cache cannot say how many tokens came before, so position ids must come from there. The model's
``past_key_values`` are per layer a tuple whose first two tensors are the self-attention keys and values,
``(batch, heads, length, head_dim)``; further ones (cross-attention) pass through unchanged.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

import numpy as np
import tensorflow as tf

from ..._shared import generation_config_property, settings_for_call
from ...generation_config import FIELDS, GenerationConfig, reject_duplicate_processors, use_model_tokens, warper_plan
from . import processors as P
from .beam_search import beam_search
from .contrastive import contrastive_search
from .greedy import sample
from .loop import _last_logits, _slot_cache
from .processors import TFLogitsProcessorList, _ids

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


def _seed_pair(seed):
    """``seed``: None (fresh randomness each call, also in a compiled graph), an int, or two ints."""
    if seed is None:
        return tf.random.uniform((2,), maxval=2**31 - 1, dtype=tf.int32)
    pair = [seed, 0] if isinstance(seed, (int, np.integer)) else list(seed)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) for s in pair):
        raise ValueError(f"seed: expected an int or two ints for the stateless sampler, given {seed!r}")
    return tf.constant(pair, dtype=tf.int32)


_WARPERS = {
    "temperature": P.TFTemperatureLogitsWarper, "top_k": P.TFTopKLogitsWarper, "top_p": P.TFTopPLogitsWarper,
    "renormalize": P.TFLogitNormalization,
}


class TFGenerationMixin:
    """``generate()`` for the Keras language models; see the module docstring for the model's side."""

    generation_config = generation_config_property

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
        if config.pad_token_id is None and config.eos_token_id is not None and not eos:
            raise ValueError("pad_token_id: needed with eos_token_id=[] (no end-of-sequence token, which cannot "
                             "stand in for the pad token), given None")
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
        # The processors and warpers above saw the end and pad tokens as the call gave them; the decoding
        # loops below see them after the fallback to the model's own.
        self._loop_tokens(config, refuse_missing_pad=not beam)
        copies = config.num_beams if beam else config.num_return_sequences if config.do_sample else 1
        if copies > 1:  # the copies of a prompt are neighbours
            input_ids = tf.repeat(input_ids, copies, axis=0)
            attention_mask = tf.repeat(attention_mask, copies, axis=0)
            model_kwargs = {k: tf.repeat(v, copies, axis=0) if tf.is_tensor(v) or isinstance(v, np.ndarray) else v
                            for k, v in model_kwargs.items()}
        fixed_seed = seed is not None
        seed = _seed_pair(seed) if config.do_sample else None
        if contrastive:
            return contrastive_search(self, input_ids, attention_mask, config, processors, model_kwargs, eager)
        if beam:
            return beam_search(self, input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager)
        return sample(self, input_ids, attention_mask, config, processors, warpers, seed, model_kwargs, eager,
                      fixed_seed)

    # -- preparation ----------------------------------------------------------------------------------

    @tf.autograph.experimental.do_not_convert  # plain Python on settings, also inside a tf.function
    def _loop_tokens(self, config, refuse_missing_pad: bool) -> None:
        """The end and pad tokens of the decoding loops: see :func:`generation_config.use_model_tokens`."""
        use_model_tokens(config, self.generation_config, refuse_missing_pad)

    def _generation_settings(self, generation_config, kwargs):
        if generation_config is None:
            generation_config = self.generation_config
        elif not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config: expected a GenerationConfig, given {type(generation_config).__name__}")
        config, model_kwargs = settings_for_call(generation_config, kwargs)
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
            processors.append(P.TFRepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size:
            processors.append(P.TFNoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            processors.append(P.TFNoBadWordsLogitsProcessor(config.bad_words_ids, eos))
        if config.min_length and eos is not None:
            processors.append(P.TFMinLengthLogitsProcessor(config.min_length, eos))
        if config.min_new_tokens and eos is not None:
            processors.append(P.TFMinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos))
        if config.forced_bos_token_id is not None:
            processors.append(P.TFForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
        if config.forced_eos_token_id is not None:
            processors.append(P.TFForcedEOSTokenLogitsProcessor(config.max_length, config.forced_eos_token_id))
        if config.remove_invalid_values:
            processors.append(P.TFInfNanRemoveLogitsProcessor())
        if config.suppress_tokens is not None:
            processors.append(P.TFSuppressTokensLogitsProcessor(config.suppress_tokens))
        if config.begin_suppress_tokens is not None:
            # With a forced first token, the first free position is one later.
            begin = prompt_length + (1 if prompt_length == 1 and config.forced_bos_token_id is not None else 0)
            if config.forced_decoder_ids is not None:  # and after the last forced one, as the reference counts
                begin += config.forced_decoder_ids[-1][0]
            processors.append(P.TFSuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin))
        if config.forced_decoder_ids is not None:
            processors.append(P.TFForceTokensLogitsProcessor(config.forced_decoder_ids))
        custom = [] if custom is None else custom
        if not isinstance(custom, (list, tuple)) or not all(callable(p) for p in custom):
            raise TypeError(
                f"logits_processor: expected a TFLogitsProcessorList of processors called as "
                f"processor(input_ids, scores, cur_len), given {type(custom).__name__}"
            )
        reject_duplicate_processors(processors, custom)
        processors.extend(custom)
        if config.renormalize_logits:
            processors.append(P.TFLogitNormalization())
        return processors

    @staticmethod
    def _logits_warpers(config) -> TFLogitsProcessorList:
        # typical_p, epsilon and eta have no TF class in 4.37 either: they are left out, as there.
        return TFLogitsProcessorList(_WARPERS[kind](*args, **kwargs) for kind, args, kwargs in warper_plan(config)
                                     if kind in _WARPERS)

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

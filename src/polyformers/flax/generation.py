"""Generation for the Flax models: greedy search, sampling, beam search and beam sampling, each one compiled
program.

The whole of ``generate`` — encoder, cache, decoding loop — runs under one ``jax.jit`` whose loop is a
``lax.while_loop`` over fixed-shape state: the sequences are preallocated at ``max_length`` (padded
after their end), the decoder's key/value cache is preallocated by ``init_cache``, and the
cross-attention keys/values are projected once. Compiled programs are kept per model and settings,
so a second call with the same shapes runs without tracing.

Models provide ``encode``, ``init_cache(batch, max_length, encoder_outputs)`` and ``decode`` with a cache
and positions; the logits processors below follow the reference's ``Flax*LogitsProcessor`` classes.

Beam sampling (``do_sample=True`` with ``num_beams > 1``), which the reference's 4.37 Flax ``generate``
refuses, follows its PyTorch ``beam_sample``: the same loop as beam search, but the ``2 * num_beams``
candidates of each step are drawn without replacement from the softmax of the warped scores plus the
beam scores (every beam starting at score 0), instead of being the best ones. Finished hypotheses are then
kept as the Flax beam search keeps them: an end token anywhere among the candidates can finish one, where
the reference's PyTorch scorer takes only those ranked within the first ``num_beams``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._shared import settings_for_call
from ..outputs import FlaxBeamSearchOutput, FlaxGreedySearchOutput, FlaxSampleOutput
from . import layers as L

logger = logging.getLogger("polyformers")

_NEG = -1.0e7  # the score of a beam that must not win, as in the reference's beam search


# ---------------------------------------------------------------------------------------------------
# Logits processors: (sequences so far, scores (batch, vocab), current length) -> scores


class FlaxLogitsProcessor:
    """Changes next-token scores before the choice; ``cur_len`` counts the tokens already in the sequences."""

    def __call__(self, input_ids, scores, cur_len):
        raise NotImplementedError


class FlaxLogitsWarper(FlaxLogitsProcessor):
    """A processor that only reshapes the sampling distribution."""


class FlaxLogitsProcessorList(list):
    def __call__(self, input_ids, scores, cur_len, **kwargs):
        for processor in self:
            scores = processor(input_ids, scores, cur_len, **kwargs)
        return scores


def _check(name: str, ok: bool, expected: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


class FlaxTemperatureLogitsWarper(FlaxLogitsWarper):
    def __init__(self, temperature: float):
        _check("temperature", isinstance(temperature, (float, int)) and temperature > 0, "a positive float", temperature)
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores, cur_len):
        return scores / self.temperature


class FlaxTopKLogitsWarper(FlaxLogitsWarper):
    """Keeps the ``top_k`` best scores, sets the others to ``filter_value``."""

    def __init__(self, top_k: int, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        _check("top_k", isinstance(top_k, int) and top_k > 0, "a positive int", top_k)
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids, scores, cur_len):
        k = min(self.top_k, scores.shape[-1])
        kth = lax.top_k(scores, k)[0][:, -1:]
        return jnp.where(scores < kth, self.filter_value, scores)


class FlaxTopPLogitsWarper(FlaxLogitsWarper):
    """Nucleus sampling: keeps the most likely tokens whose probabilities first reach ``top_p``."""

    def __init__(self, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        _check("top_p", isinstance(top_p, (float, int)) and 0 <= top_p <= 1, "a float in [0, 1]", top_p)
        _check("min_tokens_to_keep", isinstance(min_tokens_to_keep, int) and min_tokens_to_keep >= 1, "a positive int",
               min_tokens_to_keep)
        self.top_p, self.filter_value, self.min_tokens_to_keep = float(top_p), filter_value, min_tokens_to_keep

    def __call__(self, input_ids, scores, cur_len):
        sorted_scores, order = lax.top_k(scores, scores.shape[-1])
        cumulative = jax.nn.softmax(sorted_scores, axis=-1).cumsum(axis=-1)
        # Keep a token while the mass before it is below top_p: the first one always, and the one crossing it.
        keep = jnp.roll(cumulative < self.top_p, 1, axis=-1).at[:, 0].set(True)
        keep = keep.at[:, : self.min_tokens_to_keep].set(True)
        kept_sorted = jnp.where(keep, sorted_scores, self.filter_value)
        return jnp.take_along_axis(kept_sorted, jnp.argsort(order, axis=-1), axis=-1)


class FlaxMinLengthLogitsProcessor(FlaxLogitsProcessor):
    """No end-of-sequence before ``min_length`` tokens."""

    def __init__(self, min_length: int, eos_token_id):
        _check("min_length", isinstance(min_length, int) and min_length >= 0, "a non-negative int", min_length)
        self.min_length = min_length
        self.eos = tuple(np.atleast_1d(eos_token_id).tolist())

    def __call__(self, input_ids, scores, cur_len):
        banned = scores.at[:, jnp.array(self.eos)].set(-float("inf"))
        # As the reference's Flax class (its PyTorch one bans while cur_len < min_length): one more step.
        return jnp.where(cur_len <= self.min_length, banned, scores)


class FlaxForcedBOSTokenLogitsProcessor(FlaxLogitsProcessor):
    """The first generated token (after the decoder start) is ``bos_token_id``."""

    def __init__(self, bos_token_id: int):
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids, scores, cur_len):
        forced = jnp.full(scores.shape, -float("inf"), scores.dtype).at[:, self.bos_token_id].set(0)
        return jnp.where(cur_len == 1, forced, scores)


class FlaxForcedEOSTokenLogitsProcessor(FlaxLogitsProcessor):
    """The last token, when ``max_length`` is reached, is ``eos_token_id``."""

    def __init__(self, max_length: int, eos_token_id: int):
        self.max_length, self.eos_token_id = max_length, eos_token_id

    def __call__(self, input_ids, scores, cur_len):
        forced = jnp.full(scores.shape, -float("inf"), scores.dtype).at[:, self.eos_token_id].set(0)
        return jnp.where(cur_len == self.max_length - 1, forced, scores)


class FlaxSuppressTokensLogitsProcessor(FlaxLogitsProcessor):
    """``suppress_tokens`` are never generated."""

    def __init__(self, suppress_tokens: Sequence[int]):
        self.suppress_tokens = tuple(suppress_tokens)

    def __call__(self, input_ids, scores, cur_len):
        return scores.at[:, jnp.array(self.suppress_tokens)].set(-float("inf"))


# ---------------------------------------------------------------------------------------------------
# Settings: everything that shapes the compiled program, hashable so programs can be reused


@dataclasses.dataclass(frozen=True)
class _Settings:
    mode: str  # "greedy", "sample" or "beam" (beam sampling: "beam" with do_sample)
    max_length: int
    pad_token_id: int
    eos_token_ids: tuple
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: Any = False
    num_return_sequences: int = 1
    do_sample: bool = False


def _processors(config, max_length: int, prompt_length: int) -> FlaxLogitsProcessorList:
    processors = FlaxLogitsProcessorList()
    eos = config.eos_token_id
    if config.min_length is not None and eos not in (None, []) and config.min_length > -1:
        processors.append(FlaxMinLengthLogitsProcessor(config.min_length, eos))
    if config.forced_bos_token_id is not None:
        processors.append(FlaxForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
    if config.forced_eos_token_id is not None:
        forced = config.forced_eos_token_id
        processors.append(FlaxForcedEOSTokenLogitsProcessor(max_length, forced[0] if isinstance(forced, list) else forced))
    if config.suppress_tokens:
        processors.append(FlaxSuppressTokensLogitsProcessor(config.suppress_tokens))
    return processors


def _warpers(config) -> FlaxLogitsProcessorList:
    from ..generation_config import warper_plan

    # The Flax classes of 4.37: temperature, top-k and top-p (other kinds are left out, as there).
    classes = {"temperature": FlaxTemperatureLogitsWarper, "top_k": FlaxTopKLogitsWarper, "top_p": FlaxTopPLogitsWarper}
    return FlaxLogitsProcessorList(classes[kind](*args, **kwargs) for kind, args, kwargs in warper_plan(config)
                                   if kind in classes)


def _processors_key(processors) -> tuple:
    return tuple((type(p).__name__, tuple(sorted((k, repr(v)) for k, v in vars(p).items()))) for p in processors)


# ---------------------------------------------------------------------------------------------------


class FlaxGenerationMixin:
    """``generate`` for Flax encoder-decoder models."""

    _MODEL_KWARGS = ("attention_mask", "decoder_input_ids", "decoder_attention_mask", "encoder_outputs")

    def generate(self, input_ids, generation_config=None, prng_key=None, trace: bool = True,
                 params: Optional[dict] = None, logits_processor: Optional[FlaxLogitsProcessorList] = None, **kwargs):
        """Generate token ids for the encoder input ``input_ids``.

        Settings come from ``generation_config`` (default: the model's), overridden by keyword arguments
        naming its fields (``max_new_tokens``, ``num_beams``, ``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``length_penalty``, ``early_stopping``, ``min_length``, ...); ``attention_mask``,
        ``decoder_input_ids``, ``decoder_attention_mask`` and ``encoder_outputs`` go to the model.
        ``prng_key`` seeds sampling. ``trace=False`` runs the loop step by step in Python, for debugging.

        ``do_sample=True`` with ``num_beams > 1`` is beam sampling (as the reference's PyTorch
        ``beam_sample``; its Flax ``generate`` refuses it): each step draws ``2 * num_beams`` candidates
        without replacement from the warped distribution, and the beam search goes on with them.

        Returns ``FlaxGreedySearchOutput`` / ``FlaxSampleOutput`` / ``FlaxBeamSearchOutput`` (beam search
        and beam sampling) whose ``sequences`` are (batch * num_return_sequences, max_length), the decoder
        start token first and ``pad_token_id`` after each sequence's end; a beam output's ``scores`` are
        the sequences' scores (summed log-probabilities, after the processors and warpers, divided by
        ``generated length ** length_penalty`` once finished), best first for each input.
        """
        from ..generation_config import GenerationConfig, use_model_tokens

        if generation_config is None:
            generation_config = self.generation_config
        elif not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
        config, model_kwargs = settings_for_call(generation_config, kwargs)
        unknown = sorted(k for k, v in model_kwargs.items() if v is not None and k not in self._MODEL_KWARGS)
        if unknown:
            raise ValueError(
                f"generate() got keyword arguments that are neither generation settings nor model inputs: {unknown}; "
                f"model inputs are {list(self._MODEL_KWARGS)}"
            )
        if config.pad_token_id is None and config.eos_token_id is not None:
            if config.eos_token_id == []:
                raise ValueError("pad_token_id: needed with eos_token_id=[] (no end-of-sequence token, which cannot "
                                 "stand in for the pad token), given None")
            eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
            logger.warning("Setting `pad_token_id` to `eos_token_id`:%s for open-end generation.", eos)
            config.pad_token_id = eos
        params = self._resolve_params(params)

        input_ids = jnp.asarray(input_ids, dtype=jnp.int32)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence), got {tuple(input_ids.shape)}")
        batch = input_ids.shape[0]
        decoder_input_ids = model_kwargs.get("decoder_input_ids")
        if decoder_input_ids is None:
            start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
            if start is None:
                raise ValueError("decoder_start_token_id (or bos_token_id) must be set for encoder-decoder generation, got None")
            decoder_input_ids = jnp.full((batch, 1), start, dtype=jnp.int32)
        decoder_input_ids = jnp.asarray(decoder_input_ids, dtype=jnp.int32)
        prompt_length = decoder_input_ids.shape[1]
        max_length = config.max_length
        if config.max_new_tokens is not None:
            max_length = config.max_new_tokens + prompt_length
        if config.min_length is not None and config.min_length > max_length:
            raise ValueError(f"min_length ({config.min_length}) must not exceed max_length ({max_length})")
        if prompt_length >= max_length:
            raise ValueError(
                f"max_length ({max_length}) must exceed the decoder prompt length ({prompt_length}); raise max_new_tokens"
            )

        processors = _processors(config, max_length, prompt_length)
        if logits_processor:
            clash = {type(p) for p in processors} & {type(p) for p in logits_processor}
            if clash:
                raise ValueError(
                    f"logits_processor repeats {sorted(c.__name__ for c in clash)}, which the generation settings already "
                    "create; change the settings instead"
                )
            processors.extend(logits_processor)
        warpers = _warpers(config) if config.do_sample else FlaxLogitsProcessorList()
        # The processors and warpers above saw the end and pad tokens as given; the decoding loops fall back to
        # the model's own where they are None, as 4.37's do.
        loop = copy.copy(config)
        use_model_tokens(loop, self.generation_config, refuse_missing_pad=False)
        mode = "beam" if config.num_beams > 1 else "sample" if config.do_sample else "greedy"
        eos = () if loop.eos_token_id is None else tuple(int(t) for t in np.atleast_1d(loop.eos_token_id))
        settings = _Settings(mode, int(max_length), int(loop.pad_token_id if loop.pad_token_id is not None else 0),
                             eos, config.num_beams, float(config.length_penalty), config.early_stopping,
                             config.num_return_sequences, bool(config.do_sample))
        if mode == "beam" and config.num_return_sequences > config.num_beams:
            raise ValueError(
                f"num_return_sequences ({config.num_return_sequences}) must be at most num_beams ({config.num_beams})"
            )

        encoder_outputs = model_kwargs.get("encoder_outputs")
        arrays = dict(
            params=params,
            input_ids=input_ids,
            attention_mask=model_kwargs.get("attention_mask"),
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=model_kwargs.get("decoder_attention_mask"),
            encoder_states=None if encoder_outputs is None else encoder_outputs[0],
            prng_key=jax.random.PRNGKey(0) if prng_key is None else _checked_key(prng_key),
        )
        if arrays["attention_mask"] is not None:
            arrays["attention_mask"] = jnp.asarray(arrays["attention_mask"], dtype=jnp.int32)
        if arrays["decoder_attention_mask"] is not None:
            arrays["decoder_attention_mask"] = jnp.asarray(arrays["decoder_attention_mask"], dtype=jnp.int32)

        run = functools.partial(_generate, self, settings, processors, warpers)
        if not trace:
            return run(loop=_python_loop, **arrays)
        key = (settings, _processors_key(processors), _processors_key(warpers))
        compiled = self.__dict__.setdefault("_compiled_generate", {})
        if key not in compiled:
            compiled[key] = jax.jit(functools.partial(run, loop=lax.while_loop))
        return compiled[key](**arrays)


def _checked_key(prng_key):
    """``prng_key`` as given when it is a JAX random key: a typed key, or a raw (2,) uint32 one."""
    shape, dtype = getattr(prng_key, "shape", None), getattr(prng_key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return prng_key
    if dtype == jnp.uint32 and shape == (2,):
        return prng_key
    given = type(prng_key).__name__ if shape is None else f"{type(prng_key).__name__} of shape {tuple(shape)}, {dtype}"
    raise ValueError(f"prng_key must be a JAX random key such as jax.random.PRNGKey(0) (shape (2,), uint32), got {given}")


def _python_loop(cond, body, state):
    while bool(cond(state)):
        state = body(state)
    return state


def _generate(model, settings: _Settings, processors, warpers, *, loop, params, input_ids, attention_mask,
              decoder_input_ids, decoder_attention_mask, encoder_states, prng_key):
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if encoder_states is None:
        encoder_states = model.encode(input_ids, attention_mask, params=params, return_dict=True).last_hidden_state
    if settings.mode == "beam":
        return _beam_search(model, settings, processors, warpers, loop, params, encoder_states, attention_mask,
                            decoder_input_ids, decoder_attention_mask, prng_key)
    return _greedy_or_sample(model, settings, processors, warpers, loop, params, encoder_states, attention_mask,
                             decoder_input_ids, decoder_attention_mask, prng_key)


def _decoder_inputs(decoder_input_ids, decoder_attention_mask, max_length):
    """Positions of the decoder prompt and its padding mask over the cache slots (all ones by default)."""
    batch, length = decoder_input_ids.shape
    slots_mask = jnp.ones((batch, max_length), dtype=jnp.int32)
    if decoder_attention_mask is None:
        return L.default_positions(decoder_input_ids), slots_mask
    positions = decoder_attention_mask.cumsum(axis=-1) - 1
    return positions, lax.dynamic_update_slice(slots_mask, decoder_attention_mask, (0, 0))


def _is_eos(tokens, eos: tuple):
    if not eos:
        return jnp.zeros(tokens.shape, dtype=bool)
    return jnp.isin(tokens, jnp.array(eos, dtype=tokens.dtype))


def _greedy_or_sample(model, settings, processors, warpers, loop, params, encoder_states, attention_mask,
                      decoder_input_ids, decoder_attention_mask, prng_key):
    batch, prompt_length = decoder_input_ids.shape
    max_length, pad = settings.max_length, settings.pad_token_id
    sequences = jnp.full((batch, max_length), pad, dtype=jnp.int32)
    sequences = lax.dynamic_update_slice(sequences, decoder_input_ids, (0, 0))
    positions, slots_mask = _decoder_inputs(decoder_input_ids, decoder_attention_mask, max_length)
    cache = model.init_cache(batch, max_length, (encoder_states,))
    encoder_outputs = (encoder_states,)

    def body(state):
        cur_len, sequences, tokens, positions, finished, cache, key = state
        out = model.decode(tokens, encoder_outputs, attention_mask, slots_mask, positions, past_key_values=cache,
                           params=params, return_dict=True)
        scores = processors(sequences, out.logits[:, -1].astype(jnp.float32), cur_len)
        if settings.mode == "sample":
            key, now = jax.random.split(key)
            scores = warpers(sequences, scores, cur_len)
            next_tokens = jax.random.categorical(now, scores, axis=-1)
        else:
            next_tokens = jnp.argmax(scores, axis=-1)
        next_tokens = jnp.where(finished, pad, next_tokens).astype(jnp.int32)
        finished = finished | _is_eos(next_tokens, settings.eos_token_ids)
        sequences = lax.dynamic_update_slice(sequences, next_tokens[:, None], (0, cur_len))
        return cur_len + 1, sequences, next_tokens[:, None], positions[:, -1:] + 1, finished, out.past_key_values, key

    def cond(state):
        cur_len, finished = state[0], state[4]
        return ~((cur_len == max_length) | jnp.all(finished))

    state = (jnp.array(prompt_length), sequences, decoder_input_ids, positions, jnp.zeros((batch,), dtype=bool), cache,
             prng_key)
    if prompt_length > 1:  # the prompt goes through once; the loop then feeds one token per step
        state = body(state)
    state = loop(cond, body, state)
    output_class = FlaxSampleOutput if settings.mode == "sample" else FlaxGreedySearchOutput
    return output_class(sequences=state[1])


def _best_candidates(totals, width: int):
    """Beam search's candidates: the ``width`` best (beam, token) scores of each row, best first."""
    return lax.top_k(totals, width)


def _sampled_candidates(totals, width: int, key):
    """Beam sampling's candidates: ``width`` (beam, token) pairs of each row drawn without replacement
    from ``softmax(totals)`` (the reference's ``torch.multinomial(probs, width)``), with their scores.

    Adding independent Gumbel noise to the log-weights and keeping the ``width`` largest draws a sample
    without replacement with exactly the probabilities of drawing one item at a time, each in proportion
    to its weight among those left; pairs of weight zero (score ``-inf``) come last. The reference then
    sorts the draws by score; the beam search below picks from the candidates by score, so their order
    does not matter here.
    """
    noisy = totals + jax.random.gumbel(key, totals.shape, dtype=totals.dtype)
    drawn = lax.top_k(noisy, width)[1]
    return jnp.take_along_axis(totals, drawn, axis=-1), drawn


def _beam_search(model, settings, processors, warpers, loop, params, encoder_states, attention_mask,
                 decoder_input_ids, decoder_attention_mask, prng_key):
    """Beam search as the reference's Flax version (after the Flax WMT example): ``num_beams`` running
    hypotheses and ``num_beams`` finished ones per source, scores divided by ``length ** length_penalty``
    when a hypothesis finishes.

    With ``settings.do_sample`` it is beam sampling, as the reference's PyTorch ``beam_sample``: the warpers
    follow the processors, every beam starts at score 0 (so the first step draws from ``num_beams`` copies
    of the same distribution), and the ``2 * num_beams`` candidates of a step are drawn rather than the best.
    """
    batch, prompt_length = decoder_input_ids.shape
    beams, max_length, pad = settings.num_beams, settings.max_length, settings.pad_token_id
    length_penalty, early_stopping = settings.length_penalty, settings.early_stopping

    def flat(x):
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

    def per_beam(x):
        return jnp.repeat(x, beams, axis=0)

    def gather(x, indices):  # x: (batch, k, ...), indices: (batch, n) -> (batch, n, ...)
        return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)

    encoder_outputs = (per_beam(encoder_states),)
    attention_mask = per_beam(attention_mask)
    prompt = jnp.broadcast_to(decoder_input_ids[:, None], (batch, beams, prompt_length))
    positions, slots_mask = _decoder_inputs(flat(prompt), None if decoder_attention_mask is None
                                            else per_beam(decoder_attention_mask), max_length)
    cache = model.init_cache(batch * beams, max_length, encoder_outputs)
    running = lax.dynamic_update_slice(jnp.full((batch, beams, max_length), pad, dtype=jnp.int32), prompt, (0, 0, 0))
    initial_processor_ids = flat(running)
    sample = settings.do_sample
    # Identical beams at the start: beam search expands the first only; beam sampling (the reference's
    # PyTorch beam_sample) starts them all at 0.
    running_scores = jnp.tile(jnp.array([0.0] + [0.0 if sample else _NEG] * (beams - 1), dtype=jnp.float32),
                              (batch, 1))
    finished_sequences = jnp.full((batch, beams, max_length), pad, dtype=jnp.int32)
    finished_scores = jnp.full((batch, beams), _NEG, dtype=jnp.float32)
    is_finished = jnp.zeros((batch, beams), dtype=bool)
    eos = settings.eos_token_ids

    def cond(state):
        cur_len, running, running_scores, _, finished_scores, is_finished = state[:6]
        if early_stopping == "never" and length_penalty > 0.0:
            best_running = running_scores[:, :1] / float(max_length - prompt_length) ** length_penalty
        else:
            best_running = running_scores[:, :1] / (cur_len - prompt_length).astype(jnp.float32) ** length_penalty
        worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _NEG)
        improvable = jnp.any(best_running > worst_finished)
        open_beams = ~(jnp.all(is_finished) & (early_stopping is True))
        return (cur_len < max_length) & open_beams & improvable

    def body(state, width=1):
        cur_len, running, running_scores, finished_sequences, finished_scores, is_finished, positions, cache, key = state
        tokens = flat(lax.dynamic_slice(running, (0, 0, cur_len - width), (batch, beams, width)))
        out = model.decode(tokens, encoder_outputs, attention_mask, slots_mask, positions, past_key_values=cache,
                           params=params, return_dict=True)
        log_probs = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32))
        log_probs = processors(initial_processor_ids, log_probs, cur_len)
        if sample:
            log_probs = warpers(initial_processor_ids, log_probs, cur_len)
        log_probs = log_probs.reshape(batch, beams, -1) + running_scores[:, :, None]
        vocab = log_probs.shape[-1]
        totals = log_probs.reshape(batch, beams * vocab)
        if sample:
            key, now = jax.random.split(key)
            top_scores, top_indices = _sampled_candidates(totals, 2 * beams, now)
        else:
            top_scores, top_indices = _best_candidates(totals, 2 * beams)
        top_beams = top_indices // vocab
        top_sequences = gather(running, top_beams)
        top_sequences = lax.dynamic_update_slice(top_sequences, (top_indices % vocab)[:, :, None].astype(jnp.int32),
                                                 (0, 0, cur_len))
        just_finished = _is_eos(top_sequences[:, :, cur_len], eos)

        # The best num_beams continuations that did not end go on running.
        running_candidates = top_scores + just_finished * _NEG
        keep = lax.top_k(running_candidates, beams)[1]
        next_running, next_running_scores = gather(top_sequences, keep), gather(running_candidates, keep)

        # Those that ended compete, length-normalised, with the finished ones kept so far.
        normalised = top_scores / (cur_len + 1 - prompt_length).astype(jnp.float32) ** length_penalty
        batch_full = jnp.broadcast_to(is_finished.all(axis=-1, keepdims=True), just_finished.shape) & (early_stopping is True)
        normalised = normalised + (~just_finished | batch_full) * _NEG
        merged_sequences = jnp.concatenate([finished_sequences, top_sequences], axis=1)
        merged_scores = jnp.concatenate([finished_scores, normalised], axis=1)
        merged_finished = jnp.concatenate([is_finished, just_finished], axis=1)
        best = lax.top_k(merged_scores, beams)[1]
        finished_sequences, finished_scores, is_finished = (gather(merged_sequences, best), gather(merged_scores, best),
                                                            gather(merged_finished, best))

        source_beams = gather(top_beams, keep)  # (batch, beams): which old beam each running one extends
        rows = (jnp.arange(batch)[:, None] * beams + source_beams).reshape(-1)
        cache = L.reorder_cache(out.past_key_values, rows)
        return (cur_len + 1, next_running, next_running_scores, finished_sequences, finished_scores, is_finished,
                positions[:, -1:] + 1, cache, key)

    state = (jnp.array(prompt_length), running, running_scores, finished_sequences, finished_scores, is_finished,
             positions, cache, prng_key)
    state = body(state, width=prompt_length)
    state = loop(cond, body, state)
    _, running, running_scores, finished_sequences, finished_scores, is_finished = state[:6]
    # A source with no finished hypothesis returns its running ones.
    any_finished = jnp.any(is_finished, axis=1)
    sequences = jnp.where(any_finished[:, None, None], finished_sequences, running)
    scores = jnp.where(any_finished[:, None], finished_scores, running_scores)
    count = settings.num_return_sequences
    return FlaxBeamSearchOutput(sequences=flat(sequences[:, :count]), scores=flat(scores[:, :count]))

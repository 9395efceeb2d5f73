"""The ``generate`` entry point: :class:`GenerationMixin` reads the settings, checks the arguments and the
prompt, runs the encoder of an encoder-decoder model, builds the logits processors, warpers and stopping
criteria, and hands the loop to the decoding strategy the settings select (one module each beside this one).

The loops live in this package, not in the models (DESIGN principle 6). A model takes part by inheriting
:class:`GenerationMixin` (listed before its ``PreTrainedModel`` base, so that ``from_pretrained`` also reads
``generation_config.json``) and implementing ``prepare_inputs_for_generation``: given every token so far and
the model keyword arguments (cache, attention mask, ...), return the inputs of the next forward call, which
is the place to cut off what the cache already holds and to derive position ids from a left-padded mask.

One step of every strategy is: run the model on the new tokens (:meth:`GenerationMixin._step`), take the
last position's logits, pass them through the logits processors (and, when sampling, the warpers), choose
tokens, append them, update the model keyword arguments (:meth:`GenerationMixin._update_model_kwargs`: the
cache the model returned, one more mask column), check the stopping criteria.

Encoder-decoder models (``config.is_encoder_decoder``) go through the same ``generate``: the encoder
(``get_encoder()``) runs once, its output travels in ``encoder_outputs``, and decoding starts from
``decoder_start_token_id``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ...generation_config import (
    UNSUPPORTED, FIELDS, GenerationConfig, reject_duplicate_processors, use_model_tokens, warper_plan,
)
from ..._shared import settings_for_call
from ..cache import StaticCache
from ..quantize import decoding_weights
from .assisted import assisted_generate
from .beam_search import beam_search
from .constrained import constrained_beam_search
from .contrastive import _is_contrastive, contrastive_search
from .greedy import sample
from .group_beam_search import group_beam_search
from .processors import (
    EncoderNoRepeatNGramLogitsProcessor, EncoderRepetitionPenaltyLogitsProcessor, EpsilonLogitsWarper,
    EtaLogitsWarper, ExponentialDecayLengthPenalty, ForcedBOSTokenLogitsProcessor, ForcedEOSTokenLogitsProcessor,
    ForceTokensLogitsProcessor, HammingDiversityLogitsProcessor, InfNanRemoveLogitsProcessor, LogitNormalization,
    LogitsProcessorList, MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor, NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor, PrefixConstrainedLogitsProcessor, RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor, SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper,
    UnbatchedClassifierFreeGuidanceLogitsProcessor, _as_list,
)
from .stopping import EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria, StopStringCriteria, StoppingCriteriaList

logger = logging.getLogger("polyformers")


def _submodule(model, name: str):
    """``model.<name>``, or the same attribute of its base model (the encoder of a seq2seq model)."""
    found = getattr(model, name, None)
    if found is None:
        base = getattr(model, getattr(model, "base_model_prefix", ""), None) if getattr(model, "base_model_prefix", "") else None
        found = getattr(base, name, None) if base is not None else None
    return found


_WARPERS = {
    "temperature": TemperatureLogitsWarper, "top_k": TopKLogitsWarper, "top_p": TopPLogitsWarper,
    "typical_p": TypicalLogitsWarper, "epsilon": EpsilonLogitsWarper, "eta": EtaLogitsWarper,
    "renormalize": LogitNormalization,
}


def _with_decoding_weights(generate):
    """``generate`` with the model's packed weights as those polyformers' kernels read again and again
    (``quantize.decoding_weights``: kept in the caches where they fit, whatever else the process holds)."""

    @functools.wraps(generate)
    def wrapper(self, *args, **kwargs):
        with decoding_weights(self):
            return generate(self, *args, **kwargs)

    return wrapper


class GenerationMixin:
    """``generate()`` for models with a language-modelling head; see the module docstring for the contract.

    The model class defines ``prepare_inputs_for_generation`` and may define ``_reorder_cache(past, beam_idx)``
    (otherwise :func:`reorder_cache` serves both cache kinds).
    """

    # -- configuration ------------------------------------------------------------------------------

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

    def get_encoder(self):
        encoder = _submodule(self, "encoder")
        if encoder is None:
            raise NotImplementedError(f"{type(self).__name__} must define get_encoder() for encoder-decoder generation")
        return encoder

    # -- generate -----------------------------------------------------------------------------------

    @torch.no_grad()
    @_with_decoding_weights
    def generate(
        self,
        inputs: Optional[torch.Tensor] = None,
        generation_config: Optional[GenerationConfig] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        stopping_criteria: Optional[StoppingCriteriaList] = None,
        prefix_allowed_tokens_fn: Optional[Callable[[int, torch.Tensor], list[int]]] = None,
        synced_gpus: Optional[bool] = None,
        assistant_model=None,
        streamer=None,
        negative_prompt_ids: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        """Generate token ids after ``inputs`` (the prompt; for encoder-decoder models the encoder's input).

        Settings come from ``generation_config`` (default: the model's), overridden by keyword arguments
        that are fields of it (``max_new_tokens=20``, ``num_beams=4``, ...); the other keyword arguments go
        to the model (``attention_mask``, ...). ``tokenizer`` is needed with ``stop_strings``. Returns the
        sequences (prompt included for decoder-only models), or with ``return_dict_in_generate=True`` a
        ``Generate*Output`` with ``sequences`` and, as asked, ``scores``, ``sequences_scores``,
        ``beam_indices``, attentions and hidden states.
        """
        if not self.can_generate() or not hasattr(self, "prepare_inputs_for_generation"):
            raise TypeError(
                f"{type(self).__name__} cannot generate: generation needs a language-modelling head class that "
                "defines prepare_inputs_for_generation"
            )
        for name, value in (("synced_gpus", synced_gpus),):
            if value:
                raise ValueError(f"{name}: not supported by polyformers' generate, given {type(value).__name__}")
        tokenizer = kwargs.pop("tokenizer", None)
        generation_config, model_kwargs = self._generation_settings(generation_config, kwargs)
        self._check_model_kwargs(model_kwargs)
        config = generation_config
        logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        stopping_criteria = stopping_criteria if stopping_criteria is not None else StoppingCriteriaList()

        if config.pad_token_id is None and config.eos_token_id is not None:
            if model_kwargs.get("attention_mask") is None:
                logger.warning(
                    "neither attention_mask nor pad_token_id was given: padded prompts may generate unexpected "
                    "tokens; pass the attention_mask the tokenizer returned"
                )
            if not _as_list(config.eos_token_id):
                raise ValueError("pad_token_id: needed with eos_token_id=[] (no end-of-sequence token, which cannot "
                                 "stand in for the pad token), given None")
            eos = _as_list(config.eos_token_id)[0]
            logger.warning("Setting `pad_token_id` to `eos_token_id`:%s for open-end generation.", eos)
            config.pad_token_id = eos

        is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        inputs_tensor, input_name, model_kwargs = self._prompt(inputs, config.bos_token_id, model_kwargs)
        batch_size = inputs_tensor.shape[0]
        model_kwargs["use_cache"] = config.use_cache
        if (
            model_kwargs.get("attention_mask") is None
            and "encoder_outputs" not in model_kwargs
            and "attention_mask" in inspect.signature(self.forward).parameters
        ):
            model_kwargs["attention_mask"] = self._default_attention_mask(inputs_tensor, config)
        if not is_encoder_decoder and config.pad_token_id is not None and inputs_tensor.dim() == 2:
            if bool((inputs_tensor[:, -1] == config.pad_token_id).any()):
                logger.warning(
                    "a decoder-only model got right-padded prompts: generation continues after the padding; "
                    "pad on the left (tokenizer padding_side='left') for correct results"
                )

        if is_encoder_decoder:
            if "encoder_outputs" not in model_kwargs:
                model_kwargs = self._run_encoder(inputs_tensor, input_name, model_kwargs, config)
            input_ids, model_kwargs = self._decoder_start(batch_size, input_name, model_kwargs, config,
                                                          inputs_tensor.device)
        else:
            input_ids = inputs_tensor
            self._check_prompt_length(input_ids.shape[-1])
        if config.num_beams > 1 and streamer is not None:
            raise ValueError("streamer: cannot stream beam search (num_beams > 1); use num_beams=1 with a streamer")
        if streamer is not None:
            streamer.put(input_ids.cpu())

        prompt_length = input_ids.shape[-1]
        self._resolve_max_length(config, kwargs, prompt_length)

        if input_ids.device.type != self.device.type:
            warnings.warn(
                f"input_ids are on {input_ids.device.type} but the model is on {self.device.type}; move them with "
                f".to('{self.device.type}') first", UserWarning,
            )
        processors = self._logits_processors(config, prompt_length, inputs_tensor, prefix_allowed_tokens_fn,
                                             logits_processor)
        if config.guidance_scale is not None and config.guidance_scale != 1:
            processors.insert(0, UnbatchedClassifierFreeGuidanceLogitsProcessor(
                config.guidance_scale, self, negative_prompt_ids, negative_prompt_attention_mask, config.use_cache))
        beam = config.num_beams > 1
        warpers = self._logits_warpers(config) if config.do_sample else LogitsProcessorList()
        # The processors and warpers above saw the end and pad tokens as the call gave them; the stopping
        # criteria and the decoding loops below see them after the fallback to the model's own.
        passed = copy.copy(config)
        self._loop_tokens(config, refuse_missing_pad=not beam)
        criteria = self._stopping_criteria(config, stopping_criteria, tokenizer, with_eos=not beam)
        if "cache_position" in inspect.signature(self.prepare_inputs_for_generation).parameters:
            model_kwargs["cache_position"] = torch.arange(prompt_length, device=input_ids.device)

        expand = config.num_beams if beam else config.num_return_sequences if config.do_sample else 1
        input_ids, model_kwargs = self._expand_inputs(input_ids, expand, is_encoder_decoder, model_kwargs)
        forward_arguments = inspect.signature(self.forward).parameters
        if "logits_to_keep" in forward_arguments and "logits_to_keep" not in model_kwargs:
            model_kwargs["logits_to_keep"] = 1  # every strategy reads the last position's logits only
        if self._wants_static_cache(config, model_kwargs, beam, input_ids.shape[-1]):
            model_kwargs["past_key_values"] = StaticCache(self.config, max_batch_size=input_ids.shape[0],
                                                          max_cache_len=config.max_length)
        if assistant_model is not None or config.prompt_lookup_num_tokens is not None:
            return assisted_generate(self, assistant_model, input_ids, inputs_tensor, batch_size, config, processors,
                                     warpers, criteria, streamer, model_kwargs, logits_processor, passed)
        if config.constraints is not None or config.force_words_ids is not None:
            return constrained_beam_search(self, input_ids, config, processors, criteria, batch_size, model_kwargs)
        if _is_contrastive(config):
            return contrastive_search(self, input_ids, config, processors, criteria, streamer, model_kwargs)
        if beam and config.num_beam_groups > 1:
            return group_beam_search(self, input_ids, config, processors, criteria, batch_size, model_kwargs)
        if beam:
            return beam_search(self, input_ids, config, processors, warpers, criteria, batch_size, model_kwargs)
        return sample(self, input_ids, config, processors, warpers, criteria, streamer, model_kwargs)

    # -- preparation ----------------------------------------------------------------------------------

    def _loop_tokens(self, config, refuse_missing_pad: bool) -> None:
        """The end and pad tokens of the decoding loops: see :func:`generation_config.use_model_tokens`."""
        use_model_tokens(config, self.generation_config, refuse_missing_pad)

    def _wants_static_cache(self, config, model_kwargs: dict, beam: bool, prompt_length: int) -> bool:
        """Decode through a preallocated cache (written in place, nothing reallocated per token) where the
        model supports one and the caller never sees the cache: no cache given, none returned, and no
        beams, whose reordering would copy whole buffers every step."""
        return (
            getattr(self, "_supports_static_cache", False)
            and config.use_cache
            and model_kwargs.get("past_key_values") is None
            and not config.return_dict_in_generate
            and not beam
            and not _is_contrastive(config)  # its batch grows to top_k candidates per row
            and config.max_length is not None
            and config.max_length > prompt_length
        )

    def _generation_settings(self, generation_config, kwargs):
        if generation_config is None:
            current = self.generation_config
            # Older code steers generation through the model config; honour it while the generation config
            # is still the untouched copy made from that config.
            if (
                current._from_model_config
                and getattr(current, "_original_object_hash", None) == hash(current)
                and self.config._has_non_default_generation_parameters()
            ):
                fresh = GenerationConfig.from_model_config(self.config)
                if fresh != current:
                    warnings.warn(
                        "the model config was modified to control generation; this is deprecated: set the "
                        "model's generation_config (or pass the settings to generate) instead", UserWarning,
                    )
                    self.generation_config = current = fresh
            generation_config = current
        elif not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config: expected a GenerationConfig, given {type(generation_config).__name__}")
        config, model_kwargs = settings_for_call(generation_config, kwargs)
        for name, mode in UNSUPPORTED.items():
            if getattr(config, name) != FIELDS[name][0]:
                raise ValueError(f"{name}: {mode} is not supported by polyformers' generate, given {getattr(config, name)!r}")
        return config, model_kwargs

    def _check_model_kwargs(self, model_kwargs: dict) -> None:
        """Keyword arguments that are neither generation settings nor model inputs are typos: refuse them."""
        accepted = set(inspect.signature(self.prepare_inputs_for_generation).parameters)
        if {"kwargs", "model_kwargs"} & accepted:
            accepted |= set(inspect.signature(self.forward).parameters)
        if getattr(self.config, "is_encoder_decoder", False):
            encoder, decoder = _submodule(self, "encoder"), _submodule(self, "decoder")
            if encoder is not None:
                accepted |= set(inspect.signature(encoder.forward).parameters)
            if decoder is not None:
                accepted |= {f"decoder_{name}" for name in inspect.signature(decoder.forward).parameters}
            accepted.add("decoder_input_ids")
        unused = [key for key, value in model_kwargs.items() if value is not None and key not in accepted]
        if unused:
            raise ValueError(
                f"generate got keyword arguments that are neither generation settings nor inputs of "
                f"{type(self).__name__}: {unused} (check for typos)"
            )

    def _prompt(self, inputs, bos_token_id, model_kwargs):
        """The tensor generation starts from (or the encoder reads), its argument name, the other kwargs."""
        input_name = self.main_input_name
        if getattr(self.config, "is_encoder_decoder", False):
            input_name = getattr(self.get_encoder(), "main_input_name", input_name)
        model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None or k != input_name}
        given = model_kwargs.pop(input_name, None)
        if given is not None and inputs is not None:
            raise ValueError(f"inputs: pass the prompt either as inputs or as {input_name}, not both")
        inputs = given if given is not None else inputs
        if "inputs_embeds" in model_kwargs:
            raise ValueError(
                f"inputs_embeds: {type(self).__name__}.generate starts from token ids; pass input_ids instead"
            )
        if inputs is None:
            encoder_outputs = model_kwargs.get("encoder_outputs")
            if getattr(self.config, "is_encoder_decoder", False) and encoder_outputs is not None:
                shape = encoder_outputs[0].shape[:-1]
                inputs = torch.full(shape, -100, dtype=torch.long, device=self.device)
            else:
                if bos_token_id is None:
                    raise ValueError("bos_token_id: needed to start generation when no input_ids are given, given None")
                batch = next((v.shape[0] for v in model_kwargs.values() if isinstance(v, torch.Tensor)), 1)
                inputs = torch.full((batch, 1), bos_token_id, dtype=torch.long, device=self.device)
        elif not isinstance(inputs, torch.Tensor):
            raise TypeError(f"{input_name}: expected a torch.Tensor of token ids, given {type(inputs).__name__}")
        elif input_name == "input_ids" and (inputs.dim() != 2 or inputs.dtype not in (torch.long, torch.int)):
            raise ValueError(
                f"input_ids: expected an integer tensor of shape (batch, sequence), given {inputs.dtype} of shape "
                f"{tuple(inputs.shape)}"
            )
        return inputs, input_name, model_kwargs

    @staticmethod
    def _default_attention_mask(inputs: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
        """Mask out pad tokens, unless padding is indistinguishable from an end-of-sequence token."""
        pad = config.pad_token_id
        is_ids = inputs.dim() == 2 and inputs.dtype in (torch.int, torch.long)
        if is_ids and pad is not None and pad not in _as_list(config.eos_token_id) and bool((inputs == pad).any()):
            return inputs.ne(pad).long()
        return torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)

    def _check_prompt_length(self, length: int) -> None:
        limit = getattr(self.config, "max_position_embeddings", None)
        if isinstance(limit, int) and length > limit:
            raise ValueError(
                f"input_ids: the prompt has {length} tokens but the model has max_position_embeddings={limit}; "
                "shorten the prompt"
            )

    def _run_encoder(self, inputs_tensor, input_name, model_kwargs, config):
        encoder = self.get_encoder()
        accepted = set(inspect.signature(encoder.forward).parameters)
        wildcard = bool({"kwargs", "model_kwargs"} & accepted)
        encoder_kwargs = {
            k: v for k, v in model_kwargs.items()
            if not k.startswith(("decoder_", "cross_attn", "use_cache")) and (wildcard or k in accepted)
        }
        encoder_kwargs.update(return_dict=True, output_attentions=config.output_attentions,
                              output_hidden_states=config.output_hidden_states)
        encoder_kwargs[input_name] = inputs_tensor
        model_kwargs["encoder_outputs"] = encoder(**encoder_kwargs)
        return model_kwargs

    def _decoder_start(self, batch_size, input_name, model_kwargs, config, device):
        """Decoder ids start with ``decoder_start_token_id`` (else ``bos_token_id``), prepended to any given."""
        given = model_kwargs.pop("decoder_input_ids", None)
        if given is None and "input_ids" in model_kwargs and input_name != "input_ids":
            given = model_kwargs.pop("input_ids")
        start = config.decoder_start_token_id
        if start is None:
            start = self.generation_config.decoder_start_token_id
        if start is None:
            start = config.bos_token_id if config.bos_token_id is not None else self.generation_config.bos_token_id
        if start is None:
            raise ValueError("decoder_start_token_id: needed for encoder-decoder generation (or bos_token_id), given None")
        first = torch.full((batch_size, 1), start, dtype=torch.long, device=device)
        if given is None:
            return first, model_kwargs
        if bool((given[:, 0] != start).all()):
            given = torch.cat([first, given], dim=-1)
            mask = model_kwargs.get("decoder_attention_mask")
            if mask is not None:
                model_kwargs["decoder_attention_mask"] = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=-1)
        return given, model_kwargs

    def _resolve_max_length(self, config, kwargs, prompt_length):
        default_max_length = kwargs.get("max_length") is None and config.max_length is not None
        if config.max_new_tokens is not None:
            if not default_max_length and config.max_length is not None:
                logger.warning(
                    "both max_new_tokens (=%s) and max_length (=%s) were set; max_new_tokens takes precedence",
                    config.max_new_tokens, config.max_length,
                )
            config.max_length = config.max_new_tokens + prompt_length
        elif default_max_length and config.max_length == 20:
            warnings.warn(
                "Using the model-agnostic default `max_length` (=20) to control the generation length. We "
                "recommend setting `max_new_tokens` to control the maximum length of the generation.", UserWarning,
            )
        what = "decoder_input_ids" if getattr(self.config, "is_encoder_decoder", False) else "input_ids"
        if config.max_length is not None and prompt_length >= config.max_length:
            warnings.warn(
                f"Input length of {what} is {prompt_length}, but `max_length` is set to {config.max_length}. This "
                "can lead to unexpected behavior. You should consider increasing `max_new_tokens`.", UserWarning,
            )
        if config.min_length and config.max_length is not None and config.min_length > config.max_length:
            warnings.warn(f"min_length ({config.min_length}) is larger than max_length ({config.max_length}): "
                          "generation stops at max_length", UserWarning)
        if config.min_new_tokens and config.max_length is not None and \
                config.min_new_tokens + prompt_length > config.max_length:
            warnings.warn(f"min_new_tokens ({config.min_new_tokens}) plus the prompt ({prompt_length}) exceeds "
                          f"max_length ({config.max_length}): generation stops at max_length", UserWarning)

    def _logits_processors(self, config, prompt_length, encoder_input_ids, prefix_allowed_tokens_fn, custom):
        """The processors the settings ask for, in the reference's order, then the caller's own."""
        processors = LogitsProcessorList()
        eos = config.eos_token_id
        if config.sequence_bias is not None:
            processors.append(SequenceBiasLogitsProcessor(config.sequence_bias))
        if config.diversity_penalty is not None and config.diversity_penalty > 0.0:
            processors.append(HammingDiversityLogitsProcessor(config.diversity_penalty, config.num_beams,
                                                              config.num_beam_groups))
        if config.encoder_repetition_penalty is not None and config.encoder_repetition_penalty != 1.0:
            processors.append(EncoderRepetitionPenaltyLogitsProcessor(config.encoder_repetition_penalty,
                                                                      encoder_input_ids))
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.encoder_no_repeat_ngram_size is not None and config.encoder_no_repeat_ngram_size > 0:
            processors.append(EncoderNoRepeatNGramLogitsProcessor(config.encoder_no_repeat_ngram_size,
                                                                  encoder_input_ids))
        if config.bad_words_ids is not None:
            processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
        if config.min_length and eos is not None:
            processors.append(MinLengthLogitsProcessor(config.min_length, eos))
        if config.min_new_tokens and eos is not None:
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos))
        if prefix_allowed_tokens_fn is not None:
            processors.append(PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn,
                                                               config.num_beams // config.num_beam_groups))
        if config.forced_bos_token_id is not None:
            processors.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
        if config.forced_eos_token_id is not None:
            processors.append(ForcedEOSTokenLogitsProcessor(config.max_length, config.forced_eos_token_id))
        if config.remove_invalid_values:
            processors.append(InfNanRemoveLogitsProcessor())
        if config.exponential_decay_length_penalty is not None:
            processors.append(ExponentialDecayLengthPenalty(config.exponential_decay_length_penalty, eos,
                                                            prompt_length))
        if config.suppress_tokens is not None:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
        if config.begin_suppress_tokens is not None:
            # With a forced first token, the first free position is one later.
            begin = prompt_length + (1 if prompt_length == 1 and config.forced_bos_token_id is not None else 0)
            if config.forced_decoder_ids is not None:
                begin += config.forced_decoder_ids[-1][0]  # the first free position follows the forced ones
            processors.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin))
        if config.forced_decoder_ids is not None:
            processors.append(ForceTokensLogitsProcessor(config.forced_decoder_ids))
        reject_duplicate_processors(processors, custom)
        processors.extend(custom)
        if config.renormalize_logits:
            processors.append(LogitNormalization())
        return processors

    @staticmethod
    def _logits_warpers(config) -> LogitsProcessorList:
        return LogitsProcessorList(_WARPERS[kind](*args, **kwargs) for kind, args, kwargs in warper_plan(config))

    def _stopping_criteria(self, config, custom, tokenizer, with_eos: bool) -> StoppingCriteriaList:
        criteria = StoppingCriteriaList()
        if config.max_length is not None:
            criteria.append(MaxLengthCriteria(config.max_length, getattr(self.config, "max_position_embeddings", None)))
        if config.max_time is not None:
            criteria.append(MaxTimeCriteria(config.max_time))
        if config.stop_strings is not None:
            if tokenizer is None:
                raise ValueError("tokenizer: generate needs the model's tokenizer to match stop_strings, given None")
            criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
        if with_eos and config.eos_token_id is not None:
            criteria.append(EosTokenCriteria(config.eos_token_id))
        for mine in criteria:
            for theirs in custom:
                if type(theirs) is type(mine):
                    raise ValueError(
                        f"stopping_criteria: a {type(theirs).__name__} was passed, but the generation settings "
                        "already create one; change the setting instead"
                    )
        criteria.extend(custom)
        return criteria

    @staticmethod
    def _expand_inputs(input_ids, times: int, is_encoder_decoder: bool, model_kwargs: dict):
        """Repeat every row ``times`` times in place (beams or samples of one prompt are neighbours)."""
        if times == 1:
            return input_ids, model_kwargs

        def expand(mapping):
            for key in list(mapping.keys()):
                if key != "cache_position" and isinstance(mapping[key], torch.Tensor):
                    mapping[key] = mapping[key].repeat_interleave(times, dim=0)
            return mapping

        model_kwargs = expand(model_kwargs)
        if is_encoder_decoder:
            if model_kwargs.get("encoder_outputs") is None:
                raise ValueError("encoder_outputs: missing for an encoder-decoder model")
            expand(model_kwargs["encoder_outputs"])
        return input_ids.repeat_interleave(times, dim=0), model_kwargs

    # -- the step every strategy takes (the strategies call these on the model) ----------------------

    def _update_model_kwargs(self, outputs, model_kwargs: dict, is_encoder_decoder: bool) -> dict:
        """After a step: keep the cache the model returned and grow the masks by the new token."""
        model_kwargs["past_key_values"] = outputs.get("past_key_values") if hasattr(outputs, "get") else None
        if "token_type_ids" in model_kwargs:
            types = model_kwargs["token_type_ids"]
            model_kwargs["token_type_ids"] = torch.cat([types, types[:, -1:]], dim=-1)
        name = "decoder_attention_mask" if is_encoder_decoder else "attention_mask"
        mask = model_kwargs.get(name)
        if mask is not None:
            model_kwargs[name] = F.pad(mask, (0, 1), value=1)  # one column of ones, in one operation
        positions = model_kwargs.get("cache_position")
        if positions is not None:
            # With a cache only the new token is fed; without one the whole sequence is, every step.
            following = (positions if positions.shape[0] == 1 else positions[-1:]) + 1
            model_kwargs["cache_position"] = following if model_kwargs["past_key_values"] is not None else \
                torch.cat([positions, following])
        return model_kwargs

    def _step(self, input_ids, model_kwargs, config, copy: bool = True):
        """Run the model once on the next inputs: its outputs and the last position's logits in float32, a
        copy unless ``copy`` is False (nothing will edit them) and they are float32 logits of one position
        (a view of more would keep all of them alive)."""
        inputs = self.prepare_inputs_for_generation(input_ids, **model_kwargs)
        outputs = self(**inputs, return_dict=True, output_attentions=config.output_attentions,
                       output_hidden_states=config.output_hidden_states)
        # A copy in float32: processors edit it, and half-precision scores would round the log-probs.
        logits = outputs.logits[:, -1, :]
        if copy or logits.dtype != torch.float32 or outputs.logits.shape[1] != 1:
            logits = logits.to(dtype=torch.float32, copy=True)
        return outputs, logits

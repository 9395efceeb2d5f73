"""Assisted decoding and prompt lookup decoding: guess several tokens cheaply, verify them in one forward.

Each round, a *candidate generator* proposes a continuation of the tokens so far; the model runs once on
all of it and, at every proposed position, picks its own token (greedy, or sampled) from the logits it
would have computed one step at a time. The proposal is kept up to the first position where the model
disagrees, plus the model's own token there, so a round adds between one and ``candidates + 1`` tokens
and greedy output is token for token what plain greedy decoding gives. The model's cache is then cut back
to the kept tokens.

Two generators, as in the reference's 4.37 release:

- :class:`AssistedCandidateGenerator`: a smaller model of the same vocabulary (``assistant_model=``)
  decodes ``num_assistant_tokens`` tokens greedily (or by sampling). Its generation config decides
  how many: with ``num_assistant_tokens_schedule="heuristic"`` the count grows by 2 after a round in
  which every candidate was kept and shrinks by 1 (not below 1) otherwise; ``"constant"`` keeps it.
- :class:`PromptLookupCandidateGenerator` (``prompt_lookup_num_tokens=``): the last 2 (then 1) tokens
  are looked up in the tokens so far, and what followed their first earlier occurrence is proposed.
  It pays off when the output copies from the prompt (summaries, edits, question answering over a text).

With ``do_sample=True`` and an assistant, the candidates are accepted by speculative sampling (Leviathan
et al. 2023, algorithm 1): candidate ``x`` is kept with probability ``min(1, p(x) / q(x))`` (``p`` the
model's, ``q`` the assistant's distribution), and after the first rejection a token is drawn from
``max(p - q, 0)`` renormalised, which leaves the output distributed as plain sampling from ``p``.
"""

from __future__ import annotations

import copy
import inspect
from typing import Optional

import torch
from torch import nn

from ... import outputs as _outputs
from ..cache import Cache, StaticCache


# ===================================================================================================
# Candidate generators


class CandidateGenerator:
    """Base class: proposes candidate continuations and learns from how many of them were kept."""

    def get_candidates(self, input_ids: torch.LongTensor) -> tuple[torch.LongTensor, Optional[torch.FloatTensor]]:
        """``input_ids`` followed by the candidate tokens, shape (1, length + candidates), and the scores
        the candidates were chosen from, shape (1, candidates, vocab), or None when there are none."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_candidates(input_ids)")

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, num_matches: int):
        """Called after each round with the tokens so far, the model's scores and how many candidates were kept."""
        raise NotImplementedError(f"{type(self).__name__} must implement update_candidate_strategy")


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _grow_mask(mask: Optional[torch.Tensor], length: int) -> Optional[torch.Tensor]:
    """The mask cut or extended with ones (new tokens are never padding) to ``length`` columns."""
    if mask is None or mask.shape[1] == length:
        return mask
    if mask.shape[1] > length:
        return mask[:, :length]
    return torch.cat([mask, mask.new_ones((mask.shape[0], length - mask.shape[1]))], dim=-1)


def _grow_token_types(types: Optional[torch.Tensor], length: int) -> Optional[torch.Tensor]:
    """Token type ids cut, or extended by repeating the last type, to ``length`` columns."""
    if types is None or types.shape[1] == length:
        return types
    if types.shape[1] > length:
        return types[:, :length]
    return torch.cat([types, types[:, -1:].repeat(1, length - types.shape[1])], dim=-1)


def cache_length(past_key_values) -> int:
    """How many positions a cache (a ``Cache`` or the older tuple of per-layer tensors) holds."""
    if past_key_values is None:
        return 0
    if isinstance(past_key_values, Cache):
        return past_key_values.get_seq_length()
    return past_key_values[0][0].shape[-2]


def crop_cache(past_key_values, length: int):
    """Forget every cached position from ``length`` on: the states of rejected candidate tokens.

    ``Cache`` objects crop themselves (a preallocated one marks the slots free in place); in the older
    tuple format the self-attention key and value (the first two tensors of a layer) are cut and an
    encoder-decoder's cross-attention states, which cover the encoder's positions, stay whole.
    """
    if past_key_values is None:
        return None
    if hasattr(past_key_values, "crop"):
        past_key_values.crop(length)
        return past_key_values
    return tuple(
        tuple(t[..., :length, :] if i < 2 else t for i, t in enumerate(layer)) for layer in past_key_values
    )


class AssistedCandidateGenerator(CandidateGenerator):
    """Candidates decoded by ``assistant_model``, a smaller model sharing the model's vocabulary.

    The assistant keeps its own cache across rounds, cut back to the tokens the model kept. It applies
    the same logits processors the generation config asks of the model (built for the round's length, as
    the reference does, plus the caller's ``logits_processor``) and, when sampling, the same warpers; the
    scores it chose from are returned with the candidates for speculative sampling.
    """

    def __init__(
        self,
        input_ids: torch.LongTensor,
        assistant_model,
        generation_config,
        logits_processor,
        model_kwargs: dict,
        inputs_tensor: Optional[torch.Tensor] = None,
    ):
        assistant = assistant_model
        device = assistant.device
        self.assistant_model = assistant
        settings = assistant.generation_config
        self.num_assistant_tokens = settings.num_assistant_tokens
        self.schedule = settings.num_assistant_tokens_schedule
        self.generation_config = copy.copy(generation_config)
        self.generation_config.output_attentions = False
        self.generation_config.output_hidden_states = False
        self.logits_processor = logits_processor if logits_processor is not None else []
        self.is_encoder_decoder = bool(getattr(assistant.config, "is_encoder_decoder", False))
        # The assistant stops at the end token given, else at its own (its generate's loop falls back so).
        eos = generation_config.eos_token_id
        eos = settings.eos_token_id if eos is None else eos
        self.eos = torch.tensor(_as_list(eos), dtype=torch.long, device=device)
        self.kwargs: dict = {}
        mask = model_kwargs.get("attention_mask")
        mask = mask.detach().to(device) if mask is not None else None
        if self.is_encoder_decoder:
            # The assistant reads the source with its own encoder, once.
            source = inputs_tensor.to(device)
            encoder_kwargs = {"attention_mask": mask} if mask is not None else {}
            name = getattr(assistant.get_encoder(), "main_input_name", "input_ids")
            encoder_kwargs = assistant._run_encoder(source, name, encoder_kwargs, self.generation_config)
            self.kwargs["encoder_outputs"] = encoder_kwargs["encoder_outputs"]
            self.kwargs["attention_mask"] = mask
            self.mask_key = "decoder_attention_mask"
            self.mask = None
            self.encoder_input_ids = source
        else:
            self.mask_key = "attention_mask"
            self.mask = mask
            self.encoder_input_ids = None  # the reference hands the assistant the tokens so far
        types = model_kwargs.get("token_type_ids")
        self.token_type_ids = types.detach().to(device) if types is not None else None
        self.takes_cache_position = _accepts(assistant.prepare_inputs_for_generation, "cache_position")
        self.takes_logits_to_keep = _accepts(assistant.forward, "logits_to_keep")
        self.cache = None
        max_length = generation_config.max_length
        if getattr(assistant, "_supports_static_cache", False) and max_length is not None \
                and not self.is_encoder_decoder:
            self.cache = StaticCache(assistant.config, max_batch_size=input_ids.shape[0], max_cache_len=max_length)
        self.started = False

    def get_candidates(self, input_ids):
        assistant = self.assistant_model
        input_ids = input_ids.to(assistant.device)
        length = input_ids.shape[-1]
        # The model adds a token of its own after the candidates: stop one short of max_length.
        wanted = min(int(self.num_assistant_tokens), self.generation_config.max_length - length - 1)
        if wanted <= 0:
            return input_ids, None
        if self.started:
            # The assistant has not seen the token the model added after the last kept candidate, and may
            # hold rejected ones: keep its states up to the token before the last two, which it re-reads.
            self.cache = crop_cache(self.cache, length - 2)
        self.started = True
        config = copy.copy(self.generation_config)
        config.max_length = length + wanted
        encoder_ids = self.encoder_input_ids if self.encoder_input_ids is not None else input_ids
        processors = assistant._logits_processors(config, length, encoder_ids, None, self.logits_processor)
        warpers = assistant._logits_warpers(config) if config.do_sample else None
        ids = input_ids
        scores = []
        for _ in range(wanted):
            kwargs = dict(self.kwargs, past_key_values=self.cache, use_cache=True)
            if self.mask is not None or not self.is_encoder_decoder:
                kwargs[self.mask_key] = _grow_mask(self.mask, ids.shape[1])
            if self.token_type_ids is not None:
                kwargs["token_type_ids"] = _grow_token_types(self.token_type_ids, ids.shape[1])
            if self.takes_cache_position:
                kwargs["cache_position"] = torch.arange(cache_length(self.cache), ids.shape[1], device=ids.device)
            if self.takes_logits_to_keep:
                kwargs["logits_to_keep"] = 1
            inputs = assistant.prepare_inputs_for_generation(ids, **kwargs)
            outputs = assistant(**inputs, return_dict=True)
            step = processors(ids, outputs.logits[:, -1, :].to(dtype=torch.float32, copy=True))
            if warpers is not None:
                step = warpers(ids, step)
                token = torch.multinomial(nn.functional.softmax(step, dim=-1), num_samples=1).squeeze(1)
            else:
                token = torch.argmax(step, dim=-1)
            scores.append(step)
            ids = torch.cat([ids, token[:, None]], dim=-1)
            self.cache = outputs.past_key_values
            if self.eos.numel() and bool(torch.isin(token, self.eos).all()):
                break
        if self.mask is not None:
            self.mask = _grow_mask(self.mask, ids.shape[1])
        return ids, torch.stack(scores, dim=1)

    def update_candidate_strategy(self, input_ids, scores, num_matches):
        if self.schedule == "heuristic":
            if num_matches == int(self.num_assistant_tokens):
                self.num_assistant_tokens += 2.0
            else:
                self.num_assistant_tokens = max(1.0, self.num_assistant_tokens - 1.0)


class PromptLookupCandidateGenerator(CandidateGenerator):
    """Candidates copied from the tokens so far: find the last ``max_matching_ngram_size`` tokens (then
    fewer, down to one) earlier in the sequence, and propose up to ``num_output_tokens`` tokens that
    followed their first occurrence. With no match, the single token 0 is proposed (the model then decides
    the next token alone, as in plain greedy decoding)."""

    def __init__(self, num_output_tokens: int = 10, max_matching_ngram_size: int = 2):
        for name, value in (("prompt_lookup_num_tokens", num_output_tokens),
                            ("max_matching_ngram_size", max_matching_ngram_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected an int > 0, given {value!r}")
        self.num_output_tokens = num_output_tokens
        self.max_matching_ngram_size = max_matching_ngram_size

    def get_candidates(self, input_ids):
        length = input_ids.shape[1]
        chosen = None
        for size in range(min(self.max_matching_ngram_size, length - 1), 0, -1):
            windows = input_ids.unfold(dimension=1, size=size, step=1)
            hits = (windows == input_ids[0, -size:]).all(dim=2).nonzero(as_tuple=True)[1]
            for start in hits.tolist():
                begin = start + size
                end = min(begin + self.num_output_tokens, length)
                # The n-gram's own (last) occurrence is followed by nothing: it never qualifies.
                if begin < end:
                    chosen = input_ids[0, begin:end]
                    break
            if chosen is not None:
                break
        if chosen is None:
            chosen = torch.zeros(1, dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, chosen[None]], dim=1), None

    def update_candidate_strategy(self, input_ids, scores, num_matches):
        return


def _as_list(token_ids) -> list[int]:
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


# ===================================================================================================
# Argument checks and the verification loop


def check_assisted_settings(model, assistant_model, config, batch_size: int) -> None:
    """The reference's conditions for assisted generation, as errors that name the argument at fault."""
    trigger = "assistant_model" if assistant_model is not None else "prompt_lookup_num_tokens"
    modes = "assisted generate is only supported with greedy search and sampling"
    for name in ("constraints", "force_words_ids"):
        if getattr(config, name, None) is not None:
            raise ValueError(f"{name}: {trigger} triggers assisted generate and {modes}; given {name} as well")
    if config.num_beams != 1:
        raise ValueError(f"num_beams: {trigger} triggers assisted generate and {modes} (num_beams=1), "
                         f"given num_beams={config.num_beams}")
    if config.penalty_alpha is not None and config.penalty_alpha > 0 and config.top_k is not None \
            and config.top_k > 1 and not config.do_sample:
        raise ValueError(f"penalty_alpha: {trigger} triggers assisted generate and {modes}, not contrastive "
                         f"search; given penalty_alpha={config.penalty_alpha}")
    if config.num_return_sequences > 1:
        raise ValueError("num_return_sequences: has to be 1 when doing assisted generate, given "
                         f"{config.num_return_sequences}")
    if batch_size > 1:
        raise ValueError(f"input_ids: assisted generate is only supported for batch_size = 1, given a batch of "
                         f"{batch_size}")
    if not config.use_cache:
        raise ValueError("use_cache: assisted generate requires use_cache=True, given False")
    if assistant_model is None or config.prompt_lookup_num_tokens is not None:
        return  # the reference uses prompt lookup when both are given
    if not all(hasattr(assistant_model, name) for name in ("prepare_inputs_for_generation", "generation_config")):
        raise ValueError(f"assistant_model: expected a generating model (with a language-modelling head), given "
                         f"{type(assistant_model).__name__}")
    model_ed = bool(getattr(model.config, "is_encoder_decoder", False))
    assistant_ed = bool(getattr(assistant_model.config, "is_encoder_decoder", False))
    if model_ed != assistant_ed:
        kind = {True: "an encoder-decoder", False: "a decoder-only"}
        raise ValueError(f"assistant_model: expected {kind[model_ed]} model like {type(model).__name__}, given "
                         f"{kind[assistant_ed]} {type(assistant_model).__name__}")
    mine, theirs = getattr(model.config, "vocab_size", None), getattr(assistant_model.config, "vocab_size", None)
    if mine != theirs:
        raise ValueError(f"assistant_model: expected a model with the same vocabulary as {type(model).__name__} "
                         f"(vocab_size={mine}), given one with vocab_size={theirs}")
    settings = assistant_model.generation_config
    if settings.num_assistant_tokens_schedule not in ("heuristic", "constant"):
        raise ValueError("num_assistant_tokens_schedule: expected 'heuristic' or 'constant' in the assistant's "
                         f"generation config, given {settings.num_assistant_tokens_schedule!r}")
    count = settings.num_assistant_tokens
    if isinstance(count, bool) or not isinstance(count, (int, float)) or count <= 0:
        raise ValueError(f"num_assistant_tokens: expected a number > 0 in the assistant's generation config, "
                         f"given {count!r}")


def _speculative_sampling(candidate_ids, candidate_logits, candidate_length, new_logits, last_is_eos, max_matches):
    """Algorithm 1 of Leviathan et al.: (the tokens added this round, how many candidates were kept)."""
    proposed = candidate_ids[:, -candidate_length:]
    positions = torch.arange(candidate_length, device=candidate_ids.device)
    q = candidate_logits.softmax(dim=-1)
    p = new_logits.softmax(dim=-1)
    ratio = p[0, positions, proposed[0]] / q[0, positions, proposed[0]]
    accepted = torch.rand_like(ratio) <= ratio
    n_matches = int(((~accepted).cumsum(dim=-1) < 1).sum())
    if last_is_eos and n_matches == candidate_length:
        # Everything up to an end-of-sequence candidate was kept: nothing follows it.
        n_matches -= 1
        return proposed[:, : n_matches + 1], n_matches
    n_matches = min(n_matches, max_matches)
    gamma = min(candidate_logits.shape[1], max_matches)
    following = p[:, n_matches, :]
    if n_matches < gamma:
        residual = torch.clamp(following - q[:, n_matches, :], min=0)
        following = residual / residual.sum()
    token = torch.multinomial(following, num_samples=1).squeeze(1)[None, :]
    return torch.cat([proposed[:, :n_matches], token], dim=-1), n_matches


def _split_steps(collected: tuple, layers, cur_len: int, added: int, attention: bool) -> tuple:
    """Per generated token, the slice of a forward's per-layer attentions or hidden states (the reference's
    layout, whose first entry also covers the prompt)."""
    if len(collected) == 0:
        collected += (tuple(layer[..., :cur_len, : (cur_len if attention else layer.shape[-1])] for layer in layers),)
        cur_len += 1
        added -= cur_len
    for i in range(added):
        collected += (tuple(layer[..., i : i + 1, : (cur_len + i if attention else layer.shape[-1])]
                            for layer in layers),)
    return collected


def assisted_decoding(model, input_ids, candidate_generator, config, processors, warpers, criteria, streamer,
                      model_kwargs):
    """Greedy decoding or sampling, one verified run of candidates per model forward (see the module docs)."""
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    wanted = config.return_dict_in_generate
    scores = () if wanted and config.output_scores else None
    attentions = () if wanted and config.output_attentions else None
    cross_attentions = () if wanted and config.output_attentions and is_encoder_decoder else None
    hidden_states = () if wanted and config.output_hidden_states else None
    # The reference splits the first forward's outputs from the prompt's first position when no cache
    # was given (a quirk of its bookkeeping that this keeps).
    cache_given = model_kwargs.get("past_key_values") is not None and not isinstance(
        model_kwargs.get("past_key_values"), StaticCache)
    eos = torch.tensor(_as_list(config.eos_token_id), dtype=torch.long, device=input_ids.device)
    mask_key = "decoder_attention_mask" if is_encoder_decoder else "attention_mask"
    takes_cache_position = "cache_position" in model_kwargs
    max_length = criteria.max_length
    prefix = "decoder_" if is_encoder_decoder else ""
    while True:
        cur_len = input_ids.shape[-1]
        candidate_ids, candidate_logits = candidate_generator.get_candidates(input_ids)
        candidate_ids = candidate_ids.to(input_ids.device)
        if candidate_logits is not None:
            candidate_logits = candidate_logits.to(input_ids.device)
        past = model_kwargs.get("past_key_values")
        limit = past.get_max_length() if isinstance(past, Cache) else None
        if limit is not None and candidate_ids.shape[1] > limit:
            # A preallocated cache holds max_length positions; candidates past it could never be kept.
            candidate_ids = candidate_ids[:, :limit]
        candidate_length = candidate_ids.shape[1] - cur_len
        last_is_eos = bool(eos.numel()) and bool(torch.isin(candidate_ids[:, -1], eos).all())

        kwargs = dict(model_kwargs)
        if kwargs.get(mask_key) is not None:
            kwargs[mask_key] = _grow_mask(kwargs[mask_key], candidate_ids.shape[1])
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = _grow_token_types(kwargs["token_type_ids"], candidate_ids.shape[1])
        if takes_cache_position:
            kwargs["cache_position"] = torch.arange(cache_length(past), candidate_ids.shape[1],
                                                    device=input_ids.device)
        if "logits_to_keep" in kwargs:
            kwargs["logits_to_keep"] = candidate_length + 1
        inputs = model.prepare_inputs_for_generation(candidate_ids, **kwargs)
        outputs = model(**inputs, return_dict=True, output_attentions=config.output_attentions,
                        output_hidden_states=config.output_hidden_states)

        new_logits = outputs.logits[:, -candidate_length - 1:].to(dtype=torch.float32, copy=True)
        for i in range(candidate_length + 1):
            new_logits[:, i, :] = processors(candidate_ids[:, : cur_len + i], new_logits[:, i, :])
        if config.do_sample:
            for i in range(candidate_length + 1):
                new_logits[:, i, :] = warpers(candidate_ids[:, : cur_len + i], new_logits[:, i, :])

        max_matches = max_length - cur_len - 1
        if config.do_sample and candidate_logits is not None:
            valid_tokens, n_matches = _speculative_sampling(candidate_ids, candidate_logits, candidate_length,
                                                            new_logits, last_is_eos, max_matches)
        else:
            if config.do_sample:
                chosen = torch.multinomial(new_logits.softmax(dim=-1)[0], num_samples=1).squeeze(1)[None, :]
            else:
                chosen = new_logits.argmax(dim=-1)
            proposed = candidate_ids[:, cur_len:]
            n_matches = int(((proposed != chosen[:, :-1]).cumsum(dim=-1) < 1).sum())
            if last_is_eos and n_matches == candidate_length:
                n_matches -= 1  # nothing may follow an end-of-sequence candidate
            n_matches = min(n_matches, max_matches)
            valid_tokens = chosen[:, : n_matches + 1]

        input_ids = torch.cat([input_ids, valid_tokens], dim=-1)
        if streamer is not None:
            streamer.put(valid_tokens.cpu())
        new_len = input_ids.shape[-1]
        # The model's cache now covers the rejected candidates too; keep every token but the last.
        model_kwargs["past_key_values"] = crop_cache(outputs.past_key_values, new_len - 1)
        candidate_generator.update_candidate_strategy(input_ids, new_logits, n_matches)

        if scores is not None:
            scores += tuple(new_logits[:, i, :] for i in range(n_matches + 1))
        if attentions is not None or hidden_states is not None:
            first = not cache_given and (attentions if attentions is not None else hidden_states) == ()
            added = new_len if first else n_matches + 1
            if attentions is not None:
                attentions = _split_steps(attentions, outputs[prefix + "attentions"], cur_len, added, True)
                if cross_attentions is not None:
                    cross_attentions = _split_steps(cross_attentions, outputs["cross_attentions"], cur_len, added,
                                                    False)
            if hidden_states is not None:
                hidden_states = _split_steps(hidden_states, outputs[prefix + "hidden_states"], cur_len, added, False)

        if model_kwargs.get(mask_key) is not None:
            model_kwargs[mask_key] = _grow_mask(model_kwargs[mask_key], new_len)
        if model_kwargs.get("token_type_ids") is not None:
            model_kwargs["token_type_ids"] = _grow_token_types(model_kwargs["token_type_ids"], new_len)
        if bool(criteria(input_ids, scores).any()):
            break
    if streamer is not None:
        streamer.end()
    if not wanted:
        return input_ids
    past = model_kwargs.get("past_key_values")
    if is_encoder_decoder:
        encoder_outputs = model_kwargs["encoder_outputs"]
        return _outputs.GenerateEncoderDecoderOutput(
            sequences=input_ids, scores=scores,
            encoder_attentions=encoder_outputs.get("attentions") if config.output_attentions else None,
            encoder_hidden_states=encoder_outputs.get("hidden_states") if config.output_hidden_states else None,
            decoder_attentions=attentions, cross_attentions=cross_attentions, decoder_hidden_states=hidden_states,
            past_key_values=past,
        )
    return _outputs.GenerateDecoderOnlyOutput(sequences=input_ids, scores=scores, attentions=attentions,
                                              hidden_states=hidden_states, past_key_values=past)


def assisted_generate(model, assistant_model, input_ids, inputs_tensor, batch_size, config, processors, warpers,
                      criteria, streamer, model_kwargs, logits_processor, passed_config=None):
    """``generate``'s entry for ``assistant_model=`` or ``prompt_lookup_num_tokens=``: checks the settings,
    builds the candidate generator, runs :func:`assisted_decoding`.

    ``config`` holds the end and pad tokens the model's loop uses; ``passed_config`` (default ``config``) the
    ones the call gave, which the assistant reads as its own ``generate`` call would in 4.37 (an end token
    left at None falls back to the assistant's own generation_config, not the model's)."""
    check_assisted_settings(model, assistant_model, config, batch_size)
    if config.prompt_lookup_num_tokens is not None:
        generator = PromptLookupCandidateGenerator(num_output_tokens=config.prompt_lookup_num_tokens)
    else:
        generator = AssistedCandidateGenerator(input_ids, assistant_model,
                                               config if passed_config is None else passed_config,
                                               logits_processor, model_kwargs, inputs_tensor)
    return assisted_decoding(model, input_ids, generator, config, processors, warpers, criteria, streamer,
                             model_kwargs)


__all__ = [
    "CandidateGenerator",
    "AssistedCandidateGenerator",
    "PromptLookupCandidateGenerator",
    "assisted_decoding",
]

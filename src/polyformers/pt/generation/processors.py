"""Logits processors and warpers: (input_ids so far, scores of the next token) -> new scores, one row per
sequence. ``generate`` builds the list the generation settings ask for (``GenerationMixin._logits_processors``
and ``_logits_warpers``); callers may add their own through ``logits_processor=``."""

from __future__ import annotations

import inspect
import math
import weakref
from typing import Callable, Optional, Union

import torch
from torch import nn


def _as_list(token_ids) -> list[int]:
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


class LogitsProcessor:
    """Base class: turns next-token scores into new scores given the tokens so far."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class LogitsWarper(LogitsProcessor):
    """Base class of the processors that only reshape the sampling distribution (applied after the others)."""


# a processor's __call__ -> the names of its arguments after input_ids and scores (weakly: classes come and go)
_EXTRA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _extra_arguments(processor) -> list[str]:
    """The arguments ``processor.__call__`` takes after ``input_ids`` and ``scores``, read once per function (a
    signature costs ~40 us, paid by every processor at every decoding step otherwise)."""
    call = processor.__call__
    function = getattr(call, "__func__", None)
    if function is None:  # not a plain method: read it every time
        return list(inspect.signature(call).parameters)[2:]
    if function not in _EXTRA:
        _EXTRA[function] = list(inspect.signature(call).parameters)[2:]
    return _EXTRA[function]


class LogitsProcessorList(list):
    """Processors applied in order; extra keyword arguments reach those whose ``__call__`` takes them."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        for processor in self:
            extra = _extra_arguments(processor)
            if extra:
                missing = [name for name in extra if name not in kwargs]
                if missing:
                    raise ValueError(f"{type(processor).__name__} needs the arguments {missing}, which were not given")
                scores = processor(input_ids, scores, **kwargs)
            else:
                scores = processor(input_ids, scores)
        return scores


def leaves_scores(processor) -> bool:
    """Whether ``processor`` never changes the scores it is given (it returns new ones, or the same untouched):
    true of the classes here that say so themselves (``_leaves_scores``; a subclass, which may edit them, does
    not inherit it). Greedy decoding copies the model's logits only for processors that may edit them: a copy
    of the vocabulary's scores saved at every step (``tests/pt/test_generation.py`` checks the classes)."""
    return type(processor).__dict__.get("_leaves_scores", False)


def _ban(scores: torch.Tensor, token_ids) -> torch.Tensor:
    scores = scores.clone()
    scores[:, token_ids] = -math.inf
    return scores


def _force(scores: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    forced = torch.full_like(scores, -math.inf)
    forced[:, token_ids] = 0
    return forced


class TemperatureLogitsWarper(LogitsWarper):
    """Divides the scores by ``temperature``: below 1 sharpens the distribution, above 1 flattens it."""

    def __init__(self, temperature: float):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(
                f"temperature: expected a number > 0, given {temperature!r}; for greedy decoding set do_sample=False"
            )
        self.temperature = temperature

    def __call__(self, input_ids, scores):
        return scores / self.temperature


class TopKLogitsWarper(LogitsWarper):
    """Keeps the ``top_k`` highest scores (ties with the k-th included), the rest become ``filter_value``."""

    def __init__(self, top_k: int, filter_value: float = -math.inf, min_tokens_to_keep: int = 1):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k: expected an int > 0, given {top_k!r}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids, scores):
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        return scores.masked_fill(scores < kth, self.filter_value)


class TopPLogitsWarper(LogitsWarper):
    """Nucleus sampling: keeps the smallest set of most likely tokens whose probability reaches ``top_p``."""

    def __init__(self, top_p: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1):
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], given {top_p!r}")
        _check_min_tokens(min_tokens_to_keep)
        self.top_p = float(top_p)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        # Ascending order: the tokens to drop are a prefix whose total probability stays within 1 - top_p.
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - self.top_p)
        drop_sorted[..., -self.min_tokens_to_keep:] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


class TypicalLogitsWarper(LogitsWarper):
    """Locally typical sampling: keeps the tokens whose surprisal is closest to the distribution's entropy,
    until their probability reaches ``mass``."""

    def __init__(self, mass: float = 0.9, filter_value: float = -math.inf, min_tokens_to_keep: int = 1):
        self.mass = _check_cutoff("typical_p", mass, min_tokens_to_keep)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        log_probs = nn.functional.log_softmax(scores, dim=-1)
        entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)
        distance = torch.abs(-log_probs - entropy)
        sorted_distance, order = torch.sort(distance, descending=False)
        cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < self.mass).sum(dim=1).clamp_(max=sorted_distance.shape[-1] - 1)
        drop_sorted = sorted_distance > sorted_distance.gather(1, last.view(-1, 1))
        drop_sorted[..., : self.min_tokens_to_keep] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


def _check_min_tokens(min_tokens_to_keep) -> None:
    if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep: expected an int >= 1, given {min_tokens_to_keep!r}")


def _cut_below(scores: torch.Tensor, threshold: torch.Tensor, min_tokens_to_keep: int, filter_value: float):
    """Filters the tokens whose probability is below ``threshold``, except the ``min_tokens_to_keep`` best."""
    drop = scores.softmax(dim=-1) < threshold
    kth_best = torch.topk(scores, min(min_tokens_to_keep, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(drop & (scores < kth_best), filter_value)


def _check_cutoff(name: str, value, min_tokens_to_keep) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name}: expected a number in (0, 1), given {value!r}")
    _check_min_tokens(min_tokens_to_keep)
    return float(value)


class EpsilonLogitsWarper(LogitsWarper):
    """Epsilon sampling (Hewitt et al. 2022): drops the tokens whose probability is below ``epsilon``."""

    def __init__(self, epsilon: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1):
        self.epsilon = _check_cutoff("epsilon_cutoff", epsilon, min_tokens_to_keep)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        return _cut_below(scores, self.epsilon, self.min_tokens_to_keep, self.filter_value)


class EtaLogitsWarper(LogitsWarper):
    """Eta sampling (Hewitt et al. 2022): drops the tokens whose probability is below
    ``min(epsilon, sqrt(epsilon) * exp(-entropy))``, a cutoff that relaxes for uncertain distributions."""

    def __init__(self, epsilon: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1):
        self.epsilon = torch.tensor(_check_cutoff("eta_cutoff", epsilon, min_tokens_to_keep))
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        log_probs = scores - scores.logsumexp(dim=-1, keepdim=True)
        # Banned tokens (-inf) count 0 * log 0 = 0: a finite floor keeps their product 0, not NaN.
        entropy = -(log_probs.clamp(min=torch.finfo(scores.dtype).min) * log_probs.softmax(dim=-1)).sum(-1)
        epsilon = self.epsilon.to(scores.device)
        eta = torch.min(epsilon, torch.sqrt(epsilon) * torch.exp(-entropy))[..., None]
        return _cut_below(scores, eta, self.min_tokens_to_keep, self.filter_value)


class SequenceBiasLogitsProcessor(LogitsProcessor):
    """Adds ``bias`` to the score of a sequence's last token when the tokens so far end with the rest of it:
    ``{(token,): bias}`` always applies, ``{(a, b, c): bias}`` applies to ``c`` after ``a, b``."""

    def __init__(self, sequence_bias: dict):
        if not isinstance(sequence_bias, dict) or not sequence_bias:
            raise ValueError(f"sequence_bias: expected a non-empty dict, given {sequence_bias!r}")
        for ids, bias in sequence_bias.items():
            if not isinstance(ids, tuple) or not ids or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
            ):
                raise ValueError(f"sequence_bias: keys must be non-empty tuples of token ids, given {ids!r}")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)):
                raise ValueError(f"sequence_bias: values must be numbers, given {bias!r} for {ids!r}")
        self.sequence_bias = {ids: float(bias) for ids, bias in sequence_bias.items()}

    def __call__(self, input_ids, scores):
        vocab = scores.shape[-1]
        outside = [t for ids in self.sequence_bias for t in ids if t >= vocab]
        if outside:
            raise ValueError(f"sequence_bias: token ids {outside} are outside the model's vocabulary of {vocab}")
        single = torch.zeros(vocab, dtype=torch.float, device=scores.device)
        for ids, bias in self.sequence_bias.items():
            if len(ids) == 1:
                single[ids[0]] = bias
        bias = torch.zeros_like(scores) + single
        for ids, value in self.sequence_bias.items():
            if len(ids) == 1 or len(ids) > input_ids.shape[1]:
                continue
            prefix = torch.tensor(ids[:-1], dtype=input_ids.dtype, device=input_ids.device)
            matches = (input_ids[:, -len(prefix):] == prefix).all(dim=1)
            bias[:, ids[-1]] += torch.where(matches, torch.tensor(value, device=scores.device),
                                            torch.tensor(0.0, device=scores.device))
        return scores + bias


class EncoderRepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Makes the tokens of the encoder's input (the prompt, for a decoder-only model) more likely: positive
    scores are multiplied by ``penalty``, negative ones divided (a "hallucination penalty")."""

    def __init__(self, penalty: float, encoder_input_ids: torch.LongTensor):
        if isinstance(penalty, bool) or not isinstance(penalty, float) or not penalty > 0:
            raise ValueError(f"encoder_repetition_penalty: expected a float > 0, given {penalty!r}")
        self.penalty = 1 / penalty
        self.encoder_input_ids = encoder_input_ids

    def __call__(self, input_ids, scores):
        # The prompt rows index the first rows of scores (as in the reference, also with beams).
        seen = torch.gather(scores, 1, self.encoder_input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, self.encoder_input_ids, seen)


class EncoderNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Bans any token that would complete an n-gram of size ``encoder_ngram_size`` found in the encoder's
    input (of the row's prompt: beams and samples of one prompt share it)."""

    def __init__(self, encoder_ngram_size: int, encoder_input_ids: torch.LongTensor):
        if isinstance(encoder_ngram_size, bool) or not isinstance(encoder_ngram_size, int) or encoder_ngram_size <= 0:
            raise ValueError(f"encoder_no_repeat_ngram_size: expected an int > 0, given {encoder_ngram_size!r}")
        self.ngram_size = n = encoder_ngram_size
        if encoder_input_ids.dim() == 1:
            encoder_input_ids = encoder_input_ids[None]
        self.batch_size = encoder_input_ids.shape[0]
        self.followers: list[dict[tuple, list[int]]] = []
        for tokens in encoder_input_ids.tolist():
            followers: dict[tuple, list[int]] = {}
            for start in range(len(tokens) - n + 1):
                followers.setdefault(tuple(tokens[start : start + n - 1]), []).append(tokens[start + n - 1])
            self.followers.append(followers)

    def __call__(self, input_ids, scores):
        rows = scores.shape[0]
        per_prompt = rows // self.batch_size
        length = input_ids.shape[-1]
        if length < self.ngram_size - 1:
            return scores
        scores = scores.clone()
        for row, tokens in enumerate(input_ids.tolist()):
            banned = self.followers[row // per_prompt].get(tuple(tokens[length - self.ngram_size + 1 :]), [])
            scores[row, banned] = -math.inf
        return scores


class ExponentialDecayLengthPenalty(LogitsProcessor):
    """After ``start_index`` generated tokens, raises the end-of-sequence scores by a factor that grows
    exponentially (``decay_factor ** tokens past the start``), so long sequences end sooner."""

    def __init__(self, exponential_decay_length_penalty, eos_token_id, input_ids_seq_length: int):
        value = exponential_decay_length_penalty
        if (
            not isinstance(value, (tuple, list)) or len(value) != 2 or isinstance(value[0], bool)
            or not isinstance(value[0], int) or isinstance(value[1], bool) or not isinstance(value[1], (int, float))
        ):
            raise ValueError(
                f"exponential_decay_length_penalty: expected (start_index: int, decay_factor: float), given {value!r}"
            )
        if eos_token_id is None:
            raise ValueError("eos_token_id: exponential_decay_length_penalty needs an end-of-sequence token, given None")
        self.regulation_start = value[0] + input_ids_seq_length
        self.regulation_factor = value[1]
        self.eos_token_id = _as_list(eos_token_id)

    def __call__(self, input_ids, scores):
        length = input_ids.shape[-1]
        if length <= self.regulation_start:
            return scores
        scores = scores.clone()
        growth = pow(self.regulation_factor, length - self.regulation_start) - 1
        for token in self.eos_token_id:
            scores[:, token] = scores[:, token] + torch.abs(scores[:, token]) * growth
        return scores


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Makes every token already in the sequence less likely: positive scores are divided by ``penalty``,
    negative ones multiplied (CTRL, Keskar et al. 2019)."""

    def __init__(self, penalty: float):
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"repetition_penalty: expected a number > 0, given {penalty!r}")
        self.penalty = penalty

    def __call__(self, input_ids, scores):
        seen = torch.gather(scores, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, input_ids, seen)


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Bans any token that would complete an n-gram of size ``ngram_size`` already in the sequence (the
    prompt included)."""

    def __init__(self, ngram_size: int):
        if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"no_repeat_ngram_size: expected an int > 0, given {ngram_size!r}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids, scores):
        n = self.ngram_size
        length = input_ids.shape[-1]
        if length + 1 < n:
            return scores
        scores = scores.clone()
        for row, tokens in enumerate(input_ids.tolist()):
            followers: dict[tuple, list[int]] = {}
            for start in range(length - n + 1):
                followers.setdefault(tuple(tokens[start : start + n - 1]), []).append(tokens[start + n - 1])
            banned = followers.get(tuple(tokens[length - n + 1 :]), [])
            scores[row, banned] = -math.inf
        return scores


class NoBadWordsLogitsProcessor(LogitsProcessor):
    """Never completes one of ``bad_words_ids`` (lists of token ids): a one-token word is always banned, a
    longer one when the sequence ends with all of it but its last token. End-of-sequence tokens alone are
    never banned, so generation can still stop."""

    def __init__(self, bad_words_ids: list[list[int]], eos_token_id: Union[int, list[int], None] = None):
        if (
            not isinstance(bad_words_ids, list) or not bad_words_ids
            or not all(isinstance(w, list) and w and all(isinstance(t, int) and t >= 0 for t in w) for w in bad_words_ids)
        ):
            raise ValueError(f"bad_words_ids: expected a non-empty list of non-empty lists of token ids, given {bad_words_ids!r}")
        eos = _as_list(eos_token_id)
        words = [w for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
        self.single = sorted({w[0] for w in words if len(w) == 1})
        self.multi = [w for w in words if len(w) > 1]

    def __call__(self, input_ids, scores):
        vocab = scores.shape[-1]
        too_big = [t for w in [[t] for t in self.single] + self.multi for t in w if t >= vocab]
        if too_big:
            raise ValueError(f"bad_words_ids: token ids {too_big} are outside the model's vocabulary of {vocab}")
        banned = torch.zeros_like(scores, dtype=torch.bool)
        banned[:, self.single] = True
        for word in self.multi:
            prefix = word[:-1]
            if len(word) > input_ids.shape[1]:
                continue
            tail = torch.tensor(prefix, dtype=input_ids.dtype, device=input_ids.device)
            banned[:, word[-1]] |= (input_ids[:, -len(prefix):] == tail).all(dim=1)
        return scores.masked_fill(banned, -math.inf)


class MinLengthLogitsProcessor(LogitsProcessor):
    """Bans the end-of-sequence tokens while the whole sequence (prompt included) is shorter than
    ``min_length``."""

    _leaves_scores = True  # see leaves_scores

    def __init__(self, min_length: int, eos_token_id: Union[int, list[int]]):
        if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
            raise ValueError(f"min_length: expected an int >= 0, given {min_length!r}")
        self.min_length = min_length
        self.eos_token_id = _as_list(eos_token_id)

    def __call__(self, input_ids, scores):
        return _ban(scores, self.eos_token_id) if input_ids.shape[-1] < self.min_length else scores


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Bans the end-of-sequence tokens until ``min_new_tokens`` tokens follow the prompt."""

    _leaves_scores = True  # see leaves_scores

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id: Union[int, list[int]]):
        for name, value in (("prompt_length_to_skip", prompt_length_to_skip), ("min_new_tokens", min_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, given {value!r}")
        self.prompt_length_to_skip = prompt_length_to_skip
        self.min_new_tokens = min_new_tokens
        self.eos_token_id = _as_list(eos_token_id)

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] - self.prompt_length_to_skip < self.min_new_tokens:
            return _ban(scores, self.eos_token_id)
        return scores


class ForcedBOSTokenLogitsProcessor(LogitsProcessor):
    """Forces ``bos_token_id`` as the first generated token (of an encoder-decoder's decoder)."""

    _leaves_scores = True  # see leaves_scores

    def __init__(self, bos_token_id: int):
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids, scores):
        return _force(scores, [self.bos_token_id]) if input_ids.shape[-1] == 1 else scores


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    """Forces an end-of-sequence token as the last token when ``max_length`` is reached."""

    _leaves_scores = True  # see leaves_scores

    def __init__(self, max_length: int, eos_token_id: Union[int, list[int]]):
        self.max_length = max_length
        self.eos_token_id = _as_list(eos_token_id)

    def __call__(self, input_ids, scores):
        return _force(scores, self.eos_token_id) if input_ids.shape[-1] == self.max_length - 1 else scores


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Never generates the tokens of ``suppress_tokens``."""

    _leaves_scores = True  # see leaves_scores

    def __init__(self, suppress_tokens):
        self.suppress_tokens = list(suppress_tokens)

    def __call__(self, input_ids, scores):
        return _ban(scores, self.suppress_tokens)


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """Bans ``begin_suppress_tokens`` at the first generated position only."""

    _leaves_scores = True  # see leaves_scores

    def __init__(self, begin_suppress_tokens, begin_index: int):
        self.begin_suppress_tokens = list(begin_suppress_tokens)
        self.begin_index = begin_index

    def __call__(self, input_ids, scores):
        return _ban(scores, self.begin_suppress_tokens) if input_ids.shape[1] == self.begin_index else scores


class PrefixConstrainedLogitsProcessor(LogitsProcessor):
    """Allows only the tokens ``prefix_allowed_tokens_fn(batch_id, tokens_so_far)`` returns."""

    def __init__(self, prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]], num_beams: int):
        self.prefix_allowed_tokens_fn = prefix_allowed_tokens_fn
        self.num_beams = num_beams

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, -math.inf)
        for batch_id, beams in enumerate(input_ids.view(-1, self.num_beams, input_ids.shape[-1])):
            for beam_id, tokens in enumerate(beams):
                allowed = self.prefix_allowed_tokens_fn(batch_id, tokens)
                if len(allowed) == 0:
                    raise ValueError(
                        f"prefix_allowed_tokens_fn returned no allowed token for batch index {batch_id}: the "
                        "constraint cannot be satisfied"
                    )
                mask[batch_id * self.num_beams + beam_id, allowed] = 0
        return scores + mask


class HammingDiversityLogitsProcessor(LogitsProcessor):
    """Diverse beam search (Vijayakumar et al. 2016): in group beam search, lowers the scores of the tokens
    that earlier groups chose at this step, by ``diversity_penalty`` per beam that chose it."""

    def __init__(self, diversity_penalty: float, num_beams: int, num_beam_groups: int):
        if isinstance(diversity_penalty, bool) or not isinstance(diversity_penalty, float) or not diversity_penalty > 0:
            raise ValueError(f"diversity_penalty: expected a float > 0, given {diversity_penalty!r}")
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 2:
            raise ValueError(f"num_beams: diverse beam search needs an int > 1, given {num_beams!r}")
        if isinstance(num_beam_groups, bool) or not isinstance(num_beam_groups, int) or not 2 <= num_beam_groups <= num_beams:
            raise ValueError(
                f"num_beam_groups: diverse beam search needs an int in [2, num_beams={num_beams}], given {num_beam_groups!r}"
            )
        self.diversity_penalty = diversity_penalty
        self.num_beams = num_beams
        self.group_size = num_beams // num_beam_groups

    def __call__(self, input_ids, scores, current_tokens, beam_group_idx):
        """``current_tokens``: this step's tokens of every beam (batch * num_beams), filled for the groups before
        ``beam_group_idx``; ``scores``: the rows of this group (batch * group size)."""
        start = beam_group_idx * self.group_size
        if start == 0:
            return scores
        scores = scores.clone()
        vocab = scores.shape[-1]
        for b in range(current_tokens.shape[0] // self.num_beams):
            earlier = current_tokens[b * self.num_beams : b * self.num_beams + start]
            counts = torch.bincount(earlier, minlength=vocab).to(scores.device)
            scores[b * self.group_size : (b + 1) * self.group_size] -= self.diversity_penalty * counts
        return scores


class InfNanRemoveLogitsProcessor(LogitsProcessor):
    """Replaces NaN by 0 and infinities by the dtype's extremes, so sampling never fails on them."""

    def __call__(self, input_ids, scores):
        info = torch.finfo(scores.dtype)
        scores = torch.nan_to_num(scores, nan=0.0, posinf=info.max, neginf=info.min)
        return scores


class LogitNormalization(LogitsWarper):
    """Log-softmax, so that scores are log-probabilities again after the other processors."""

    def __call__(self, input_ids, scores):
        return scores.log_softmax(dim=-1)


class ForceTokensLogitsProcessor(LogitsProcessor):
    """Forces chosen tokens at chosen positions: ``force_token_map`` is a list of ``[index, token_id]``
    pairs, where ``index`` is the length of the sequence (prompt or decoder start included) when the token
    is chosen; a ``None`` token leaves that position free."""

    _leaves_scores = True  # see leaves_scores

    def __init__(self, force_token_map):
        try:
            self.force_token_map = dict(force_token_map)
        except (TypeError, ValueError):
            raise ValueError(
                f"forced_decoder_ids: expected a list of [index, token_id] pairs, given {force_token_map!r}"
            ) from None

    def __call__(self, input_ids, scores):
        token = self.force_token_map.get(input_ids.shape[-1])
        if token is None:
            return scores
        return _force(scores, [token])


class UnbatchedClassifierFreeGuidanceLogitsProcessor(LogitsProcessor):
    """Classifier-free guidance for decoder-only models (Sanchez et al. 2023): the next-token log-probs are
    pushed away from those of an unconditional (or negative) prompt, ``uncond + guidance_scale * (cond -
    uncond)``. The unconditional prompt is ``unconditional_ids`` (default: the last token of the prompt); it
    is run through ``model`` alongside generation, one token per step, with its own cache when ``use_cache``.
    A scale of 1 returns the log-probs unchanged."""

    def __init__(self, guidance_scale: float, model, unconditional_ids: Optional[torch.LongTensor] = None,
                 unconditional_attention_mask: Optional[torch.LongTensor] = None, use_cache: Optional[bool] = True):
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale: expected a number, given {guidance_scale!r}")
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            # The reference runs the unconditional pass as model(input_ids, attention_mask=...), which gives
            # an encoder-decoder model no decoder input: it fails at the first step. Fail before starting.
            raise ValueError(
                f"guidance_scale: classifier-free guidance runs the unconditional prompt as a decoder-only model, "
                f"which {type(model).__name__} (an encoder-decoder model) is not; given guidance_scale={guidance_scale}"
            )
        for name, value in (("negative_prompt_ids", unconditional_ids),
                            ("negative_prompt_attention_mask", unconditional_attention_mask)):
            if value is not None and (not isinstance(value, torch.Tensor) or value.dim() != 2):
                raise ValueError(f"{name}: expected a 2-D tensor (batch, sequence), given {value!r}")
        self.guidance_scale = guidance_scale
        self.model = model
        self.unconditional_context = {
            "input_ids": unconditional_ids, "attention_mask": unconditional_attention_mask, "use_cache": use_cache,
            "past_key_values": None, "first_pass": True,
        }

    def get_unconditional_logits(self, input_ids):
        context = self.unconditional_context
        if context["first_pass"]:
            if context["input_ids"] is None:
                context["input_ids"] = input_ids[:, -1:]
            if context["attention_mask"] is None:
                context["attention_mask"] = torch.ones_like(context["input_ids"], dtype=torch.long)
            ids, mask = context["input_ids"], context["attention_mask"]
            context["first_pass"] = False
        else:
            # The token generated last is appended; with a cache only it is fed.
            mask = torch.cat([context["attention_mask"], torch.ones_like(input_ids[:, -1:], dtype=torch.long)], dim=1)
            ids = input_ids[:, -1:] if context["use_cache"] else torch.cat([context["input_ids"], input_ids[:, -1:]], 1)
            context["input_ids"], context["attention_mask"] = ids, mask
        out = self.model(ids, attention_mask=mask, use_cache=context["use_cache"],
                         past_key_values=context["past_key_values"])
        context["past_key_values"] = out.get("past_key_values", None)
        return out.logits

    def __call__(self, input_ids, scores):
        scores = nn.functional.log_softmax(scores, dim=-1)
        if self.guidance_scale == 1:
            return scores
        logits = self.get_unconditional_logits(input_ids)
        if logits.shape[0] not in (1, scores.shape[0]):
            raise ValueError(
                f"negative_prompt_ids: expected 1 or {scores.shape[0]} rows (one per sequence generated), given "
                f"{logits.shape[0]}"
            )
        unconditional = nn.functional.log_softmax(logits[:, -1].to(scores.dtype), dim=-1)
        return self.guidance_scale * (scores - unconditional) + unconditional

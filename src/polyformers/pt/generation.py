"""Text generation for PyTorch models: the decoding loops, logits processors and stopping criteria.

The loops live here, not in the models (DESIGN principle 6). A model takes part by inheriting
:class:`GenerationMixin` (listed before its ``PreTrainedModel`` base, so that ``from_pretrained`` also reads
``generation_config.json``) and implementing ``prepare_inputs_for_generation``: given every token so far and
the model keyword arguments (cache, attention mask, ...), return the inputs of the next forward call, which
is the place to cut off what the cache already holds and to derive position ids from a left-padded mask.

One step of every strategy is: run the model on the new tokens, take the last position's logits, pass them
through the logits processors (and, when sampling, the warpers), choose tokens, append them, update the
model keyword arguments (the cache the model returned, one more mask column), check the stopping criteria.

Encoder-decoder models (``config.is_encoder_decoder``) go through the same ``generate``: the encoder
(``get_encoder()``) runs once, its output travels in ``encoder_outputs``, and decoding starts from
``decoder_start_token_id``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
import warnings
from typing import Callable, Optional, Union

import torch
from torch import nn

from .. import outputs as _outputs
from ..generation_config import GENERATION_CONFIG_NAME, UNSUPPORTED, FIELDS, GenerationConfig
from .cache import StaticCache

logger = logging.getLogger("polyformers")

GenerateDecoderOnlyOutput = _outputs.GenerateDecoderOnlyOutput
GenerateEncoderDecoderOutput = _outputs.GenerateEncoderDecoderOutput
GenerateBeamDecoderOnlyOutput = _outputs.GenerateBeamDecoderOnlyOutput
GenerateBeamEncoderDecoderOutput = _outputs.GenerateBeamEncoderDecoderOutput
# The reference's older names for the same records, one per strategy.
GreedySearchDecoderOnlyOutput = SampleDecoderOnlyOutput = GenerateDecoderOnlyOutput
GreedySearchEncoderDecoderOutput = SampleEncoderDecoderOutput = GenerateEncoderDecoderOutput
BeamSearchDecoderOnlyOutput = BeamSampleDecoderOnlyOutput = GenerateBeamDecoderOnlyOutput
BeamSearchEncoderDecoderOutput = BeamSampleEncoderDecoderOutput = GenerateBeamEncoderDecoderOutput


def _as_list(token_ids) -> list[int]:
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


# ===================================================================================================
# Logits processors: (input_ids so far, scores of the next token) -> new scores, one row per sequence.


class LogitsProcessor:
    """Base class: turns next-token scores into new scores given the tokens so far."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class LogitsWarper(LogitsProcessor):
    """Base class of the processors that only reshape the sampling distribution (applied after the others)."""


class LogitsProcessorList(list):
    """Processors applied in order; extra keyword arguments reach those whose ``__call__`` takes them."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        for processor in self:
            extra = list(inspect.signature(processor.__call__).parameters)[2:]
            if extra:
                missing = [name for name in extra if name not in kwargs]
                if missing:
                    raise ValueError(f"{type(processor).__name__} needs the arguments {missing}, which were not given")
                scores = processor(input_ids, scores, **kwargs)
            else:
                scores = processor(input_ids, scores)
        return scores


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
        if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"min_tokens_to_keep: expected an int >= 1, given {min_tokens_to_keep!r}")
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
        if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass < 1:
            raise ValueError(f"typical_p: expected a number in (0, 1), given {mass!r}")
        if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"min_tokens_to_keep: expected an int >= 1, given {min_tokens_to_keep!r}")
        self.mass = float(mass)
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


def _cut_below(scores: torch.Tensor, threshold: torch.Tensor, min_tokens_to_keep: int, filter_value: float):
    """Filters the tokens whose probability is below ``threshold``, except the ``min_tokens_to_keep`` best."""
    drop = scores.softmax(dim=-1) < threshold
    kth_best = torch.topk(scores, min(min_tokens_to_keep, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(drop & (scores < kth_best), filter_value)


def _check_cutoff(name: str, value, min_tokens_to_keep) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name}: expected a number in (0, 1), given {value!r}")
    if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep: expected an int >= 1, given {min_tokens_to_keep!r}")
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

    def __init__(self, min_length: int, eos_token_id: Union[int, list[int]]):
        if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
            raise ValueError(f"min_length: expected an int >= 0, given {min_length!r}")
        self.min_length = min_length
        self.eos_token_id = _as_list(eos_token_id)

    def __call__(self, input_ids, scores):
        return _ban(scores, self.eos_token_id) if input_ids.shape[-1] < self.min_length else scores


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Bans the end-of-sequence tokens until ``min_new_tokens`` tokens follow the prompt."""

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

    def __init__(self, bos_token_id: int):
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids, scores):
        return _force(scores, [self.bos_token_id]) if input_ids.shape[-1] == 1 else scores


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    """Forces an end-of-sequence token as the last token when ``max_length`` is reached."""

    def __init__(self, max_length: int, eos_token_id: Union[int, list[int]]):
        self.max_length = max_length
        self.eos_token_id = _as_list(eos_token_id)

    def __call__(self, input_ids, scores):
        return _force(scores, self.eos_token_id) if input_ids.shape[-1] == self.max_length - 1 else scores


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Never generates the tokens of ``suppress_tokens``."""

    def __init__(self, suppress_tokens):
        self.suppress_tokens = list(suppress_tokens)

    def __call__(self, input_ids, scores):
        return _ban(scores, self.suppress_tokens)


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """Bans ``begin_suppress_tokens`` at the first generated position only."""

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


# ===================================================================================================
# Stopping criteria: (input_ids, scores) -> one bool per sequence ("this one is done"), or one bool for all.


class StoppingCriteria:
    """Base class. ``__call__`` returns a bool tensor of shape (batch,), or a plain bool for every sequence."""

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


def _every_row(input_ids: torch.Tensor, done: bool) -> torch.Tensor:
    return torch.full((input_ids.shape[0],), bool(done), dtype=torch.bool, device=input_ids.device)


class MaxLengthCriteria(StoppingCriteria):
    """Done when sequences (prompt included) reach ``max_length`` tokens."""

    def __init__(self, max_length: int, max_position_embeddings: Optional[int] = None):
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings
        self._warned = False

    def __call__(self, input_ids, scores, **kwargs):
        length = input_ids.shape[-1]
        done = length >= self.max_length
        limit = self.max_position_embeddings
        if limit is not None and not done and length >= limit and not self._warned:
            self._warned = True
            logger.warning(
                "generation goes past the model's max_position_embeddings (%d); the model may fail or degrade", limit
            )
        return _every_row(input_ids, done)


class MaxTimeCriteria(StoppingCriteria):
    """Done when ``max_time`` seconds have passed since ``initial_timestamp`` (default: creation)."""

    def __init__(self, max_time: float, initial_timestamp: Optional[float] = None):
        self.max_time = max_time
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids, scores, **kwargs):
        return _every_row(input_ids, time.time() - self.initial_timestamp > self.max_time)


class EosTokenCriteria(StoppingCriteria):
    """A sequence is done once its last token is one of ``eos_token_id``."""

    def __init__(self, eos_token_id: Union[int, list[int]]):
        self.eos_token_id = torch.tensor(_as_list(eos_token_id))

    def __call__(self, input_ids, scores, **kwargs):
        return torch.isin(input_ids[:, -1], self.eos_token_id.to(input_ids.device))


class StopStringCriteria(StoppingCriteria):
    """A sequence is done when its text ends with one of ``stop_strings``: the string may start in the middle
    of an earlier token and end in the middle of the last token, but it must end inside the last token.

    The text of each token is measured once, by decoding it after a fixed prefix with the tokenizer, so
    tokenizers that mark word starts (``Ġ``, ``▁``) or continuations (``##``) are handled alike.
    """

    _PREFIX = "abcdef"

    def __init__(self, tokenizer, stop_strings: Union[str, list[str]]):
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(f"stop_strings: expected a non-empty string or list of them, given {stop_strings!r}")
        self.stop_strings = tuple(stop_strings)
        self.token_text = self._token_texts(tokenizer)
        self.window = max(len(s) for s in self.stop_strings)

    @classmethod
    def _token_texts(cls, tokenizer) -> dict[int, str]:
        prefix_ids = tokenizer(cls._PREFIX, add_special_tokens=False)["input_ids"]
        prefix = tokenizer.convert_ids_to_tokens(prefix_ids)
        texts = {}
        for token, index in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string(prefix + [token])
            start = text.find(cls._PREFIX)
            texts[index] = text[start + len(cls._PREFIX):] if start >= 0 else text
        return texts

    def __call__(self, input_ids, scores, **kwargs):
        done = []
        for tokens in input_ids[:, -self.window:].tolist():
            pieces = [self.token_text.get(t, "") for t in tokens]
            text = "".join(pieces)
            # The stop string must end within the last token's text: after its first character.
            first_end = len(text) - len(pieces[-1]) + 1
            done.append(any(
                text.find(stop, 0, end) >= 0 and text[:end].endswith(stop)
                for stop in self.stop_strings
                for end in range(max(first_end, len(stop)), len(text) + 1)
            ))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class StoppingCriteriaList(list):
    """Criteria combined: a sequence is done when any criterion says so."""

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        done = _every_row(input_ids, False)
        for criterion in self:
            result = criterion(input_ids, scores, **kwargs)
            if isinstance(result, torch.Tensor) and result.dim() > 0:
                done = done | result.to(device=done.device, dtype=torch.bool)
            else:
                done = done | bool(result)
        return done

    @property
    def max_length(self) -> Optional[int]:
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None


# ===================================================================================================
# Beam search bookkeeping


class _Hypotheses:
    """The ``num_beams`` best finished sequences of one prompt, scored by sum of log-probs / length**penalty."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping, max_length: Optional[int]):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.max_length = max_length
        self.beams: list[tuple[float, torch.Tensor, Optional[tuple]]] = []
        self.worst_score = 1e9

    def add(self, tokens: torch.Tensor, sum_logprobs: float, beam_indices: Optional[tuple], generated_len: int):
        score = sum_logprobs / (generated_len ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, tokens, beam_indices))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int, prompt_len: int) -> bool:
        """True when no running beam can beat the worst kept hypothesis (``early_stopping`` decides how
        optimistic that estimate is: True stops at once, "never" assumes the longest possible sequence)."""
        if len(self.beams) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        length = cur_len - prompt_len
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            if self.max_length <= prompt_len:
                raise ValueError(f"max_length ({self.max_length}) must exceed the prompt length ({prompt_len})")
            length = self.max_length - prompt_len
        return self.worst_score >= best_sum_logprobs / length ** self.length_penalty


class _BeamScorer:
    """Keeps, for each prompt, the running beams and the finished hypotheses."""

    def __init__(self, batch_size, num_beams, length_penalty, early_stopping, num_return_sequences, max_length):
        self.num_beams = num_beams
        self.keep = num_return_sequences
        self.hypotheses = [_Hypotheses(num_beams, length_penalty, early_stopping, max_length) for _ in range(batch_size)]
        self.done = [False] * batch_size

    @property
    def is_done(self) -> bool:
        return all(self.done)

    def process(self, input_ids, scores, tokens, indices, pad_token_id, eos_token_id, beam_indices, prompt_len):
        """From the 2 * num_beams (or more) best candidates of each prompt, sorted, keep num_beams running
        beams; candidates ending with an end-of-sequence token among the first num_beams become hypotheses."""
        cur_len = input_ids.shape[-1] + 1
        batch_size = len(self.hypotheses)
        beams = self.num_beams
        next_scores = torch.zeros((batch_size, beams), dtype=scores.dtype, device=input_ids.device)
        next_tokens = torch.zeros((batch_size, beams), dtype=tokens.dtype, device=input_ids.device)
        next_indices = torch.zeros((batch_size, beams), dtype=indices.dtype, device=input_ids.device)
        eos = _as_list(eos_token_id)
        for b in range(batch_size):
            if self.done[b]:
                if pad_token_id is None:
                    raise ValueError("pad_token_id: needed to fill finished beams, given None")
                next_tokens[b] = pad_token_id
                continue
            kept = 0
            for rank, (token, score, index) in enumerate(zip(tokens[b].tolist(), scores[b], indices[b].tolist())):
                source = b * beams + index
                if token in eos:
                    if rank >= beams:
                        continue  # an ending less likely than num_beams continuations does not finish
                    trail = beam_indices[source] + (source,) if beam_indices is not None else None
                    self.hypotheses[b].add(input_ids[source].clone(), score.item(), trail, cur_len - prompt_len)
                else:
                    next_scores[b, kept], next_tokens[b, kept], next_indices[b, kept] = score, token, source
                    kept += 1
                if kept == beams:
                    break
            if kept < beams:
                raise ValueError(f"too many end-of-sequence candidates among {tokens[b].tolist()} to keep {beams} beams")
            self.done[b] = self.hypotheses[b].is_done(scores[b].max().item(), cur_len, prompt_len)
        return next_scores.view(-1), next_tokens.view(-1), next_indices.view(-1)

    def finalize(self, input_ids, beam_scores, pad_token_id, eos_token_id, max_length, beam_indices, prompt_len):
        """Add the running beams of unfinished prompts as hypotheses; return the ``keep`` best of each prompt
        (sequences padded to a common length, an end-of-sequence token after those that stopped early),
        their scores and their beam trails."""
        for b, hypotheses in enumerate(self.hypotheses):
            if self.done[b]:
                continue
            for i in range(b * self.num_beams, (b + 1) * self.num_beams):
                trail = beam_indices[i] if beam_indices is not None else None
                hypotheses.add(input_ids[i], beam_scores[i].item(), trail, input_ids.shape[-1] - prompt_len)
        return _assemble([h.beams for h in self.hypotheses], self.keep, input_ids, pad_token_id, eos_token_id,
                         max_length)


def _assemble(candidates_per_prompt, keep, input_ids, pad_token_id, eos_token_id, max_length):
    """The ``keep`` best finished hypotheses ``(score, tokens, trail)`` of each prompt as one padded tensor
    (an end-of-sequence token after those that stopped early), with their scores and beam trails."""
    best, best_scores = [], []
    for candidates in candidates_per_prompt:
        ranked = sorted(candidates, key=lambda h: h[0])  # stable: among ties the latest wins
        for _ in range(keep):
            best.append(ranked.pop())
    lengths = [len(h[1]) for h in best]
    width = max(lengths) + 1
    if max_length is not None:
        width = min(width, max_length)
    sequences = input_ids.new_empty((len(best), width))
    if min(lengths) != max(lengths):
        if pad_token_id is None:
            raise ValueError("pad_token_id: needed to pad beam search results of different lengths, given None")
        sequences.fill_(pad_token_id)
    trails = None
    if best and best[0][2] is not None:
        trails = input_ids.new_full((len(best), width), -1)
    eos = _as_list(eos_token_id)
    for i, (score, tokens, trail) in enumerate(best):
        sequences[i, : lengths[i]] = tokens
        if trails is not None:
            trails[i, : len(trail)] = torch.tensor(trail)
        if lengths[i] < width:
            sequences[i, lengths[i]] = eos[0]
        best_scores.append(score)
    scores = torch.tensor(best_scores, dtype=torch.float32, device=input_ids.device)
    return sequences, scores, trails


# ===================================================================================================
# The mixin


def reorder_cache(past_key_values, beam_idx: torch.Tensor):
    """Reorder a cache along the batch so that row i continues beam ``beam_idx[i]``: a ``Cache`` object
    reorders itself, a legacy tuple (layers of key/value tensors) is gathered tensor by tensor. A model with
    its own ``_reorder_cache`` uses that instead."""
    if hasattr(past_key_values, "reorder_cache"):
        result = past_key_values.reorder_cache(beam_idx)
        return past_key_values if result is None else result
    return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past_key_values)


def _submodule(model, name: str):
    """``model.<name>``, or the same attribute of its base model (the encoder of a seq2seq model)."""
    found = getattr(model, name, None)
    if found is None:
        base = getattr(model, getattr(model, "base_model_prefix", ""), None) if getattr(model, "base_model_prefix", "") else None
        found = getattr(base, name, None) if base is not None else None
    return found


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
        warpers = self._logits_warpers(config) if config.do_sample else LogitsProcessorList()
        if assistant_model is not None or config.prompt_lookup_num_tokens is not None:
            from .assisted import assisted_generate

            return assisted_generate(self, assistant_model, input_ids, inputs_tensor, batch_size, config, processors,
                                     warpers, criteria, streamer, model_kwargs, logits_processor)
        if config.constraints is not None or config.force_words_ids is not None:
            from .constraints import constrained_beam_search

            return constrained_beam_search(self, input_ids, config, processors, criteria, batch_size, model_kwargs)
        if _is_contrastive(config):
            return self._contrastive_search(input_ids, config, processors, criteria, streamer, model_kwargs)
        if beam and config.num_beam_groups > 1:
            return self._group_beam_search(input_ids, config, processors, criteria, batch_size, model_kwargs)
        if beam:
            return self._beam_search(input_ids, config, processors, warpers, criteria, batch_size, model_kwargs)
        return self._sample(input_ids, config, processors, warpers, criteria, streamer, model_kwargs)

    # -- preparation ----------------------------------------------------------------------------------

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
        config = copy.deepcopy(generation_config)
        model_kwargs = config.update(**kwargs)
        config.validate()
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
        for mine in processors:
            for theirs in custom:
                if type(theirs) is type(mine):
                    raise ValueError(
                        f"logits_processor: a {type(theirs).__name__} was passed, but the generation settings already "
                        "create one; change the setting instead of passing the processor"
                    )
        processors.extend(custom)
        if config.renormalize_logits:
            processors.append(LogitNormalization())
        return processors

    @staticmethod
    def _logits_warpers(config) -> LogitsProcessorList:
        # Beam sampling must keep at least one token besides the end-of-sequence ones, so beams can continue.
        keep = (len(_as_list(config.eos_token_id)) + 1 if isinstance(config.eos_token_id, list) else 2) \
            if config.num_beams > 1 else 1
        warpers = LogitsProcessorList()
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            warpers.append(TopKLogitsWarper(config.top_k, min_tokens_to_keep=keep))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(config.top_p, min_tokens_to_keep=keep))
        if config.typical_p is not None and config.typical_p < 1.0:
            warpers.append(TypicalLogitsWarper(config.typical_p, min_tokens_to_keep=keep))
        if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
            warpers.append(EpsilonLogitsWarper(config.epsilon_cutoff, min_tokens_to_keep=keep))
        if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
            warpers.append(EtaLogitsWarper(config.eta_cutoff, min_tokens_to_keep=keep))
        if config.renormalize_logits:
            warpers.append(LogitNormalization())
        return warpers

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

    def _update_model_kwargs(self, outputs, model_kwargs: dict, is_encoder_decoder: bool) -> dict:
        """After a step: keep the cache the model returned and grow the masks by the new token."""
        model_kwargs["past_key_values"] = outputs.get("past_key_values") if hasattr(outputs, "get") else None
        if "token_type_ids" in model_kwargs:
            types = model_kwargs["token_type_ids"]
            model_kwargs["token_type_ids"] = torch.cat([types, types[:, -1:]], dim=-1)
        name = "decoder_attention_mask" if is_encoder_decoder else "attention_mask"
        mask = model_kwargs.get(name)
        if mask is not None:
            model_kwargs[name] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        positions = model_kwargs.get("cache_position")
        if positions is not None:
            # With a cache only the new token is fed; without one the whole sequence is, every step.
            following = positions[-1:] + 1
            model_kwargs["cache_position"] = following if model_kwargs["past_key_values"] is not None else \
                torch.cat([positions, following])
        return model_kwargs

    def _step(self, input_ids, model_kwargs, config):
        inputs = self.prepare_inputs_for_generation(input_ids, **model_kwargs)
        outputs = self(**inputs, return_dict=True, output_attentions=config.output_attentions,
                       output_hidden_states=config.output_hidden_states)
        # A copy in float32: processors edit it, and half-precision scores would round the log-probs.
        logits = outputs.logits[:, -1, :].to(dtype=torch.float32, copy=True)
        return outputs, logits

    # -- decoding strategies --------------------------------------------------------------------------

    def _sample(self, input_ids, config, processors, warpers, criteria, streamer, model_kwargs):
        """Greedy decoding (argmax) or, with ``do_sample``, multinomial sampling, one token per step."""
        is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        record = _Recorder(config, model_kwargs, is_encoder_decoder)
        pad = config.pad_token_id
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        while True:
            outputs, logits = self._step(input_ids, model_kwargs, config)
            scores = processors(input_ids, logits)
            if config.do_sample:
                scores = warpers(input_ids, scores)
                next_tokens = torch.multinomial(nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                next_tokens = torch.argmax(scores, dim=-1)
            record.step(scores, outputs)
            if not bool(unfinished.all()):
                if pad is None:
                    raise ValueError("pad_token_id: needed to pad sequences that finished early, given None")
                next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
            input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            model_kwargs = self._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
            unfinished = unfinished & ~criteria(input_ids, record.scores)
            if not bool(unfinished.any()):
                break
        if streamer is not None:
            streamer.end()
        if not config.return_dict_in_generate:
            return input_ids
        cls = GenerateEncoderDecoderOutput if is_encoder_decoder else GenerateDecoderOnlyOutput
        return cls(sequences=input_ids, **record.fields(model_kwargs.get("past_key_values")))

    def _contrastive_search(self, input_ids, config, processors, criteria, streamer, model_kwargs):
        """Contrastive search (Su et al. 2022): of the ``top_k`` most likely next tokens, take the one that
        maximises ``(1 - penalty_alpha) * probability - penalty_alpha * degeneration``, where degeneration is
        the highest cosine similarity between the candidate's last hidden state and those of every earlier
        position (prompt included, padding too, as in the reference).

        Each step runs the model once on all ``top_k`` candidates of every row (a batch of rows x top_k, with
        the cache repeated), keeps the chosen candidate's cache, hidden state and logits, so the next step's
        distribution is already known.
        """
        is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        if not config.use_cache:
            raise ValueError("use_cache: contrastive search (penalty_alpha > 0) needs the cache, given False")
        k, alpha = config.top_k, float(config.penalty_alpha)
        record = _Recorder(config, model_kwargs, is_encoder_decoder)
        batch = input_ids.shape[0]
        pad = config.pad_token_id
        prefix = "decoder_" if is_encoder_decoder else ""

        def forward(ids):
            inputs = self.prepare_inputs_for_generation(ids, **model_kwargs)
            return self(**inputs, return_dict=True, output_attentions=config.output_attentions,
                        output_hidden_states=True)

        outputs = forward(input_ids)
        context = outputs[prefix + "hidden_states"][-1]  # (batch, positions so far, hidden)
        logits = outputs.logits[:, -1, :].to(dtype=torch.float32, copy=True)
        model_kwargs = self._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
        if model_kwargs.get("past_key_values") is None:
            raise ValueError(f"{type(self).__name__} returned no cache, which contrastive search needs")
        # Masks and encoder states are kept at top_k rows per prompt row from now on (the caches are
        # repeated each step, since the model returns them for the chosen candidate only).
        _, model_kwargs = self._expand_inputs(input_ids, k, is_encoder_decoder, model_kwargs)
        repeat = torch.arange(batch, device=input_ids.device).repeat_interleave(k)
        first = torch.arange(batch, device=input_ids.device) * k
        unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        chosen_outputs = outputs
        while True:
            scores = processors(input_ids, logits)
            top_probs, top_ids = torch.topk(nn.functional.softmax(scores, dim=-1), k=k, dim=-1)
            record.step(scores, chosen_outputs)

            model_kwargs["past_key_values"] = reorder_cache(model_kwargs["past_key_values"], repeat)
            candidates = torch.cat([input_ids[repeat], top_ids.reshape(-1, 1)], dim=-1)
            outputs = forward(candidates)
            candidate_hidden = outputs[prefix + "hidden_states"][-1]  # (batch * k, 1, hidden)
            selected = _contrastive_choice(context[repeat], candidate_hidden, top_probs, alpha, k)
            pick = first + selected
            next_tokens = top_ids[torch.arange(batch, device=input_ids.device), selected]
            context = torch.cat([context, candidate_hidden[pick]], dim=1)
            logits = outputs.logits[pick, -1, :].to(dtype=torch.float32, copy=True)
            chosen_outputs = {
                name: tuple(layer[pick] for layer in outputs[name])
                for name in (prefix + "hidden_states", prefix + "attentions", "cross_attentions")
                if outputs.get(name) is not None
            }
            model_kwargs = self._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
            model_kwargs["past_key_values"] = reorder_cache(model_kwargs["past_key_values"], pick)

            if not bool(unfinished.all()):
                if pad is None:
                    raise ValueError("pad_token_id: needed to pad sequences that finished early, given None")
                next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
            input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            unfinished = unfinished & ~criteria(input_ids, record.scores)
            if not bool(unfinished.any()):
                break
        if streamer is not None:
            streamer.end()
        if not config.return_dict_in_generate:
            return input_ids
        # The cache also holds the look-ahead of the last chosen token; drop it, so that it covers every
        # token but the last, as with the other strategies.
        past = _drop_last_position(model_kwargs["past_key_values"], is_encoder_decoder)
        cls = GenerateEncoderDecoderOutput if is_encoder_decoder else GenerateDecoderOnlyOutput
        return cls(sequences=input_ids, **record.fields(past))

    def _group_beam_search(self, input_ids, config, processors, criteria, batch_size, model_kwargs):
        """Diverse (group) beam search: the beams of a prompt form ``num_beam_groups`` groups searched one
        after the other at each step, each a beam search of its own over its ``num_beams / num_beam_groups``
        beams, with finished hypotheses kept per group; the processors (the diversity penalty among them) see
        which tokens the earlier groups took at this step. The best hypotheses of all groups are returned."""
        is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        beams, groups = config.num_beams, config.num_beam_groups
        size = beams // groups
        scorers = [_BeamScorer(batch_size, size, config.length_penalty, config.early_stopping,
                               config.num_return_sequences, config.max_length) for _ in range(groups)]
        record = _Recorder(config, model_kwargs, is_encoder_decoder)
        # One trail per beam, per group, indexed within the group. Like the reference, a finished hypothesis
        # and the final beams read their trails from all groups' trails laid end to end.
        trails = [tuple(() for _ in range(batch_size * size)) for _ in range(groups)] \
            if record.scores is not None else None
        device = input_ids.device
        beam_scores = torch.full((batch_size, beams), -1e9, dtype=torch.float, device=device)
        beam_scores[:, ::size] = 0  # each group starts from one beam
        beam_scores = beam_scores.view(-1)
        prompt_len = input_ids.shape[-1]
        eos = config.eos_token_id
        width = max(2, 1 + len(_as_list(eos))) * size
        group_rows = [
            (torch.arange(batch_size, device=device)[:, None] * beams
             + torch.arange(g * size, (g + 1) * size, device=device)[None, :]).reshape(-1)
            for g in range(groups)
        ]
        while True:
            outputs, logits = self._step(input_ids, model_kwargs, config)
            current = torch.zeros(batch_size * beams, dtype=input_ids.dtype, device=device)
            reorder = torch.zeros(batch_size * beams, dtype=torch.long, device=device)
            processed = torch.zeros_like(logits) if record.scores is not None else None
            input_ids = input_ids.clone()
            for g, rows in enumerate(group_rows):
                group_ids = input_ids[rows]
                step_scores = processors(group_ids, nn.functional.log_softmax(logits[rows], dim=-1),
                                         current_tokens=current, beam_group_idx=g)
                if processed is not None:
                    processed[rows] = step_scores
                vocab = step_scores.shape[-1]
                totals = (step_scores + beam_scores[rows, None]).view(batch_size, size * vocab)
                totals, candidates = torch.topk(totals, width, dim=1, largest=True, sorted=True)
                sources = torch.div(candidates, vocab, rounding_mode="floor")
                flat = sum(trails, ()) if trails is not None else None
                next_scores, next_tokens, chosen = scorers[g].process(
                    group_ids, totals, candidates % vocab, sources, config.pad_token_id, eos, flat, prompt_len
                )
                beam_scores[rows] = next_scores
                if trails is not None:
                    trails[g] = tuple(trails[g][i] + (i,) for i in chosen.tolist())
                input_ids[rows] = group_ids[chosen]
                current[rows] = next_tokens.to(current.dtype)
                reorder[rows] = beams * torch.div(chosen, size, rounding_mode="floor") + g * size + chosen % size
            record.step(processed, outputs)
            input_ids = torch.cat([input_ids, current[:, None]], dim=-1)
            model_kwargs = self._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
            if model_kwargs.get("past_key_values") is not None:
                reorder_fn = getattr(self, "_reorder_cache", None) or reorder_cache
                model_kwargs["past_key_values"] = reorder_fn(model_kwargs["past_key_values"], reorder)
            if all(scorer.is_done for scorer in scorers) or bool(criteria(input_ids, record.scores).all()):
                break
        flat = sum(trails, ()) if trails is not None else None
        cur_len = input_ids.shape[-1]
        for g, scorer in enumerate(scorers):
            for b, hypotheses in enumerate(scorer.hypotheses):
                if scorer.done[b]:
                    continue
                for row in group_rows[g][b * size : (b + 1) * size].tolist():
                    hypotheses.add(input_ids[row], beam_scores[row].item(), flat[row] if flat is not None else None,
                                   cur_len - prompt_len)
        candidates = [[beam for scorer in scorers for beam in scorer.hypotheses[b].beams] for b in range(batch_size)]
        sequences, sequence_scores, beam_indices = _assemble(
            candidates, config.num_return_sequences, input_ids, config.pad_token_id, eos, criteria.max_length
        )
        if not config.return_dict_in_generate:
            return sequences
        cls = GenerateBeamEncoderDecoderOutput if is_encoder_decoder else GenerateBeamDecoderOnlyOutput
        return cls(
            sequences=sequences,
            sequences_scores=sequence_scores if config.output_scores else None,
            beam_indices=beam_indices,
            **record.fields(model_kwargs.get("past_key_values")),
        )

    def _beam_search(self, input_ids, config, processors, warpers, criteria, batch_size, model_kwargs):
        """Beam search (with ``do_sample``: beam sampling, candidates drawn from the distribution)."""
        is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        beams = config.num_beams
        scorer = _BeamScorer(batch_size, beams, config.length_penalty, config.early_stopping,
                             config.num_return_sequences, config.max_length)
        record = _Recorder(config, model_kwargs, is_encoder_decoder)
        trails = tuple(() for _ in range(batch_size * beams)) if record.scores is not None else None
        beam_scores = torch.zeros((batch_size, beams), dtype=torch.float, device=input_ids.device)
        if not config.do_sample:
            beam_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step one
        beam_scores = beam_scores.view(-1)
        prompt_len = input_ids.shape[-1]
        eos = config.eos_token_id
        while True:
            outputs, logits = self._step(input_ids, model_kwargs, config)
            step_scores = processors(input_ids, nn.functional.log_softmax(logits, dim=-1))
            if config.do_sample:
                step_scores = warpers(input_ids, step_scores)
            record.step(step_scores, outputs)
            vocab = step_scores.shape[-1]
            totals = (step_scores + beam_scores[:, None]).view(batch_size, beams * vocab)
            if config.do_sample:
                candidates = torch.multinomial(nn.functional.softmax(totals, dim=-1), num_samples=2 * beams)
                totals = torch.gather(totals, -1, candidates)
                totals, order = torch.sort(totals, descending=True, dim=1)
                candidates = torch.gather(candidates, -1, order)
            else:
                # Enough candidates that num_beams survive even if every end-of-sequence token is among them.
                width = max(2, 1 + len(_as_list(eos))) * beams
                totals, candidates = torch.topk(totals, width, dim=1, largest=True, sorted=True)
            sources = torch.div(candidates, vocab, rounding_mode="floor")
            tokens = candidates % vocab
            beam_scores, next_tokens, beam_idx = scorer.process(
                input_ids, totals, tokens, sources, config.pad_token_id, eos, trails, prompt_len
            )
            input_ids = torch.cat([input_ids[beam_idx, :], next_tokens.unsqueeze(-1)], dim=-1)
            model_kwargs = self._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
            if model_kwargs.get("past_key_values") is not None:
                reorder = getattr(self, "_reorder_cache", None) or reorder_cache
                model_kwargs["past_key_values"] = reorder(model_kwargs["past_key_values"], beam_idx)
            if trails is not None:
                trails = tuple(trails[i] + (i,) for i in beam_idx.tolist())
            if scorer.is_done or bool(criteria(input_ids, record.scores).all()):
                break
        sequences, sequence_scores, beam_indices = scorer.finalize(
            input_ids, beam_scores, config.pad_token_id, eos, criteria.max_length, trails, prompt_len
        )
        if not config.return_dict_in_generate:
            return sequences
        cls = GenerateBeamEncoderDecoderOutput if is_encoder_decoder else GenerateBeamDecoderOnlyOutput
        return cls(
            sequences=sequences,
            sequences_scores=sequence_scores if config.output_scores else None,
            beam_indices=beam_indices,
            **record.fields(model_kwargs.get("past_key_values")),
        )


def _is_contrastive(config) -> bool:
    """The reference's rule: greedy settings with penalty_alpha > 0 and top_k > 1 mean contrastive search."""
    return (
        not config.do_sample and config.num_beams == 1 and config.penalty_alpha is not None
        and config.penalty_alpha > 0 and config.top_k is not None and config.top_k > 1
    )


def _contrastive_choice(context, candidates, probs, alpha: float, k: int) -> torch.Tensor:
    """Index (per prompt row) of the candidate with the best contrastive score. ``context``: (rows * k,
    positions, hidden); ``candidates``: (rows * k, 1, hidden); ``probs``: (rows, k)."""
    context = context / context.norm(dim=2, keepdim=True)
    candidates = candidates / candidates.norm(dim=2, keepdim=True)
    similarity = torch.matmul(context, candidates.transpose(1, 2)).squeeze(-1)  # (rows * k, positions)
    degeneration = similarity.max(dim=-1).values
    score = (1.0 - alpha) * probs.reshape(-1) - alpha * degeneration
    return score.view(-1, k).max(dim=-1).indices


def _drop_last_position(past_key_values, is_encoder_decoder: bool):
    if hasattr(past_key_values, "crop"):
        past_key_values.crop(-1)
        return past_key_values
    # Legacy tuples: (key, value) of self-attention first; an encoder-decoder's cross-attention states
    # cover the encoder's positions and stay whole.
    own = 2 if is_encoder_decoder else None
    return tuple(
        tuple(t[..., :-1, :] if own is None or i < own else t for i, t in enumerate(layer))
        for layer in past_key_values
    )


class _Recorder:
    """Collects what ``return_dict_in_generate`` asks for, step by step."""

    def __init__(self, config: GenerationConfig, model_kwargs: dict, is_encoder_decoder: bool):
        wanted = config.return_dict_in_generate
        self.is_encoder_decoder = is_encoder_decoder
        self.scores = () if wanted and config.output_scores else None
        self.attentions = () if wanted and config.output_attentions else None
        self.cross_attentions = () if wanted and config.output_attentions and is_encoder_decoder else None
        self.hidden_states = () if wanted and config.output_hidden_states else None
        self.encoder = {}
        if wanted and is_encoder_decoder:
            encoder_outputs = model_kwargs["encoder_outputs"]
            if config.output_attentions:
                self.encoder["encoder_attentions"] = encoder_outputs.get("attentions")
            if config.output_hidden_states:
                self.encoder["encoder_hidden_states"] = encoder_outputs.get("hidden_states")

    def step(self, scores, outputs) -> None:
        if self.scores is not None:
            self.scores += (scores,)
        prefix = "decoder_" if self.is_encoder_decoder else ""
        if self.attentions is not None:
            self.attentions += (outputs[prefix + "attentions"],)
        if self.cross_attentions is not None:
            self.cross_attentions += (outputs["cross_attentions"],)
        if self.hidden_states is not None:
            self.hidden_states += (outputs[prefix + "hidden_states"],)

    def fields(self, past_key_values) -> dict:
        if self.is_encoder_decoder:
            return dict(scores=self.scores, decoder_attentions=self.attentions, cross_attentions=self.cross_attentions,
                        decoder_hidden_states=self.hidden_states, past_key_values=past_key_values, **self.encoder)
        return dict(scores=self.scores, attentions=self.attentions, hidden_states=self.hidden_states,
                    past_key_values=past_key_values)


__all__ = [
    "GenerationMixin",
    "GenerationConfig",
    "LogitsProcessor",
    "LogitsWarper",
    "LogitsProcessorList",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TypicalLogitsWarper",
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "SequenceBiasLogitsProcessor",
    "EncoderRepetitionPenaltyLogitsProcessor",
    "EncoderNoRepeatNGramLogitsProcessor",
    "ExponentialDecayLengthPenalty",
    "RepetitionPenaltyLogitsProcessor",
    "NoRepeatNGramLogitsProcessor",
    "NoBadWordsLogitsProcessor",
    "MinLengthLogitsProcessor",
    "MinNewTokensLengthLogitsProcessor",
    "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSTokenLogitsProcessor",
    "SuppressTokensLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
    "PrefixConstrainedLogitsProcessor",
    "InfNanRemoveLogitsProcessor",
    "HammingDiversityLogitsProcessor",
    "LogitNormalization",
    "ForceTokensLogitsProcessor",
    "UnbatchedClassifierFreeGuidanceLogitsProcessor",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "MaxLengthCriteria",
    "MaxTimeCriteria",
    "EosTokenCriteria",
    "StopStringCriteria",
    "GenerateDecoderOnlyOutput",
    "GenerateEncoderDecoderOutput",
    "GenerateBeamDecoderOnlyOutput",
    "GenerateBeamEncoderDecoderOutput",
]

"""Beam search bookkeeping shared by the beam strategies: the finished hypotheses of each prompt, the
scorer that keeps the running beams, the assembly of the best hypotheses into one padded tensor, and
the reordering of the cache when beams change places."""

from __future__ import annotations

from typing import Optional

import torch

from .processors import _as_list
from .records import GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput


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
        running = next_scores, next_tokens, next_indices = self._empty_rows(scores, tokens, indices, input_ids.device)
        eos = _as_list(eos_token_id)
        for b in range(len(self.hypotheses)):
            if self.done[b]:
                if pad_token_id is None:
                    raise ValueError("pad_token_id: needed to fill finished beams, given None")
                next_tokens[b] = pad_token_id
                continue
            kept = self._choose(b, input_ids, scores, tokens, indices, eos, beam_indices, cur_len, prompt_len, running)
            if kept < self.num_beams:
                raise ValueError(
                    f"too many end-of-sequence candidates among {tokens[b].tolist()} to keep {self.num_beams} beams"
                )
            self.done[b] = self.hypotheses[b].is_done(scores[b].max().item(), cur_len, prompt_len)
        return next_scores.view(-1), next_tokens.view(-1), next_indices.view(-1)

    def _empty_rows(self, scores, tokens, indices, device) -> tuple:
        """Zeroed (batch, num_beams) scores, tokens and source rows of the running beams, to be filled."""
        shape = (len(self.hypotheses), self.num_beams)
        return tuple(torch.zeros(shape, dtype=like.dtype, device=device) for like in (scores, tokens, indices))

    def _choose(self, b, input_ids, scores, tokens, indices, eos, beam_indices, cur_len, prompt_len, running,
                finishes=None) -> int:
        """Go through prompt ``b``'s sorted candidates: one ending with an end-of-sequence token among the
        first num_beams becomes a hypothesis (if ``finishes``, given, accepts its sequence), the others fill
        row ``b`` of ``running`` until num_beams are kept. Returns how many were kept."""
        beams = self.num_beams
        next_scores, next_tokens, next_indices = running
        kept = 0
        for rank, (token, score, index) in enumerate(zip(tokens[b].tolist(), scores[b], indices[b].tolist())):
            source = b * beams + index
            if token in eos:
                if rank >= beams:
                    continue  # an ending less likely than num_beams continuations does not finish
                if finishes is None or finishes(input_ids[source].tolist()):
                    trail = beam_indices[source] + (source,) if beam_indices is not None else None
                    self.hypotheses[b].add(input_ids[source].clone(), score.item(), trail, cur_len - prompt_len)
            else:
                next_scores[b, kept], next_tokens[b, kept], next_indices[b, kept] = score, token, source
                kept += 1
            if kept == beams:
                break
        return kept

    def results(self, model, config, criteria, input_ids, beam_scores, trails, prompt_len, record, model_kwargs):
        """What a beam strategy returns once its loop ends: the best hypotheses (:meth:`finalize`) as
        :func:`beam_output` gives them."""
        sequences, sequence_scores, beam_indices = self.finalize(
            input_ids, beam_scores, config.pad_token_id, config.eos_token_id, criteria.max_length, trails, prompt_len
        )
        is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        return beam_output(config, is_encoder_decoder, sequences, sequence_scores, beam_indices, record, model_kwargs)

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


def reorder_cache(past_key_values, beam_idx: torch.Tensor):
    """Reorder a cache along the batch so that row i continues beam ``beam_idx[i]``: a ``Cache`` object
    reorders itself, a legacy tuple (layers of key/value tensors) is gathered tensor by tensor. A model with
    its own ``_reorder_cache`` uses that instead."""
    if hasattr(past_key_values, "reorder_cache"):
        result = past_key_values.reorder_cache(beam_idx)
        return past_key_values if result is None else result
    return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past_key_values)


def reorder_model_state(model, outputs, model_kwargs: dict, is_encoder_decoder: bool, beam_idx: torch.Tensor) -> dict:
    """The model inputs for the next step once the beams are chosen: the step's outputs folded in, and the
    cache rows reordered to follow ``beam_idx`` (the model's own ``_reorder_cache`` when it has one)."""
    model_kwargs = model._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
    if model_kwargs.get("past_key_values") is not None:
        reorder = getattr(model, "_reorder_cache", None) or reorder_cache
        model_kwargs["past_key_values"] = reorder(model_kwargs["past_key_values"], beam_idx)
    return model_kwargs


def follow_beams(model, outputs, input_ids, model_kwargs: dict, is_encoder_decoder: bool, beam_idx: torch.Tensor,
                 next_tokens: torch.Tensor, trails):
    """After a step's beams are chosen: the sequences extended along ``beam_idx`` by ``next_tokens``, the
    model state reordered (:func:`reorder_model_state`), and each beam's trail of rows (or None) followed."""
    input_ids = torch.cat([input_ids[beam_idx, :], next_tokens.unsqueeze(-1)], dim=-1)
    model_kwargs = reorder_model_state(model, outputs, model_kwargs, is_encoder_decoder, beam_idx)
    if trails is not None:
        trails = tuple(trails[i] + (i,) for i in beam_idx.tolist())
    return input_ids, model_kwargs, trails


def beam_output(config, is_encoder_decoder: bool, sequences, sequence_scores, beam_indices, record, model_kwargs):
    """What a beam strategy returns: the sequences, or with ``return_dict_in_generate`` the output record."""
    if not config.return_dict_in_generate:
        return sequences
    cls = GenerateBeamEncoderDecoderOutput if is_encoder_decoder else GenerateBeamDecoderOnlyOutput
    return cls(
        sequences=sequences,
        sequences_scores=sequence_scores if config.output_scores else None,
        beam_indices=beam_indices,
        **record.fields(model_kwargs.get("past_key_values")),
    )

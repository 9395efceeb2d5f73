"""Beam search and beam sampling: ``num_beams`` running sequences per prompt, extended by their best (or
sampled) continuations each step, finished ones kept as hypotheses scored with the length penalty."""

from __future__ import annotations

import torch
from torch import nn

from .hypotheses import _BeamScorer, follow_beams
from .processors import _as_list
from .records import _Recorder


def beam_search(model, input_ids, config, processors, warpers, criteria, batch_size, model_kwargs):
    """Beam search (with ``do_sample``: beam sampling, candidates drawn from the distribution)."""
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
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
        outputs, logits = model._step(input_ids, model_kwargs, config)
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
        input_ids, model_kwargs, trails = follow_beams(model, outputs, input_ids, model_kwargs, is_encoder_decoder,
                                                       beam_idx, next_tokens, trails)
        if scorer.is_done or bool(criteria(input_ids, record.scores).all()):
            break
    return scorer.results(model, config, criteria, input_ids, beam_scores, trails, prompt_len, record, model_kwargs)

"""Diverse (group) beam search (Vijayakumar et al. 2016): the beams of a prompt split into groups that
search one after the other at each step, a diversity penalty keeping later groups off the earlier ones'
tokens."""

from __future__ import annotations

import torch
from torch import nn

from .hypotheses import _assemble, _BeamScorer, beam_output, reorder_model_state
from .processors import _as_list
from .records import _Recorder


def group_beam_search(model, input_ids, config, processors, criteria, batch_size, model_kwargs):
    """Diverse (group) beam search: the beams of a prompt form ``num_beam_groups`` groups searched one
    after the other at each step, each a beam search of its own over its ``num_beams / num_beam_groups``
    beams, with finished hypotheses kept per group; the processors (the diversity penalty among them) see
    which tokens the earlier groups took at this step. The best hypotheses of all groups are returned."""
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
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
        outputs, logits = model._step(input_ids, model_kwargs, config)
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
        model_kwargs = reorder_model_state(model, outputs, model_kwargs, is_encoder_decoder, reorder)
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
    return beam_output(config, is_encoder_decoder, sequences, sequence_scores, beam_indices, record, model_kwargs)

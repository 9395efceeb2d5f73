"""Greedy decoding and multinomial sampling: one token per step, the argmax of the processed scores or a
draw from their softmax after the warpers."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from .processors import leaves_scores
from .records import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput, _Recorder


def append_tokens(input_ids, next_tokens, unfinished, pad, streamer):
    """``input_ids`` with one more column: ``next_tokens``, or ``pad`` in the rows already finished (none
    when ``unfinished`` is None); the new column goes to the ``streamer``."""
    if unfinished is not None and not bool(unfinished.all()):
        if pad is None:
            raise ValueError("pad_token_id: needed to pad sequences that finished early, given None")
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
    if streamer is not None:
        streamer.put(next_tokens.cpu())
    return torch.cat([input_ids, next_tokens[:, None]], dim=-1)


def greedy_choice(scores: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(scores, dim=-1)`` of a (batch, vocabulary) float32 CPU tensor by polyformers' kernel
    once it is built (torch's reduction is scalar: 45 us for a 50k vocabulary, a tenth of a step's work
    outside the model); the same indices, the first maximum and NaN counting as the largest."""
    if scores.dtype == torch.float32 and scores.dim() == 2 and scores.device.type == "cpu" and scores.shape[1] \
            and kernels.ready():
        return kernels.ops().argmax_rows(scores)
    return torch.argmax(scores, dim=-1)


def sample(model, input_ids, config, processors, warpers, criteria, streamer, model_kwargs):
    """Greedy decoding (argmax) or, with ``do_sample``, multinomial sampling, one token per step."""
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    record = _Recorder(config, model_kwargs, is_encoder_decoder)
    pad = config.pad_token_id
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    # else the argmax (and the processors, which then make new scores) read the model's logits as they are
    edited = config.do_sample or not all(leaves_scores(p) for p in processors)
    every = True  # no sequence has finished yet
    while True:
        outputs, logits = model._step(input_ids, model_kwargs, config, copy=edited)
        scores = processors(input_ids, logits)
        if config.do_sample:
            scores = warpers(input_ids, scores)
            next_tokens = torch.multinomial(nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = greedy_choice(scores)
        record.step(scores, outputs)
        input_ids = append_tokens(input_ids, next_tokens, None if every else unfinished, pad, streamer)
        model_kwargs = model._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
        done = criteria.rows_done(input_ids, record.scores)
        if done is not None and bool(done.any()):  # until a sequence finishes, one check a step at most
            unfinished = unfinished & ~done
            every = False
            if not bool(unfinished.any()):
                break
    if streamer is not None:
        streamer.end()
    if not config.return_dict_in_generate:
        return input_ids
    cls = GenerateEncoderDecoderOutput if is_encoder_decoder else GenerateDecoderOnlyOutput
    return cls(sequences=input_ids, **record.fields(model_kwargs.get("past_key_values")))

"""Contrastive search (Su et al. 2022): among the ``top_k`` likeliest next tokens, the one that balances
probability against similarity to what came before."""

from __future__ import annotations

import torch
from torch import nn

from .greedy import append_tokens
from .hypotheses import reorder_cache
from .records import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput, _Recorder


def _is_contrastive(config) -> bool:
    """The reference's rule: greedy settings with penalty_alpha > 0 and top_k > 1 mean contrastive search."""
    return (
        not config.do_sample and config.num_beams == 1 and config.penalty_alpha is not None
        and config.penalty_alpha > 0 and config.top_k is not None and config.top_k > 1
    )


def contrastive_search(model, input_ids, config, processors, criteria, streamer, model_kwargs):
    """Contrastive search (Su et al. 2022): of the ``top_k`` most likely next tokens, take the one that
    maximises ``(1 - penalty_alpha) * probability - penalty_alpha * degeneration``, where degeneration is
    the highest cosine similarity between the candidate's last hidden state and those of every earlier
    position (prompt included, padding too, as in the reference).

    Each step runs the model once on all ``top_k`` candidates of every row (a batch of rows x top_k, with
    the cache repeated), keeps the chosen candidate's cache, hidden state and logits, so the next step's
    distribution is already known. With ``low_memory`` (any true value, as in the reference) the
    candidates are run one after the other instead, each on the batch's own rows and the cache as it is,
    and only the best candidate so far is kept per row: nothing is ever held top_k times.
    """
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    if not config.use_cache:
        raise ValueError("use_cache: contrastive search (penalty_alpha > 0) needs the cache, given False")
    k, alpha = config.top_k, float(config.penalty_alpha)
    record = _Recorder(config, model_kwargs, is_encoder_decoder)
    batch = input_ids.shape[0]
    pad = config.pad_token_id
    prefix = "decoder_" if is_encoder_decoder else ""

    def forward(ids):
        inputs = model.prepare_inputs_for_generation(ids, **model_kwargs)
        return model(**inputs, return_dict=True, output_attentions=config.output_attentions,
                    output_hidden_states=True)

    outputs = forward(input_ids)
    context = outputs[prefix + "hidden_states"][-1]  # (batch, positions so far, hidden)
    logits = outputs.logits[:, -1, :].to(dtype=torch.float32, copy=True)
    model_kwargs = model._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
    if model_kwargs.get("past_key_values") is None:
        raise ValueError(f"{type(model).__name__} returned no cache, which contrastive search needs")
    if config.low_memory:
        return _sequential(model, input_ids, config, processors, criteria, streamer, model_kwargs, record,
                           context, logits, outputs)
    # Masks and encoder states are kept at top_k rows per prompt row from now on (the caches are
    # repeated each step, since the model returns them for the chosen candidate only).
    _, model_kwargs = model._expand_inputs(input_ids, k, is_encoder_decoder, model_kwargs)
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
        model_kwargs = model._update_model_kwargs(outputs, model_kwargs, is_encoder_decoder)
        model_kwargs["past_key_values"] = reorder_cache(model_kwargs["past_key_values"], pick)

        input_ids = append_tokens(input_ids, next_tokens, unfinished, pad, streamer)
        unfinished = unfinished & ~criteria(input_ids, record.scores)
        if not bool(unfinished.any()):
            break
    return _finish(input_ids, config, streamer, record, model_kwargs, is_encoder_decoder)


def _sequential(model, input_ids, config, processors, criteria, streamer, model_kwargs, record, context, logits,
                chosen_outputs):
    """Contrastive search with ``low_memory``: the same choice as the batched loop above, from one forward
    per candidate on the batch's own rows. The cache is not repeated: each candidate's forward reads it
    as it is (a ``Cache`` object that grows in place is cut back to its length afterwards), and of every
    candidate only what the row would keep if it won (last hidden state, logits, the outputs recorded,
    the key/value states of the new position) survives, while it is the best so far."""
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    k, alpha = config.top_k, float(config.penalty_alpha)
    prefix = "decoder_" if is_encoder_decoder else ""
    # Only the outputs the caller asked for are kept of each candidate.
    recorded = [name for name, wanted in ((prefix + "hidden_states", record.hidden_states),
                                          (prefix + "attentions", record.attentions),
                                          ("cross_attentions", record.cross_attentions))
                if wanted is not None and chosen_outputs.get(name) is not None]
    batch = input_ids.shape[0]
    pad = config.pad_token_id
    unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    while True:
        scores = processors(input_ids, logits)
        top_probs, top_ids = torch.topk(nn.functional.softmax(scores, dim=-1), k=k, dim=-1)
        record.step(scores, chosen_outputs)

        past = model_kwargs["past_key_values"]
        length = _cache_length(past)
        unit_context = context / context.norm(dim=2, keepdim=True)
        best = None
        for i in range(k):
            inputs = model.prepare_inputs_for_generation(torch.cat([input_ids, top_ids[:, i:i + 1]], dim=-1),
                                                         **model_kwargs)
            outputs = model(**inputs, return_dict=True, output_attentions=config.output_attentions,
                            output_hidden_states=True)
            hidden = outputs[prefix + "hidden_states"][-1]  # (batch, 1, hidden)
            unit = hidden / hidden.norm(dim=2, keepdim=True)
            degeneration = torch.matmul(unit_context, unit.transpose(1, 2)).squeeze(-1).max(dim=-1).values
            score = (1.0 - alpha) * top_probs[:, i] - alpha * degeneration
            candidate = {
                "score": score, "token": top_ids[:, i], "hidden": hidden,
                "logits": outputs.logits[:, -1, :].to(dtype=torch.float32, copy=True),
                "new_states": _new_position(outputs["past_key_values"], length),
                **{name: outputs[name] for name in recorded},
            }
            _cut_back(past, length)  # a cache that grew in place forgets the candidate again
            # The first of equal scores wins, as with the batched loop's max.
            best = candidate if best is None else _keep_better(best, candidate)
            del outputs, candidate

        next_tokens = best["token"]
        context = torch.cat([context, best["hidden"]], dim=1)
        logits = best["logits"]
        chosen_outputs = {name: best[name] for name in recorded}
        model_kwargs = model._update_model_kwargs({"past_key_values": _append(past, best["new_states"])},
                                                  model_kwargs, is_encoder_decoder)
        del best

        input_ids = append_tokens(input_ids, next_tokens, unfinished, pad, streamer)
        unfinished = unfinished & ~criteria(input_ids, record.scores)
        if not bool(unfinished.any()):
            break
    return _finish(input_ids, config, streamer, record, model_kwargs, is_encoder_decoder)


def _finish(input_ids, config, streamer, record, model_kwargs, is_encoder_decoder):
    if streamer is not None:
        streamer.end()
    if not config.return_dict_in_generate:
        return input_ids
    # The cache also holds the look-ahead of the last chosen token; drop it, so that it covers every
    # token but the last, as with the other strategies.
    past = _drop_last_position(model_kwargs["past_key_values"], is_encoder_decoder)
    cls = GenerateEncoderDecoderOutput if is_encoder_decoder else GenerateDecoderOnlyOutput
    return cls(sequences=input_ids, **record.fields(past))


def _keep_better(best: dict, candidate: dict) -> dict:
    """Row by row, the candidate where it scores strictly higher, else the best so far."""
    wins = candidate["score"] > best["score"]

    def pick(old, new):
        if isinstance(old, torch.Tensor):
            return torch.where(wins.view(-1, *([1] * (old.dim() - 1))), new, old)
        return type(old)(pick(o, n) for o, n in zip(old, new))

    return {name: pick(best[name], candidate[name]) for name in best}


def _cache_length(past) -> int:
    if hasattr(past, "get_seq_length"):
        return past.get_seq_length()
    return past[0][0].shape[-2]


def _new_position(past, length: int) -> tuple:
    """The key/value states a forward added after ``length`` positions: per layer, its self-attention
    (key, value) at the new position (an encoder-decoder's cross-attention states do not grow)."""
    return tuple((layer[0][..., length:, :].clone(), layer[1][..., length:, :].clone()) for layer in past)


def _cut_back(past, length: int) -> None:
    """Undo a candidate's forward on a cache object that grew in place (legacy tuples never do)."""
    if hasattr(past, "get_seq_length") and past.get_seq_length() > length:
        if not hasattr(past, "crop"):
            raise ValueError(f"low_memory: contrastive search one candidate at a time needs a cache that can be cut "
                             f"back (crop), given a {type(past).__name__}")
        past.crop(length)


def _append(past, new_states: tuple):
    """The cache with the chosen candidates' key/value states added at the end."""
    if hasattr(past, "update"):
        for layer, (key, value) in enumerate(new_states):
            past.update(key, value, layer)
        return past
    return tuple(
        (torch.cat([layer[0], key], dim=-2), torch.cat([layer[1], value], dim=-2), *layer[2:])
        for layer, (key, value) in zip(past, new_states)
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

"""Decoding modes beyond greedy, sampling and beam search, against the reference's 4.37 release.

The reference builds perturbed random tiny models of several families (RoBERTa decoder, GPT-J, MPT,
Pegasus), saves them, and runs every case in one subprocess (tests/pt/_generation_modes_oracle.py);
polyformers loads the folders and runs the same cases. Sequences must be identical, scores equal within 1e-4,
and where a case asks for attentions and hidden states, those must have the reference's structure and shapes,
with values within 1e-4 wherever they are defined (not at padding).
"""

from __future__ import annotations

import pytest
import torch

import polyformers

from ._generation_common import ATOL, IDS, LEFT, MODELS, PAD, SCORES, SOURCE, assert_matches_reference, prompt_tensors
from ._generation_common import assert_cache_holds_all_but_the_last_token
from ._generation_common import one_thread, run_reference  # noqa: F401  (one_thread: an autouse fixture)

MODELS = list(MODELS)
# The GPT-J above with its end token (2) raised further, so that every mode produces it early, and no pad
# token in its config: for the cases where eos_token_id=None falls back to the model's own end token.
MODELS.append(dict(MODELS[1], name="gptj_eos", boost={"2": 3.0},
                   config={k: v for k, v in MODELS[1]["config"].items() if k != "pad_token_id"}))


def _tensors() -> dict[str, torch.Tensor]:
    tensors = prompt_tensors(torch.Generator().manual_seed(0))
    ids, source, source_mask = tensors["ids"], tensors["source"], tensors["source_mask"]
    return dict(tensors, one=ids[:1].clone(), source_one=source[:1].clone(), source_one_mask=source_mask[:1].clone(),
                second=ids[1:].clone())


ONE = {"input_ids": "one"}
SOURCE_ONE = {"input_ids": "source_one", "attention_mask": "source_one_mask"}
CS = dict(penalty_alpha=0.6, top_k=4, max_new_tokens=10)
# Attentions and hidden states (with the scores), a few steps of every decoding mode.
STATES = dict(return_dict_in_generate=True, output_scores=True, output_attentions=True, output_hidden_states=True,
              max_new_tokens=4)
STATE_MODES = {
    "greedy": {}, "sample": dict(do_sample=True), "beam": dict(num_beams=2), "beam_sample": dict(num_beams=2, do_sample=True),
    "cs": dict(penalty_alpha=0.6, top_k=3), "gbs": dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
    "constrained": dict(num_beams=2, force_words_ids=[[40]]),
}
GBS = dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, max_new_tokens=8)

# name: (model, inputs, generate kwargs)
CASES = {
    # contrastive search
    "cs_roberta": ("roberta", IDS, dict(CS, **SCORES)),
    "cs_roberta_left_eos": ("roberta", LEFT, dict(CS, eos_token_id=5, pad_token_id=PAD, **SCORES)),
    "cs_roberta_processors": ("roberta", IDS, dict(CS, penalty_alpha=0.3, top_k=6, no_repeat_ngram_size=2,
                                                   repetition_penalty=1.3, **SCORES)),
    "cs_roberta_plain": ("roberta", LEFT, dict(CS, eos_token_id=5, pad_token_id=PAD)),
    # Unpadded: the degeneration penalty also looks at pad positions (as in 4.37), whose hidden states are
    # garbage that polyformers' GPT-J computes differently from 4.37's (their attention is fully masked).
    "cs_gptj": ("gptj", IDS, dict(CS, **SCORES)),
    "cs_gptj_top2": ("gptj", IDS, dict(CS, penalty_alpha=0.9, top_k=2, max_new_tokens=12)),
    "cs_mpt": ("mpt", LEFT, dict(CS, **SCORES)),
    "cs_pegasus": ("pegasus", SOURCE, dict(CS, **SCORES)),
    "cs_pegasus_min_length": ("pegasus", SOURCE, dict(CS, top_k=3, min_length=6, no_repeat_ngram_size=2,
                                                      max_new_tokens=12, **SCORES)),
    # group (diverse) beam search
    "gbs_roberta": ("roberta", IDS, dict(GBS, eos_token_id=5, pad_token_id=PAD, **SCORES)),
    "gbs_roberta_three_groups": ("roberta", LEFT, dict(GBS, num_beams=6, num_beam_groups=3, diversity_penalty=0.5,
                                                      num_return_sequences=3, length_penalty=0.8, eos_token_id=5,
                                                      pad_token_id=PAD, max_new_tokens=10, **SCORES)),
    "gbs_roberta_plain": ("roberta", LEFT, dict(GBS, num_beams=6, num_beam_groups=2, diversity_penalty=3.0,
                                               early_stopping=True, eos_token_id=5, pad_token_id=PAD)),
    "gbs_gptj_one_per_group": ("gptj", IDS, dict(GBS, num_beam_groups=4, diversity_penalty=2.0, no_repeat_ngram_size=2,
                                                 **SCORES)),
    "gbs_mpt": ("mpt", LEFT, dict(GBS, num_return_sequences=2, **SCORES)),
    "gbs_pegasus": ("pegasus", SOURCE, dict(GBS, diversity_penalty=1.5, num_return_sequences=2, **SCORES)),
    "gbs_pegasus_never": ("pegasus", SOURCE, dict(GBS, num_beams=6, num_beam_groups=3, early_stopping="never",
                                                  length_penalty=-0.5, min_length=4, max_new_tokens=12)),
    # logits processors and warpers
    "sequence_bias": ("roberta", IDS, dict(max_new_tokens=10, sequence_bias=[[[40], -2.5], [[77], 1.5], [[81, 77], 4.0],
                                                                             [[12, 13, 14], 3.0]], **SCORES)),
    "sequence_bias_beam": ("gptj", IDS, dict(num_beams=3, max_new_tokens=8,
                                             sequence_bias=[[[9], 2.0], [[30, 31], -1.5]], **SCORES)),
    "encoder_repetition_penalty": ("pegasus", SOURCE, dict(max_new_tokens=10, encoder_repetition_penalty=1.8,
                                                           **SCORES)),
    "encoder_repetition_penalty_decoder_only": ("mpt", LEFT, dict(max_new_tokens=10, encoder_repetition_penalty=0.7,
                                                                  **SCORES)),
    "encoder_no_repeat_ngram": ("pegasus", SOURCE, dict(max_new_tokens=12, encoder_no_repeat_ngram_size=2,
                                                        encoder_repetition_penalty=3.0, **SCORES)),
    "encoder_no_repeat_ngram_beam": ("pegasus", SOURCE, dict(num_beams=3, max_new_tokens=10,
                                                             encoder_no_repeat_ngram_size=1, **SCORES)),
    "exponential_decay": ("gptj", IDS, dict(max_new_tokens=14, exponential_decay_length_penalty=(3, 1.6), **SCORES)),
    "exponential_decay_pegasus": ("pegasus", SOURCE, dict(max_new_tokens=12, exponential_decay_length_penalty=(2, 1.3),
                                                          **SCORES)),
    "epsilon_sample": ("roberta", IDS, dict(max_new_tokens=12, do_sample=True, top_k=0, epsilon_cutoff=0.02, **SCORES)),
    "eta_sample": ("gptj", LEFT, dict(max_new_tokens=12, do_sample=True, top_k=0, eta_cutoff=0.05, **SCORES)),
    "eta_beam_sample": ("pegasus", SOURCE, dict(num_beams=2, max_new_tokens=8, do_sample=True, eta_cutoff=0.1,
                                                epsilon_cutoff=0.01, **SCORES)),
    # low_memory: contrastive search one candidate at a time. 4.37's own sequential path runs one prompt
    # row only, and without output_attentions (it fails otherwise); the other low_memory checks compare
    # with the reference's batched contrastive search. Other modes ignore the setting.
    "cs_low_memory_gptj": ("gptj", ONE, dict(CS, low_memory=True, output_hidden_states=True, **SCORES)),
    "cs_low_memory_pegasus": ("pegasus", SOURCE_ONE, dict(CS, low_memory=True, output_hidden_states=True, **SCORES)),
    "low_memory_beam": ("gptj", IDS, dict(num_beams=2, max_new_tokens=5, low_memory=True, **SCORES)),
    # attentions and hidden states in every mode, on a left-padded decoder-only model and on Pegasus
    **{f"states_{mode}_{model}": (model, inputs, dict(STATES, **settings))
       for model, inputs in (("mpt", LEFT), ("pegasus", SOURCE)) for mode, settings in STATE_MODES.items()},
    "states_attentions_only_cs_pegasus": ("pegasus", SOURCE, dict(STATES, penalty_alpha=0.6, top_k=3,
                                                                  output_hidden_states=False)),
    "states_hidden_only_beam_mpt": ("mpt", LEFT, dict(STATES, num_beams=2, output_attentions=False)),
}
# eos_token_id=None (issue 12): in 4.37 the decoding loops replace it by the model's own generation_config
# end token (2 for gptj_eos, 1 for Pegasus), and pad_token_id=None by the model's pad token; the processors
# (min_new_tokens here) see None. gptj_eos has no pad token: the loops that need one refuse, unless the call
# passes one. eos_token_id=[] is 4.37's "no end token".
FALLBACK_MODES = STATE_MODES  # every decoding mode
FALLBACK = dict(max_new_tokens=10, eos_token_id=None, pad_token_id=PAD)
NO_PAD = dict(max_new_tokens=10, eos_token_id=None, pad_token_id=None)
SECOND = {"input_ids": "second"}
FALLBACK_CASES = {
    **{f"eos_none_{mode}": ("gptj_eos", IDS, dict(FALLBACK, **settings)) for mode, settings in FALLBACK_MODES.items()},
    "eos_none_assisted": ("gptj_eos", SECOND, dict(FALLBACK, assistant_model="gptj")),
    "eos_none_assisted_sample": ("gptj_eos", SECOND, dict(FALLBACK, assistant_model="gptj", do_sample=True)),
    "eos_none_prompt_lookup": ("gptj_eos", SECOND, dict(FALLBACK, prompt_lookup_num_tokens=2)),
    # the model's pad token stands in for pad_token_id=None (Pegasus: 0), its end token for eos_token_id=None
    "eos_none_pegasus_beam": ("pegasus", SOURCE, dict(NO_PAD, num_beams=3, forced_eos_token_id=None)),
    "eos_none_pegasus_greedy": ("pegasus", SOURCE, dict(NO_PAD, forced_eos_token_id=None, **SCORES)),
    # min_new_tokens is not applied (its processor sees None), yet the loop stops at the model's end token
    "eos_none_min_new_tokens": ("gptj_eos", IDS, dict(FALLBACK, min_new_tokens=6, **SCORES)),
    "eos_none_min_new_tokens_cs": ("gptj_eos", IDS, dict(FALLBACK, min_new_tokens=6, penalty_alpha=0.6, top_k=3)),
    # no pad token anywhere: beam searches run while nothing needs padding
    "no_pad_beam": ("gptj_eos", IDS, dict(NO_PAD, **FALLBACK_MODES["beam"])),
    "no_pad_beam_one": ("gptj_eos", ONE, dict(NO_PAD, num_beams=2, num_return_sequences=2)),
    # "no end token": the same runs with eos_token_id=[]
    **{f"eos_empty_{mode}": ("gptj_eos", IDS, dict(FALLBACK, **settings, eos_token_id=[]))
       for mode, settings in FALLBACK_MODES.items()},
}
# 4.37 raises (ValueError: "If `eos_token_id` is defined, make sure that `pad_token_id` is defined."):
# an end token from the model's generation_config but no pad token, in the modes that pad every step; and
# in a beam search once a finished prompt's (or group's) beams need padding.
REFUSED = {
    **{f"no_pad_{mode}": ("gptj_eos", IDS, dict(NO_PAD, **FALLBACK_MODES[mode])) for mode in ("greedy", "sample", "cs")},
    "no_pad_assisted": ("gptj_eos", SECOND, dict(NO_PAD, assistant_model="gptj")),
    "no_pad_gbs": ("gptj_eos", IDS, dict(NO_PAD, **FALLBACK_MODES["gbs"])),
}
PADS_EVERY_STEP = ("no_pad_greedy", "no_pad_sample", "no_pad_cs", "no_pad_assisted")
CASES.update(FALLBACK_CASES)
ORACLE_CASES = dict(CASES, **REFUSED)
STATE_FIELDS = ("attentions", "decoder_attentions", "cross_attentions", "encoder_attentions", "hidden_states",
                "decoder_hidden_states", "encoder_hidden_states")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, legacy_python):
    tensors = _tensors()
    runs = [dict(name=name, model=model, inputs=inputs, kwargs=kwargs)
            for name, (model, inputs, kwargs) in ORACLE_CASES.items()]
    summary, expected, models = run_reference(tmp_path_factory.mktemp("generation_modes"), legacy_python, tensors,
                                              MODELS, runs)
    return summary, expected, models, tensors


def _run(models, tensors, name, **extra):
    model, inputs, kwargs = ORACLE_CASES[name]
    if "sequence_bias" in kwargs:
        kwargs = dict(kwargs, sequence_bias={tuple(ids): bias for ids, bias in kwargs["sequence_bias"]})
    if "assistant_model" in kwargs:
        kwargs = dict(kwargs, assistant_model=models[kwargs["assistant_model"]])
    torch.manual_seed(0)
    return models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()}, **kwargs, **extra)


def _shapes(value):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    return [_shapes(item) for item in value]


def _valid(name, field, path, shape, tensors):
    """Where a state of case ``name`` is defined: False at padding. A left-padded prompt's first pad
    positions attend to nothing at all (every key is masked), so what a model computes there, and every
    attention weight on a pad key, is arbitrary in both libraries; only positions whose attention mask
    is 1 are compared (shapes are compared everywhere)."""
    model, inputs, _ = CASES[name]
    mask = tensors.get(inputs.get("attention_mask"))
    if mask is None or (field.startswith("decoder_") and model == "pegasus"):
        return torch.ones(shape, dtype=torch.bool)  # nothing of these is padding
    rows = torch.arange(shape[0]) // (shape[0] // mask.shape[0])  # beams or candidates of one prompt are neighbours
    if field.startswith("encoder_") or field == "cross_attentions":
        keys = mask[rows].bool()  # the source, padded on the right
        queries = torch.ones(shape[0], shape[-2], dtype=torch.bool) if field == "cross_attentions" else keys
    else:
        width = shape[-1] if "attentions" in field else mask.shape[1] + path[0]
        keys = torch.cat([mask[rows].bool(), torch.ones(shape[0], width - mask.shape[1], dtype=torch.bool)], dim=1)
        queries = keys[:, width - shape[-2]:] if "attentions" in field else keys[:, width - shape[1]:]
    if "attentions" in field:
        return queries[:, None, :, None] & keys[:, None, None, :]
    return queries[:, :, None].expand(shape)


def _assert_states_match(summary, expected, name, result, tensors):
    structure = summary[name].get("states", {})
    for field in STATE_FIELDS:
        got = result.get(field) if hasattr(result, "get") else None
        assert _shapes(got) == structure.get(field), f"{name}: {field} has another structure than the reference's"
        if got is None:
            continue
        encoder = field.startswith("encoder_")  # a tuple per layer; the others a tuple per step of those
        for step_index, step in enumerate((got,) if encoder else got):
            for layer, tensor in enumerate(step):
                path = (layer,) if encoder else (step_index, layer)
                want = expected[".".join([name, field, *map(str, path)])]
                valid = _valid(name, field, path, tuple(want.shape), tensors).expand(want.shape)
                assert valid.any(), f"{name}: {field} {path} has nothing to compare"
                assert torch.allclose(tensor[valid].float(), want[valid].float(), atol=ATOL), \
                    f"{name}: {field} {path} differs by {(tensor[valid].float() - want[valid].float()).abs().max()}"


def _assert_matches(summary, expected, name, result, tensors=None):
    assert_matches_reference(summary, expected, name, result)
    if tensors is not None and not isinstance(result, torch.Tensor):
        _assert_states_match(summary, expected, name, result, tensors)


@pytest.mark.parametrize("name", list(CASES))
def test_generate_matches_reference(reference, name):
    summary, expected, models, tensors = reference
    _assert_matches(summary, expected, name, _run(models, tensors, name), tensors)


def test_contrastive_cases_are_not_greedy(reference):
    """The degeneration penalty changes tokens: contrastive search is not greedy search in disguise."""
    _, expected, models, tensors = reference
    for name in ("cs_roberta", "cs_gptj", "cs_mpt", "cs_pegasus"):
        model, inputs, kwargs = CASES[name]
        greedy = models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()},
                                        max_new_tokens=kwargs["max_new_tokens"])
        assert not torch.equal(greedy, expected[f"{name}.sequences"]), name


def test_contrastive_search_cache_and_errors(reference):
    _, expected, models, tensors = reference
    # The returned cache covers every token but the last, as with the other strategies.
    assert_cache_holds_all_but_the_last_token(_run(models, tensors, "cs_gptj"), _run(models, tensors, "cs_pegasus"),
                                              tensors["source"].shape[1])
    with pytest.raises(ValueError, match="use_cache"):
        _run(models, tensors, "cs_roberta", use_cache=False)


def _forward_batches(model, **generate_kwargs):
    """Generate, recording for every forward call the rows of its input ids and of the cache it reads."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("decoder_input_ids")
        ids = kwargs.get("input_ids") if ids is None else ids
        past = kwargs.get("past_key_values")
        seen.append((ids.shape[0], None if past is None or len(past) == 0 else past[0][0].shape[0]))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = model.generate(**generate_kwargs)
    finally:
        handle.remove()
    return result, seen


@pytest.mark.parametrize("name", ["cs_gptj", "cs_mpt", "cs_pegasus", "cs_roberta_left_eos", "cs_pegasus_min_length"])
def test_low_memory_runs_candidates_one_at_a_time(reference, name):
    """With low_memory every forward sees the batch's own rows (the cache is never repeated top_k times),
    top_k forwards per new token, and the tokens and scores are the reference's batched ones."""
    summary, expected, models, tensors = reference
    model, inputs, kwargs = CASES[name]
    arguments = dict({arg: tensors[key] for arg, key in inputs.items()}, **kwargs)
    rows, k = tensors[inputs["input_ids"]].shape[0], kwargs["top_k"]
    result, seen = _forward_batches(models[model], low_memory=True, **arguments)
    _assert_matches(summary, expected, name, result, tensors)
    new_tokens = result.sequences.shape[1] - (1 if model == "pegasus" else tensors[inputs["input_ids"]].shape[1])
    assert len(seen) == 1 + k * new_tokens
    assert {batch for batch, _ in seen} == {rows}
    assert {cached for _, cached in seen[1:]} == {rows}
    # The batched path, for contrast: rows x top_k candidates in one forward, on a repeated cache.
    _, seen = _forward_batches(models[model], **arguments)
    assert len(seen) == 1 + new_tokens and {batch for batch, _ in seen[1:]} == {rows * k}


@pytest.mark.parametrize("name", ["states_cs_mpt", "states_cs_pegasus", "states_attentions_only_cs_pegasus"])
def test_low_memory_attentions_and_hidden_states(reference, name):
    """Where 4.37's sequential path fails (several prompt rows, output_attentions), low_memory gives what
    its batched path gives, attentions and hidden states included."""
    summary, expected, models, tensors = reference
    _assert_matches(summary, expected, name, _run(models, tensors, name, low_memory=True), tensors)


def test_state_cases_are_not_trivial(reference):
    """The state cases differ from one another: each mode's attentions come from its own search."""
    summary, expected, _, _ = reference
    for model in ("mpt", "pegasus"):
        sequences = {mode: expected[f"states_{mode}_{model}.sequences"] for mode in STATE_MODES}
        assert not torch.equal(sequences["greedy"], sequences["cs"]), model
        assert not torch.equal(sequences["greedy"], sequences["sample"]), model
        assert all("states" in summary[f"states_{mode}_{model}"] for mode in STATE_MODES)
    assert (expected["states_greedy_mpt.sequences"][:, 6:] == 40).sum() < \
        (expected["states_constrained_mpt.sequences"][:, 6:] == 40).sum()


def test_group_beam_search_groups_differ(reference):
    """The diversity penalty matters: group beam search returns other sequences than plain beam search."""
    _, expected, models, tensors = reference
    for name in ("gbs_roberta_three_groups", "gbs_pegasus"):
        model, inputs, kwargs = CASES[name]
        plain = dict(kwargs, num_beam_groups=1, diversity_penalty=0.0, return_dict_in_generate=False,
                     output_scores=False)
        beams = models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()}, **plain)
        assert not torch.equal(beams, expected[f"{name}.sequences"]), name


@pytest.mark.parametrize("settings, argument", [
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=True), "do_sample"),
    (dict(num_beams=4, num_beam_groups=3, diversity_penalty=1.0), "num_beam_groups"),
    (dict(num_beams=4, num_beam_groups=2), "diversity_penalty"),
])
def test_group_beam_search_settings_are_checked(reference, settings, argument):
    _, _, models, tensors = reference
    with pytest.raises(ValueError, match=argument):
        models["roberta"].generate(tensors["ids"], max_new_tokens=3, **settings)


PROCESSOR_SETTINGS = {
    "sequence_bias": "sequence_bias", "sequence_bias_beam": "sequence_bias",
    "encoder_repetition_penalty": "encoder_repetition_penalty",
    "encoder_repetition_penalty_decoder_only": "encoder_repetition_penalty",
    "encoder_no_repeat_ngram": "encoder_no_repeat_ngram_size", "encoder_no_repeat_ngram_beam": "encoder_no_repeat_ngram_size",
    "exponential_decay": "exponential_decay_length_penalty", "exponential_decay_pegasus": "exponential_decay_length_penalty",
    "epsilon_sample": "epsilon_cutoff", "eta_sample": "eta_cutoff", "eta_beam_sample": "eta_cutoff",
}


@pytest.mark.parametrize("name", list(PROCESSOR_SETTINGS))
def test_processor_cases_are_not_trivial(reference, name):
    """Each setting changes the result (tokens or scores) the reference gave: the cases test something."""
    _, expected, models, tensors = reference
    model, inputs, kwargs = CASES[name]
    kwargs = {k: v for k, v in kwargs.items() if k != PROCESSOR_SETTINGS[name]}
    torch.manual_seed(0)
    result = models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()}, **kwargs)
    same = torch.equal(result.sequences, expected[f"{name}.sequences"]) and all(
        torch.equal(step, expected[f"{name}.scores.{i}"]) for i, step in enumerate(result.scores)
    )
    assert not same, f"{name}: {PROCESSOR_SETTINGS[name]} changed nothing"


@pytest.mark.parametrize("settings, argument", [
    (dict(force_words_ids=[[5, -1]], num_beams=2), "force_words_ids"),
    (dict(guidance_scale="strong"), "guidance_scale"),
    (dict(sequence_bias={(5,): "a lot"}), "sequence_bias"),
    (dict(sequence_bias={5: 1.0}), "sequence_bias"),
    (dict(exponential_decay_length_penalty=(2,)), "exponential_decay_length_penalty"),
    (dict(encoder_repetition_penalty=0.0), "encoder_repetition_penalty"),
    (dict(penalty_alpha=-0.5, top_k=4), "penalty_alpha"),
    (dict(do_sample=True, epsilon_cutoff=1.5), "epsilon_cutoff"),
])
def test_unsupported_or_bad_settings_are_named(reference, settings, argument):
    _, _, models, tensors = reference
    with pytest.raises(ValueError, match=argument):
        models["roberta"].generate(tensors["ids"], max_new_tokens=3, **settings)


# -- eos_token_id=None / pad_token_id=None fall back to the model's own tokens (issue 12) -------------------


@pytest.mark.parametrize("mode", list(FALLBACK_MODES))
def test_eos_none_is_not_no_end_token(reference, mode):
    """The fallback shows: with eos_token_id=None the reference stops at the model's end token (2), which
    "no end token" (eos_token_id=[], also the reference's) does not, so treating None as "no end token"
    would give other tokens (beam searches: other beams win once hypotheses end at token 2)."""
    _, expected, models, tensors = reference
    fallback, empty = expected[f"eos_none_{mode}.sequences"], expected[f"eos_empty_{mode}.sequences"]
    assert fallback.shape != empty.shape or not torch.equal(fallback, empty), mode
    if FALLBACK_MODES[mode].get("num_beams", 1) == 1:  # a row ends at token 2 and is padded after it
        generated = fallback[:, tensors["ids"].shape[1]:-1]
        ended = [row for row in range(generated.shape[0]) if (generated[row] == 2).any()]
        assert ended, f"{mode}: no row ended early\n{fallback}"
        for row in ended:
            after = generated[row, int((generated[row] == 2).nonzero()[0]) + 1:]
            assert bool((after == PAD).all()), fallback
        # while with no end token (eos_token_id=[]) the rows run on
        assert not (expected[f"eos_empty_{mode}.sequences"][ended, -1] == PAD).all()


def test_eos_none_in_a_generation_config(reference):
    """A GenerationConfig whose eos_token_id is None does the same as the keyword argument."""
    _, expected, models, tensors = reference
    config = polyformers.GenerationConfig(max_new_tokens=10, eos_token_id=None, pad_token_id=PAD)
    result = models["gptj_eos"].generate(tensors["ids"], generation_config=config)
    assert torch.equal(result, expected["eos_none_greedy.sequences"])
    # and an end token given explicitly is the same as the model's own one
    assert torch.equal(models["gptj_eos"].generate(tensors["ids"], max_new_tokens=10, eos_token_id=2, pad_token_id=PAD),
                       result)


def test_eos_none_skips_min_new_tokens(reference):
    """min_new_tokens bans the end token only when one is given: with eos_token_id=None the model's end token
    comes within the first 6 new tokens and ends the row; with eos_token_id=2 it cannot."""
    _, expected, models, tensors = reference
    fallback = expected["eos_none_min_new_tokens.sequences"][:, tensors["ids"].shape[1]:]
    assert (fallback[:, :5] == 2).any()
    explicit = models["gptj_eos"].generate(tensors["ids"], **dict(CASES["eos_none_min_new_tokens"][2], eos_token_id=2))
    assert not (explicit.sequences[:, tensors["ids"].shape[1]:][:, :6] == 2).any()
    assert not torch.equal(explicit.sequences, expected["eos_none_min_new_tokens.sequences"])


@pytest.mark.parametrize("name", list(REFUSED))
def test_eos_from_the_model_without_a_pad_token_is_refused(reference, name):
    """Without any pad token, the model's end token is refused where 4.37 refuses it: before the first step
    in the modes that pad every step, when beams need padding in beam searches."""
    summary, _, models, tensors = reference
    assert summary[name]["error"].startswith("ValueError") and "pad_token" in summary[name]["error"], summary[name]
    message = r"pad_token_id: needed .* given None.*eos_token_id=2" if name in PADS_EVERY_STEP else \
        r"pad_token_id: needed .* given None"
    with pytest.raises(ValueError, match=message):
        _run(models, tensors, name)


def test_no_end_token_without_a_pad_token_is_refused(reference):
    """eos_token_id=[] cannot stand in for a missing pad token (4.37 fails there with an IndexError)."""
    _, _, models, tensors = reference
    with pytest.raises(ValueError, match=r"pad_token_id: needed with eos_token_id=\[\] .* given None"):
        models["gptj_eos"].generate(tensors["ids"], max_new_tokens=2, eos_token_id=[])
    with pytest.raises(ValueError, match=r"eos_token_id': expected a token id >= 0 or a list of them or None, given -1"):
        models["gptj_eos"].generate(tensors["ids"], max_new_tokens=2, eos_token_id=-1)

"""Constrained beam search, forced decoder ids and classifier-free guidance, against the reference's 4.37.

The reference builds perturbed random tiny models (RoBERTa decoder, GPT-J, MPT, Pegasus), saves them and
runs every case in one subprocess (tests/pt/_generation_modes_oracle.py); polyformers loads the
folders and runs the same cases. Sequences must be identical, scores equal within 1e-4; cases where the
reference raises must raise here too, with an error naming the argument.
"""

from __future__ import annotations

import pytest
import torch

import polyformers

from ._generation_common import IDS, LEFT, MODELS, PAD, SCORES, SOURCE, assert_matches_reference, prompt_tensors
from ._generation_common import one_thread, run_reference  # noqa: F401  (one_thread: an autouse fixture)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = prompt_tensors(g)
    negative = torch.randint(10, 99, (2, 3), generator=g)
    negative_left = torch.randint(10, 99, (3, 4), generator=g)
    negative_left_mask = torch.ones_like(negative_left)
    negative_left[1, :1] = PAD
    negative_left_mask[1, :1] = 0
    return dict(tensors, negative=negative, negative_left=negative_left, negative_left_mask=negative_left_mask)


# name: (model, inputs, generate kwargs); "constraints" as ["phrasal", ids] / ["disjunctive", [ids, ...]]
CASES = {
    # constrained beam search
    "fw_roberta": ("roberta", IDS, dict(force_words_ids=[[40, 41]], num_beams=3, max_new_tokens=8, **SCORES)),
    "fw_roberta_disjunctive": ("roberta", LEFT, dict(
        force_words_ids=[[[20, 21], [20, 22], [33]], [[50], [57, 93]]], num_beams=4, num_return_sequences=2,
        eos_token_id=5, pad_token_id=PAD, max_new_tokens=9, return_dict_in_generate=True)),
    "fw_roberta_shared_prefix": ("roberta", IDS, dict(
        force_words_ids=[[[15, 16], [15, 17], [15, 18, 19]]], num_beams=3, eos_token_id=5, pad_token_id=PAD,
        max_new_tokens=8, **SCORES)),
    "constraints_gptj": ("gptj", IDS, dict(
        constraints=[["phrasal", [30, 31, 32]], ["disjunctive", [[12], [44, 45]]]], num_beams=3, length_penalty=0.7,
        early_stopping=True, max_new_tokens=10, **SCORES)),
    "fw_gptj_never": ("gptj", IDS, dict(force_words_ids=[[7]], num_beams=2, early_stopping="never",
                                        no_repeat_ngram_size=2, max_new_tokens=8)),
    "fw_gptj_ignores_sampling": ("gptj", IDS, dict(force_words_ids=[[70, 71]], num_beams=2, do_sample=True,
                                                   max_new_tokens=6)),
    "fw_and_constraints_mpt": ("mpt", LEFT, dict(force_words_ids=[[60, 61]], constraints=[["phrasal", [25]]],
                                                 num_beams=3, num_return_sequences=3, max_new_tokens=8, **SCORES)),
    "fw_mpt_plain": ("mpt", LEFT, dict(force_words_ids=[[[77], [78, 79]]], num_beams=2, max_new_tokens=7)),
    "fw_pegasus": ("pegasus", SOURCE, dict(force_words_ids=[[10, 11]], num_beams=3, max_new_tokens=10, **SCORES)),
    "constraints_pegasus": ("pegasus", SOURCE, dict(
        constraints=[["disjunctive", [[20, 21], [20, 25]]], ["phrasal", [30]]], num_beams=4, num_return_sequences=2,
        length_penalty=1.5, min_length=4, max_new_tokens=12, **SCORES)),
    # forced decoder ids
    "fdi_roberta": ("roberta", IDS, dict(forced_decoder_ids=[[5, 30], [7, 31]], max_new_tokens=6, **SCORES)),
    "fdi_gptj_sample": ("gptj", LEFT, dict(forced_decoder_ids=[[6, 44], [8, 9]], do_sample=True, top_k=8,
                                           max_new_tokens=6, **SCORES)),
    "fdi_pegasus_beam": ("pegasus", SOURCE, dict(forced_decoder_ids=[[1, 7], [3, 9]], num_beams=2, max_new_tokens=6,
                                                 **SCORES)),
    "fdi_pegasus_begin_suppress": ("pegasus", SOURCE, dict(forced_decoder_ids=[[1, 7]], begin_suppress_tokens=[1, 8, 9],
                                                           max_new_tokens=5, **SCORES)),
    # classifier-free guidance
    "cfg_roberta": ("roberta", IDS, dict(guidance_scale=1.5, max_new_tokens=8, **SCORES)),
    "cfg_roberta_no_cache": ("roberta", IDS, dict(guidance_scale=1.5, use_cache=False, max_new_tokens=6, **SCORES)),
    "cfg_gptj_negative": ("gptj", dict(IDS, negative_prompt_ids="negative"), dict(guidance_scale=2.0, max_new_tokens=8,
                                                                                 **SCORES)),
    "cfg_gptj_sample": ("gptj", IDS, dict(guidance_scale=3.0, do_sample=True, top_k=10, max_new_tokens=8, **SCORES)),
    "cfg_gptj_beam": ("gptj", IDS, dict(guidance_scale=1.5, num_beams=2, max_new_tokens=6, **SCORES)),
    "cfg_mpt_negative_masked": ("mpt", dict(LEFT, negative_prompt_ids="negative_left",
                                            negative_prompt_attention_mask="negative_left_mask"),
                                dict(guidance_scale=1.8, max_new_tokens=8, **SCORES)),
    "cfg_gptj_plain": ("gptj", LEFT, dict(guidance_scale=1.5, max_new_tokens=8)),
    "cfg_scale_one": ("mpt", LEFT, dict(guidance_scale=1.0, max_new_tokens=5, **SCORES)),
}

# Settings the reference refuses: name -> (model, inputs, generate kwargs, argument our error names).
ERRORS = {
    "err_constraints_sample": ("gptj", IDS, dict(constraints=[["phrasal", [5]]], num_beams=2, do_sample=True,
                                                 max_new_tokens=3), "do_sample"),
    "err_constraints_groups": ("gptj", IDS, dict(constraints=[["phrasal", [5]]], num_beams=4, num_beam_groups=2,
                                                 diversity_penalty=1.0, max_new_tokens=3), "num_beam_groups"),
    "err_force_words_groups": ("gptj", IDS, dict(force_words_ids=[[5]], num_beams=4, num_beam_groups=2,
                                                 diversity_penalty=1.0, max_new_tokens=3), "num_beam_groups"),
    "err_force_words_one_beam": ("gptj", IDS, dict(force_words_ids=[[5]], max_new_tokens=3), "num_beams"),
    "err_force_words_not_list": ("gptj", IDS, dict(force_words_ids=5, num_beams=2, max_new_tokens=3),
                                 "force_words_ids"),
    "err_force_words_empty": ("gptj", IDS, dict(force_words_ids=[], num_beams=2, max_new_tokens=3), "force_words_ids"),
    "err_force_words_empty_word": ("gptj", IDS, dict(force_words_ids=[[]], num_beams=2, max_new_tokens=3),
                                   "force_words_ids"),
    "err_force_words_negative": ("gptj", IDS, dict(force_words_ids=[[4, -1]], num_beams=2, max_new_tokens=3),
                                 "force_words_ids"),
    "err_force_words_flat": ("gptj", IDS, dict(force_words_ids=[5, 6], num_beams=2, max_new_tokens=3),
                             "force_words_ids"),
    "err_force_words_prefix": ("gptj", IDS, dict(force_words_ids=[[[5], [5, 6]]], num_beams=2, max_new_tokens=3),
                               "force_words_ids"),
    "err_force_words_vocabulary": ("gptj", IDS, dict(force_words_ids=[[500]], num_beams=2, max_new_tokens=3),
                                   "force_words_ids"),
    "err_guidance_pegasus": ("pegasus", SOURCE, dict(guidance_scale=1.5, max_new_tokens=3), "guidance_scale"),
}


def _job_runs():
    runs = [dict(name=name, model=model, inputs=inputs, kwargs=kwargs)
            for name, (model, inputs, kwargs) in CASES.items()]
    runs += [dict(name=name, model=model, inputs=inputs, kwargs=kwargs)
             for name, (model, inputs, kwargs, _) in ERRORS.items()]
    return runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory, legacy_python):
    tensors = _tensors()
    summary, expected, models = run_reference(tmp_path_factory.mktemp("generation_constrained"), legacy_python,
                                              tensors, MODELS, _job_runs())
    return summary, expected, models, tensors


def _kwargs(kwargs: dict) -> dict:
    if "constraints" in kwargs:
        kinds = {"phrasal": polyformers.PhrasalConstraint, "disjunctive": polyformers.DisjunctiveConstraint}
        kwargs = dict(kwargs, constraints=[kinds[kind](ids) for kind, ids in kwargs["constraints"]])
    return kwargs


def _generate(models, tensors, model, inputs, kwargs, **extra):
    torch.manual_seed(0)
    return models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()}, **_kwargs(kwargs), **extra)


@pytest.mark.parametrize("name", list(CASES))
def test_generate_matches_reference(reference, name):
    summary, expected, models, tensors = reference
    model, inputs, kwargs = CASES[name]
    assert_matches_reference(summary, expected, name, _generate(models, tensors, model, inputs, kwargs))


@pytest.mark.parametrize("name", list(ERRORS))
def test_reference_errors_are_errors_naming_the_argument(reference, name):
    summary, _, models, tensors = reference
    model, inputs, kwargs, argument = ERRORS[name]
    assert "error" in summary[name], f"{name}: the reference accepted it: {summary[name]}"
    with pytest.raises(ValueError, match=argument):
        _generate(models, tensors, model, inputs, kwargs)


def _words(ids: list, words: list) -> bool:
    """Whether ``ids`` contains one of ``words`` contiguously."""
    return any(ids[i : i + len(w)] == w for w in words for i in range(len(ids) - len(w) + 1))


@pytest.mark.parametrize("name", ["fw_roberta", "fw_roberta_disjunctive", "fw_roberta_shared_prefix",
                                  "constraints_gptj", "fw_pegasus", "constraints_pegasus", "fw_and_constraints_mpt"])
def test_constraints_are_met_and_change_the_result(reference, name):
    """Every returned sequence contains every forced word (one of each disjunction), and plain beam search
    with the same settings returns other sequences: the cases test the constraints."""
    _, expected, models, tensors = reference
    model, inputs, kwargs = CASES[name]
    groups = []
    for entry in kwargs.get("force_words_ids", []):
        groups.append(entry if isinstance(entry[0], list) else [entry])
    for kind, ids in kwargs.get("constraints", []):
        groups.append(ids if kind == "disjunctive" else [ids])
    prompt = tensors[inputs["input_ids"]].shape[1] if model != "pegasus" else 0
    sequences = expected[f"{name}.sequences"].tolist()
    per_prompt = kwargs.get("num_return_sequences", 1)
    met = [all(_words(row[prompt:], words) for words in groups) for row in sequences]
    # Some sequence of each prompt meets them. Not necessarily all, nor the first: when fewer beams meet
    # them than num_return_sequences asks for, the reference adds every running beam, and those may score
    # better.
    assert all(any(met[i : i + per_prompt]) for i in range(0, len(met), per_prompt)), f"{name}: {sequences} / {met}"
    plain = {k: v for k, v in kwargs.items() if k not in ("force_words_ids", "constraints")}
    result = _generate(models, tensors, model, inputs, plain)
    assert not torch.equal(result.sequences, expected[f"{name}.sequences"]), name


@pytest.mark.parametrize("name, setting", [("fdi_roberta", "forced_decoder_ids"),
                                           ("fdi_pegasus_beam", "forced_decoder_ids"),
                                           ("fdi_pegasus_begin_suppress", "forced_decoder_ids"),
                                           ("cfg_roberta", "guidance_scale"), ("cfg_gptj_negative", "guidance_scale"),
                                           ("cfg_mpt_negative_masked", "guidance_scale"),
                                           ("cfg_gptj_sample", "guidance_scale")])
def test_settings_change_the_result(reference, name, setting):
    """Without the setting, the reference's sequences or scores come out different."""
    _, expected, models, tensors = reference
    model, inputs, kwargs = CASES[name]
    kwargs = {k: v for k, v in kwargs.items() if k != setting}
    inputs = {k: v for k, v in inputs.items() if not k.startswith("negative_prompt")}
    result = _generate(models, tensors, model, inputs, kwargs)
    same = torch.equal(result.sequences, expected[f"{name}.sequences"]) and all(
        torch.equal(step, expected[f"{name}.scores.{i}"]) for i, step in enumerate(result.scores)
    )
    assert not same, f"{name}: {setting} changed nothing"


def test_forced_tokens_are_at_their_positions(reference):
    _, expected, _, tensors = reference
    sequences = expected["fdi_roberta.sequences"]
    assert sequences[:, 5].tolist() == [30, 30] and sequences[:, 7].tolist() == [31, 31]
    sequences = expected["fdi_pegasus_beam.sequences"]
    assert sequences[:, 1].tolist() == [7, 7, 7] and sequences[:, 3].tolist() == [9, 9, 9]
    # begin_suppress_tokens start after the last forced position: the step after the forced token.
    first, second = expected["fdi_pegasus_begin_suppress.scores.0"], expected["fdi_pegasus_begin_suppress.scores.1"]
    assert torch.isfinite(first).nonzero()[:, 1].unique().tolist() == [7]
    assert torch.isinf(second[:, [1, 8, 9]]).all() and torch.isfinite(second).sum(dim=1).tolist() == [57, 57, 57]


@pytest.mark.parametrize("settings, argument", [
    (dict(force_words_ids=[(5, 6)], num_beams=2), "force_words_ids"),
    (dict(force_words_ids=[[[5], []]], num_beams=2), "force_words_ids"),
    (dict(constraints=[[5, 6]], num_beams=2), "constraints"),
    (dict(constraints=[], num_beams=2), "constraints"),
    (dict(forced_decoder_ids=[[1]]), "forced_decoder_ids"),
    (dict(forced_decoder_ids=[[1, -3]]), "forced_decoder_ids"),
    (dict(guidance_scale="strong"), "guidance_scale"),
])
def test_bad_settings_are_named(reference, settings, argument):
    _, _, models, tensors = reference
    with pytest.raises(ValueError, match=argument):
        models["gptj"].generate(tensors["ids"], max_new_tokens=3, **settings)
    with pytest.raises(ValueError, match=argument):
        polyformers.GenerationConfig(**settings)


def test_negative_prompt_rows_are_checked(reference):
    _, _, models, tensors = reference
    with pytest.raises(ValueError, match="negative_prompt_ids"):
        models["gptj"].generate(tensors["ids"], max_new_tokens=3, guidance_scale=1.5,
                                negative_prompt_ids=tensors["negative_left"])


def test_constraint_classes():
    """The constraint state machines, step by step, as the reference documents them."""
    phrase = polyformers.PhrasalConstraint([4, 5, 6])
    assert phrase.advance() == 4 and phrase.remaining() == 3
    assert phrase.update(4) == (True, False, False) and phrase.advance() == 5
    assert phrase.update(9) == (False, False, True) and phrase.advance() == 4
    for token in (4, 5, 6):
        stepped, completed, _ = phrase.update(token)
    assert completed and phrase.remaining() == 0 and phrase.advance() is None
    either = polyformers.DisjunctiveConstraint([[1, 2, 3], [1, 4]])
    assert sorted(either.advance()) == [1] and either.seqlen == 3
    assert either.update(1) == (True, False, False) and sorted(either.advance()) == [2, 4]
    assert either.update(4) == (True, True, False) and either.remaining() == 0
    state = polyformers.ConstraintListState([polyformers.PhrasalConstraint([7, 8]),
                                             polyformers.DisjunctiveConstraint([[3], [9, 9]])])
    assert sorted(state.advance()) == [3, 7, 9]
    state.reset([7, 1, 3, 7])
    assert state.get_bank() == 2 + 1 and state.advance() == [8] and not state.completed
    state.add(8)
    assert state.completed and state.get_bank() == 4
    with pytest.raises(ValueError, match="token_ids"):
        polyformers.PhrasalConstraint([])
    with pytest.raises(ValueError, match="nested_token_ids"):
        polyformers.DisjunctiveConstraint([[1], [1, 2]])

    class NeverDone(polyformers.Constraint):
        seqlen = 1

        def advance(self):
            return 1

        def does_advance(self, token_id):
            return True

        def update(self, token_id):
            return True, False, False

        def reset(self):
            pass

        def remaining(self):
            return 1

        def copy(self, stateful=False):
            return self

    with pytest.raises(Exception, match="never completes"):
        NeverDone()


def test_beam_indices_when_some_returned_beams_miss_the_constraints(reference):
    """With more sequences asked for than beams meeting the constraints, the reference fills up with beams
    that do not, without their beam trail, and then fails building ``beam_indices`` ("Could not infer dtype
    of NoneType"). Here the same sequences come back, and those beams get a trail of -1s."""
    _, expected, models, tensors = reference
    model, inputs, kwargs = CASES["fw_roberta_disjunctive"]
    result = _generate(models, tensors, model, inputs, dict(kwargs, output_scores=True))
    assert torch.equal(result.sequences, expected["fw_roberta_disjunctive.sequences"])
    indices = result.beam_indices
    assert indices.shape == result.sequences.shape
    prompt = tensors["left"].shape[1]
    missing = (indices == -1).all(dim=1)
    assert 0 < int(missing.sum()) < indices.shape[0]  # some rows have trails, some do not
    trailed = indices[~missing]
    # A trail names, for each generated token, the row (prompt * num_beams + beam) it came from.
    assert bool((trailed[:, : result.sequences.shape[1] - prompt - 1] >= 0).all())


class _Phrase(polyformers.Constraint):
    """A user-defined constraint (the same as PhrasalConstraint), through the base class's self-test."""

    def __init__(self, token_ids, done=0):
        self.token_ids, self.done, self.seqlen = token_ids, done, len(token_ids)
        super().__init__()
        self.done = done

    def advance(self):
        return None if self.done == self.seqlen else self.token_ids[self.done]

    def does_advance(self, token_id):
        return self.done < self.seqlen and token_id == self.token_ids[self.done]

    def update(self, token_id):
        if not self.does_advance(token_id):
            self.reset()
            return False, False, True
        self.done += 1
        return True, self.done == self.seqlen, False

    def reset(self):
        self.done = 0

    def remaining(self):
        return self.seqlen - self.done

    def copy(self, stateful=False):
        return _Phrase(self.token_ids, self.done if stateful else 0)


def test_user_defined_constraint(reference):
    _, expected, models, tensors = reference
    model, inputs, kwargs = CASES["fw_roberta"]
    kwargs = {k: v for k, v in kwargs.items() if k != "force_words_ids"}
    result = _generate(models, tensors, model, inputs, kwargs, constraints=[_Phrase([40, 41])])
    assert torch.equal(result.sequences, expected["fw_roberta.sequences"])

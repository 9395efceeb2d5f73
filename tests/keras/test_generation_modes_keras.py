"""The TF generate modes of 4.37 beyond greedy, sampling and beam search: contrastive search
(``penalty_alpha``, ``top_k``), ``forced_decoder_ids``, and ``output_attentions`` / ``output_hidden_states``.

Two oracles on the same perturbed checkpoint: the reference's 4.37 TF ``generate`` (one subprocess for all
cases, started by the fixture and read by the tests that need it) and polyformers' PyTorch ``generate``.
Sequences must be identical, scores and attention weights within 1e-4.

Where the oracles part: the 4.37 TF contrastive search under XLA gives other tokens than its own eager run
(and than PyTorch); ours gives the eager tokens in both, which is what the test under XLA checks. The 4.37 TF
``generate`` returns an empty list for ``hidden_states`` of a decoder-only model (it records them for
encoder-decoders only); ours returns them as its documentation describes, checked against PyTorch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import torch

import polyformers as P
from polyformers.keras import generation as G

from .test_generation_keras import EOS, MASK, PAD, PROMPTS, TINY, perturbed_decoder

NEW = 12
START = PROMPTS.shape[1]
CONTRASTIVE = dict(penalty_alpha=0.6, top_k=4)

# Eager cases run by the 4.37 reference; every one returns a dict with the scores of each step.
CASES = {
    "contrastive": dict(CONTRASTIVE, eos_token_id=None),
    # Rows end at different steps, a processor changes the candidates; top_k 3, another penalty.
    "contrastive_eos": dict(penalty_alpha=0.4, top_k=3, eos_token_id=[75, 57], repetition_penalty=1.3),
    # The reference's TF rule: contrastive search whatever num_beams says.
    "contrastive_beams": dict(CONTRASTIVE, num_beams=3, eos_token_id=None),
    "contrastive_attentions": dict(CONTRASTIVE, eos_token_id=None, output_attentions=True),
    "greedy_attentions": dict(eos_token_id=None, output_attentions=True),
    # Row 0 ends (token 2) before position 9: a forced token never replaces the padding after the end.
    "forced": dict(eos_token_id=EOS, forced_decoder_ids=[[7, 5], [9, 40], [10, None]]),
    "forced_beams": dict(num_beams=2, eos_token_id=None, forced_decoder_ids=[[8, 33]]),
    # Seeded sampling: the reference draws every step with the given seed, so its tokens are reproducible.
    "sample_top_k": dict(do_sample=True, seed=[7, 11], top_k=10, temperature=0.9, eos_token_id=EOS),
    "sample_top_p": dict(do_sample=True, seed=[3, 5], top_p=0.9, eos_token_id=EOS),
    "sample_two": dict(do_sample=True, seed=[1, 2], top_k=20, num_return_sequences=2, eos_token_id=[EOS, 75]),
    # Refusals: the reference raises for both.
    "contrastive_two_sequences": dict(CONTRASTIVE, num_beams=3, num_return_sequences=2, eos_token_id=None),
    "contrastive_top_k_too_big": dict(penalty_alpha=0.6, top_k=500, eos_token_id=None),
}
REFUSED = ["contrastive_two_sequences", "contrastive_top_k_too_big"]
# eos_token_id=None (issue 12): 4.37's TF loops replace it by the model's own generation_config end token, here
# set to tokens this draw produces early (19, 39); the processors (min_length) see None. With no pad
# token anywhere, greedy search, sampling and contrastive search refuse, beam search pads with 0.
OWN_EOS = {"eos_token_id": [19, 39]}
NO_PAD = {"eos_token_id": [19, 39], "pad_token_id": None}
FALLBACK = {
    "eos_none_greedy": (dict(eos_token_id=None), OWN_EOS),
    "eos_none_sample": (dict(do_sample=True, seed=[7, 11], top_k=10, eos_token_id=None), OWN_EOS),
    "eos_none_beam": (dict(num_beams=3, eos_token_id=None), OWN_EOS),
    "eos_none_contrastive": (dict(CONTRASTIVE, eos_token_id=None), OWN_EOS),
    "eos_none_min_length": (dict(eos_token_id=None, min_length=START + 5), OWN_EOS),
    "eos_none_pad_none": (dict(eos_token_id=None, pad_token_id=None), OWN_EOS),  # the model's pad (1) pads
    "no_pad_beam": (dict(num_beams=3, eos_token_id=None, pad_token_id=None), NO_PAD),
}
# "No end token": eos_token_id=[] (4.37's PyTorch generate takes it; its TF generate fails on it, and has no
# other way to say it). Ours takes it in both, and gives what polyformers' PyTorch generate gives.
EMPTY = {"eos_empty_greedy": dict(eos_token_id=[], pad_token_id=PAD),
         "eos_empty_beam": dict(num_beams=3, eos_token_id=[], pad_token_id=PAD)}
FALLBACK_REFUSED = {
    "no_pad_greedy": (dict(eos_token_id=None, pad_token_id=None), NO_PAD),
    "no_pad_sample": (dict(do_sample=True, seed=[7, 11], top_k=10, eos_token_id=None), NO_PAD),
    "no_pad_contrastive": (dict(CONTRASTIVE, eos_token_id=None), NO_PAD),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, legacy_python):
    folder = tmp_path_factory.mktemp("tf_modes")
    pt = perturbed_decoder(folder)
    cases = {name: {"settings": dict(case, max_new_tokens=NEW, output_scores=True)} for name, case in CASES.items()}
    cases.update({name: {"settings": dict(case, max_new_tokens=NEW, output_scores=True), "model_generation_config": own}
                  for name, (case, own) in {**FALLBACK, **FALLBACK_REFUSED}.items()})
    cases.update({name: {"settings": dict(case, max_new_tokens=NEW, output_scores=True), "model_generation_config": OWN_EOS}
                  for name, case in EMPTY.items()})
    job = dict(folder=str(folder), prompts=PROMPTS.tolist(), mask=MASK.tolist(), cases=cases)
    (folder / "job.json").write_text(json.dumps(job))
    worker = Path(__file__).with_name("_generation_modes_oracle.py")
    # The reference runs in its own interpreter while the tests that need no reference run.
    oracle = subprocess.Popen([str(legacy_python), str(worker), str(folder / "job.json"), str(folder / "out.npz")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}

    def reference():
        if not results:
            stdout, stderr = oracle.communicate(timeout=300)
            assert oracle.returncode == 0 and "@@" in stdout, stderr[-3000:]
            results["report"] = json.loads(stdout.split("@@", 1)[1])
            results["arrays"] = dict(np.load(folder / "out.npz"))
        return results["report"], results["arrays"]

    yield pt, P.TFRobertaForCausalLM.from_pretrained(folder), reference
    if oracle.poll() is None:
        oracle.kill()


def _tf(model, **settings):
    return model.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), max_new_tokens=NEW,
                          return_dict_in_generate=True, output_scores=True, **settings)


def _pt(pt, **settings):
    with torch.no_grad():
        return pt.generate(torch.as_tensor(PROMPTS), attention_mask=torch.as_tensor(MASK), max_new_tokens=NEW,
                           return_dict_in_generate=True, output_scores=True, **settings)


def _assert_scores(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        mine, reference = np.asarray(mine), np.asarray(reference)
        np.testing.assert_array_equal(np.isinf(mine), np.isinf(reference))
        np.testing.assert_allclose(mine[~np.isinf(mine)], reference[~np.isinf(reference)], atol=1e-4)


def _reference_case(reference, name):
    report, arrays = reference()
    entry = report[name]
    assert "error" not in entry, entry
    scores = [arrays[f"{name}.scores.{i}"] for i in range(entry["scores"])]
    attentions = None
    if entry["attentions"]:
        layers = TINY["num_hidden_layers"]
        attentions = [[arrays[f"{name}.attentions.{i}.{j}"] for j in range(layers)] for i in range(entry["attentions"])]
    return entry, arrays[f"{name}.sequences"], scores, attentions


# -- contrastive search ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contrastive(models):
    _, tf_model, _ = models
    return {name: _tf(tf_model, **CASES[name]) for name in ("contrastive", "contrastive_eos")}


def test_contrastive_search_is_not_greedy(models, contrastive):
    _, tf_model, _ = models
    greedy = tf_model.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), max_new_tokens=NEW,
                               eos_token_id=None).numpy()
    ours = contrastive["contrastive"]
    assert type(ours).__name__ == "TFContrastiveSearchDecoderOnlyOutput"
    assert ours.sequences.shape == (3, START + NEW)
    assert (ours.sequences.numpy() != greedy).any(), "the degeneration penalty should change some choices"


@pytest.mark.parametrize("name", ["contrastive", "contrastive_eos"])
def test_contrastive_search_equals_pytorch(models, contrastive, name):
    pt, _, _ = models
    expected = _pt(pt, **CASES[name])
    ours = contrastive[name]
    np.testing.assert_array_equal(ours.sequences.numpy(), expected.sequences.numpy())
    _assert_scores([s.numpy() for s in ours.scores], [s.numpy() for s in expected.scores])


def test_contrastive_search_under_xla_equals_eager(models, contrastive):
    # One compilation covers contrastive search, a forced token and attentions under XLA.
    _, tf_model, _ = models
    settings = dict(CASES["contrastive_eos"], forced_decoder_ids=[[9, 40]], max_new_tokens=NEW,
                    return_dict_in_generate=True, output_scores=True, output_attentions=True)
    compiled = tf.function(tf_model.generate, jit_compile=True)
    ours = compiled(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), **settings)
    eager = tf_model.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), **settings)
    assert (eager.sequences.numpy()[:, 9] == 40).all()
    assert len(eager.attentions) == len(eager.scores)
    width = eager.sequences.shape[1]
    assert ours.sequences.shape == (3, START + NEW)  # XLA keeps max_length columns, padded after the end
    np.testing.assert_array_equal(ours.sequences.numpy()[:, :width], eager.sequences.numpy())
    assert (ours.sequences.numpy()[:, width:] == PAD).all()
    _assert_scores([s.numpy() for s in ours.scores[: len(eager.scores)]], [s.numpy() for s in eager.scores])
    # As in the reference's TF generate, attentions are collected eagerly only.
    assert ours.attentions == () and ours.hidden_states is None


# -- attentions and hidden states -----------------------------------------------------------------------


@pytest.mark.parametrize("settings", [dict(eos_token_id=None), dict(CONTRASTIVE, eos_token_id=[75, 57])],
                         ids=["greedy", "contrastive"])
def test_hidden_states_equal_pytorch(models, settings):
    pt, tf_model, _ = models
    ours = _tf(tf_model, output_hidden_states=True, **settings)
    expected = _pt(pt, output_hidden_states=True, **settings)
    np.testing.assert_array_equal(ours.sequences.numpy(), expected.sequences.numpy())
    assert ours.attentions is None
    assert len(ours.hidden_states) == len(expected.hidden_states) == ours.sequences.shape[1] - START
    for mine, theirs in zip(ours.hidden_states, expected.hidden_states):
        assert len(mine) == len(theirs) == TINY["num_hidden_layers"] + 1
        for a, b in zip(mine, theirs):
            assert a.shape == tuple(b.shape)
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_attentions_and_hidden_states_in_beam_search(models):
    pt, tf_model, _ = models
    settings = dict(num_beams=3, eos_token_id=None, output_attentions=True, output_hidden_states=True)
    ours = _tf(tf_model, **settings)
    expected = _pt(pt, **settings)
    np.testing.assert_array_equal(ours.sequences.numpy(), expected.sequences.numpy())
    assert len(ours.attentions) == len(expected.attentions) == NEW
    for mine, theirs in zip(ours.attentions + ours.hidden_states, expected.attentions + expected.hidden_states):
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


# -- refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, pattern", [
    ([[7]], r"forced_decoder_ids': expected a non-empty list of \[index >= 0, token id >= 0 or None\] pairs"),
    ([[-1, 5]], r"forced_decoder_ids': expected .* given \[\[-1, 5\]\]"),
    ([[7, 500]], r"forced_decoder_ids: token ids \[500\] are outside the model's vocabulary of 99"),
])
def test_bad_forced_decoder_ids(models, value, pattern):
    _, tf_model, _ = models
    with pytest.raises(ValueError, match=pattern):
        _tf(tf_model, eos_token_id=None, forced_decoder_ids=value)


def test_min_length_beyond_max_length_is_refused_as_in_the_reference(models):
    _, tf_model, _ = models
    with pytest.raises(ValueError, match=rf"min_length: expected at most max_length={START + 3} .* given 30"):
        tf_model.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), max_new_tokens=3, min_length=30)


def test_bad_penalty_alpha(models):
    _, tf_model, _ = models
    with pytest.raises(ValueError, match="penalty_alpha"):
        _tf(tf_model, penalty_alpha=-0.5, top_k=4)


def test_force_tokens_processor_directly():
    processor = G.TFForceTokensLogitsProcessor([[2, 3], [4, None]])
    scores = tf.zeros((2, 6))
    buffer = tf.zeros((2, 8), tf.int32)
    forced = processor(buffer, scores, tf.constant(2)).numpy()
    assert (forced[:, 3] == 0).all() and np.isinf(np.delete(forced, 3, axis=1)).all()
    for cur_len in (1, 3, 4, 7):  # before, between, a free position, after the table
        np.testing.assert_array_equal(processor(buffer, scores, tf.constant(cur_len)).numpy(), scores.numpy())
    with pytest.raises(ValueError, match="forced_decoder_ids"):
        G.TFForceTokensLogitsProcessor([])


# -- against the 4.37 reference (its subprocess has been running meanwhile) -------------------------


@pytest.mark.parametrize("name", ["contrastive", "contrastive_eos"])
def test_contrastive_search_equals_reference(models, contrastive, name):
    _, _, reference = models
    entry, sequences, scores, _ = _reference_case(reference, name)
    assert entry["class"] == "TFContrastiveSearchDecoderOnlyOutput"
    ours = contrastive[name]
    np.testing.assert_array_equal(ours.sequences.numpy(), sequences)
    _assert_scores([s.numpy() for s in ours.scores], scores)
    if name == "contrastive_eos":
        ended = [list(row[START:]).index(PAD) if PAD in row[START:] else NEW for row in sequences]
        assert min(ended) < NEW and len(set(ended)) > 1, f"rows should end at different steps, got {ended}"


def test_contrastive_search_ignores_num_beams_as_the_reference(models, contrastive):
    _, tf_model, reference = models
    ours = _tf(tf_model, **CASES["contrastive_beams"])
    assert type(ours).__name__ == "TFContrastiveSearchDecoderOnlyOutput"
    np.testing.assert_array_equal(ours.sequences.numpy(), contrastive["contrastive"].sequences.numpy())
    entry, sequences, _, _ = _reference_case(reference, "contrastive_beams")
    assert entry["class"] == "TFContrastiveSearchDecoderOnlyOutput"
    np.testing.assert_array_equal(ours.sequences.numpy(), sequences)


@pytest.mark.parametrize("name", ["greedy_attentions", "contrastive_attentions"])
def test_attentions_equal_reference(models, name):
    _, tf_model, reference = models
    ours = _tf(tf_model, **CASES[name])
    entry, sequences, _, attentions = _reference_case(reference, name)
    np.testing.assert_array_equal(ours.sequences.numpy(), sequences)
    assert ours.hidden_states is None
    assert len(ours.attentions) == len(attentions) == NEW
    for step, (mine, theirs) in enumerate(zip(ours.attentions, attentions)):
        assert len(mine) == len(theirs) == TINY["num_hidden_layers"]
        for a, b in zip(mine, theirs):
            # Step 0 covers the prompt; then one query over every position so far.
            expected_shape = (3, TINY["num_attention_heads"], START, START) if step == 0 else \
                (3, TINY["num_attention_heads"], 1, START + step)
            assert a.shape == b.shape == expected_shape
            a = a.numpy()
            if step == 0:  # padding positions attend to nothing: their weights are no one's business
                a, b = a.transpose(0, 2, 1, 3)[MASK == 1], b.transpose(0, 2, 1, 3)[MASK == 1]
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", ["forced", "forced_beams"])
def test_forced_decoder_ids_equal_reference(models, name):
    _, tf_model, reference = models
    ours = _tf(tf_model, **CASES[name])
    _, sequences, scores, _ = _reference_case(reference, name)
    np.testing.assert_array_equal(ours.sequences.numpy(), sequences)
    _assert_scores([s.numpy() for s in ours.scores], scores)
    for index, token in CASES[name]["forced_decoder_ids"]:
        if token is not None:
            ended = (sequences[:, START:index] == EOS).any(axis=1)
            assert (sequences[~ended, index] == token).all() and (sequences[ended, index] == PAD).all()


@pytest.mark.parametrize("name", ["sample_top_k", "sample_top_p", "sample_two"])
def test_seeded_sampling_equals_reference(models, name):
    _, tf_model, reference = models
    settings = dict(CASES[name])
    seed = settings.pop("seed")
    ours = _tf(tf_model, seed=seed, **settings)
    entry, sequences, scores, _ = _reference_case(reference, name)
    assert type(ours).__name__ == entry["class"] == "TFSampleDecoderOnlyOutput"
    np.testing.assert_array_equal(ours.sequences.numpy(), sequences)
    _assert_scores([s.numpy() for s in ours.scores], scores)
    # A draw, not greedy decoding in disguise: some steps take a token other than the most likely one.
    assert any((sequences[:, START + i] != step.argmax(-1)).any() for i, step in enumerate(scores))


def test_refusals_match_the_reference(models):
    _, tf_model, reference = models
    report, _ = reference()
    for name in REFUSED:
        assert "error" in report[name], f"the reference accepted {name}: {report[name]}"
    with pytest.raises(ValueError, match=r"num_return_sequences: contrastive search .* given 2"):
        _tf(tf_model, **CASES["contrastive_two_sequences"])
    with pytest.raises(ValueError, match=r"top_k: .* at most 99, given 500"):
        _tf(tf_model, **CASES["contrastive_top_k_too_big"])


# -- eos_token_id=None / pad_token_id=None fall back to the model's own tokens (issue 12) -------------------


def _with_own(tf_model, own, **settings):
    """Generate with ``own`` set on the model's generation_config for this call only."""
    saved = {key: getattr(tf_model.generation_config, key) for key in own}
    for key, value in own.items():
        setattr(tf_model.generation_config, key, value)
    try:
        return _tf(tf_model, **settings)
    finally:
        for key, value in saved.items():
            setattr(tf_model.generation_config, key, value)


@pytest.mark.parametrize("name", list(FALLBACK))
def test_eos_none_falls_back_as_the_reference(models, name):
    _, tf_model, reference = models
    settings, own = FALLBACK[name]
    ours = _with_own(tf_model, own, **settings)
    entry, sequences, scores, _ = _reference_case(reference, name)
    assert type(ours).__name__ == entry["class"]
    if "num_beams" in settings:
        # 4.37's eager TF beam search returns as many columns as its loop ran, padded (see
        # test_beam_keras.test_beam_search_equals_reference_437); ours stops where PyTorch's does.
        width, pad = ours.sequences.shape[1], PAD if own.get("pad_token_id", PAD) is not None else 0
        assert sequences.shape[1] >= width
        assert (sequences[:, width:] == pad).all(), sequences
        np.testing.assert_array_equal(ours.sequences.numpy(), sequences[:, :width])
        return  # (how many steps of scores each records differs too: test_beam_keras compares the searches)
    np.testing.assert_array_equal(ours.sequences.numpy(), sequences)
    _assert_scores([s.numpy() for s in ours.scores], scores)


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_eos_none_is_not_no_end_token(models, mode):
    """With eos_token_id=None the reference's rows end at the model's end tokens (19, 39) and are padded
    after them; "no end token" (eos_token_id=[], which the reference's TF generate cannot run) gives other
    tokens, the ones polyformers' PyTorch generate gives."""
    pt, tf_model, reference = models
    report, _ = reference()
    assert "error" in report[f"eos_empty_{mode}"], report[f"eos_empty_{mode}"]
    _, fallback, _, _ = _reference_case(reference, f"eos_none_{mode}")
    empty = _with_own(tf_model, OWN_EOS, **EMPTY[f"eos_empty_{mode}"]).sequences.numpy()
    pt.generation_config.eos_token_id = OWN_EOS["eos_token_id"]
    try:
        np.testing.assert_array_equal(empty, _pt(pt, **EMPTY[f"eos_empty_{mode}"]).sequences.numpy())
    finally:
        pt.generation_config.eos_token_id = EOS
    assert fallback.shape != empty.shape or (fallback != empty).any()
    if mode == "greedy":
        generated = fallback[:, START:]
        ended = [row for row in range(len(generated)) if np.isin(generated[row, :-1], [19, 39]).any()]
        assert ended, fallback
        for row in ended:
            first = int(np.flatnonzero(np.isin(generated[row], [19, 39]))[0])
            assert (generated[row, first + 1:] == PAD).all(), fallback


def test_eos_none_skips_min_length(models):
    """min_length sees eos_token_id=None and bans nothing: a row ends at 19 within 5 new tokens."""
    _, tf_model, reference = models
    _, sequences, _, _ = _reference_case(reference, "eos_none_min_length")
    assert np.isin(sequences[:, START:START + 4], [19, 39]).any()
    explicit = _tf(tf_model, eos_token_id=[19, 39], min_length=START + 5)
    assert not np.isin(explicit.sequences.numpy()[:, START:START + 5], [19, 39]).any()


@pytest.mark.parametrize("name", list(FALLBACK_REFUSED))
def test_eos_from_the_model_without_a_pad_token_is_refused(models, name):
    _, tf_model, reference = models
    report, _ = reference()
    assert report[name].get("error") == "ValueError" and "pad_token_id" in report[name]["message"], report[name]
    settings, own = FALLBACK_REFUSED[name]
    with pytest.raises(ValueError, match=r"pad_token_id: needed .* given None.*eos_token_id=\[19, 39\]"):
        _with_own(tf_model, own, **settings)


def test_no_end_token_without_a_pad_token_is_refused(models):
    _, tf_model, _ = models
    with pytest.raises(ValueError, match=r"pad_token_id: needed with eos_token_id=\[\] .* given None"):
        _with_own(tf_model, {"pad_token_id": None}, eos_token_id=[], pad_token_id=None)

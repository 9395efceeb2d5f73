"""TF beam search and logits processors against polyformers' PyTorch generate and the 4.37 TF generate.

The ground truth is our PyTorch RobertaForCausalLM on the same perturbed checkpoint: sequences must be
identical (shape included), ``sequences_scores`` and beam trails equal, for a batch of left-padded prompts of
different lengths, eagerly and under XLA. The reference's 4.37 TF beam search agrees with it except where a
prompt reaches ``max_length`` with only some of its hypotheses finished: PyTorch (and we) then rank the
running beams with them, the 4.37 TF search returns the finished ones only, padding the rest with score -1e9.
(The reference's TF package has no ELECTRA causal LM, so RoBERTa is the model there.)
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import torch

import polyformers as P
from polyformers.keras import generation as G
from polyformers.pt import generation as PG

from .test_generation_keras import MASK, PAD, PROMPTS, TINY, perturbed_decoder

NEW = 12
START = PROMPTS.shape[1]

# Eager cases, each against PyTorch. End-of-sequence ids 4 and 19 are frequent early tokens of this draw:
# hypotheses end at different steps, some prompts finish early and some reach max_length unfilled.
CASES = {
    "no_eos": dict(num_beams=3, eos_token_id=None),
    "two_of_four": dict(num_beams=4, num_return_sequences=2, eos_token_id=None),
    "eos_unfilled": dict(num_beams=3, num_return_sequences=2, eos_token_id=4),
    "eos_short": dict(num_beams=3, num_return_sequences=3, eos_token_id=19),
    "early_stopping": dict(num_beams=3, eos_token_id=19, early_stopping=True),
    "never": dict(num_beams=3, eos_token_id=19, early_stopping="never", length_penalty=2.0),
    "short_penalty": dict(num_beams=3, eos_token_id=19, length_penalty=0.5),
    "two_eos": dict(num_beams=3, num_return_sequences=2, eos_token_id=[4, 19]),
}
# Where the 4.37 TF search agrees with PyTorch; "eos_unfilled" shows where it does not.
REFERENCE_CASES = ["no_eos", "two_of_four", "early_stopping", "short_penalty"]
REFERENCE_PROCESSORS = {
    "repetition": dict(num_beams=2, eos_token_id=None, repetition_penalty=1.5),
    "ngram": dict(num_beams=2, eos_token_id=None, no_repeat_ngram_size=2),
    "bad_words": dict(num_beams=3, eos_token_id=None, bad_words_ids=[[19], [96, 28]]),
    "forced_eos": dict(num_beams=3, eos_token_id=None, forced_eos_token_id=7),
}

_ORACLE = r"""
import json, sys
import numpy as np
job = json.load(open(sys.argv[1]))
import tensorflow as tf
import transformers
model = transformers.TFRobertaForCausalLM.from_pretrained(job["folder"], from_pt=True)
out = {}
for name, case in job["cases"].items():
    result = model.generate(tf.constant(job["prompts"]), attention_mask=tf.constant(job["mask"]),
                            return_dict_in_generate=True, max_new_tokens=job["new"], **case)
    out[name] = {"sequences": result.sequences.numpy().tolist(), "scores": result.sequences_scores.numpy().tolist()}
print("@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory, legacy_python):
    folder = tmp_path_factory.mktemp("tf_beam")
    pt = perturbed_decoder(folder)
    # The reference runs in its own interpreter while the tests below run.
    job = dict(folder=str(folder), prompts=PROMPTS.tolist(), mask=MASK.tolist(), new=NEW,
               cases={name: CASES.get(name) or REFERENCE_PROCESSORS.get(name)
                      for name in [*REFERENCE_CASES, "eos_unfilled", *REFERENCE_PROCESSORS]})
    (folder / "job.json").write_text(json.dumps(job))
    oracle = subprocess.Popen([str(legacy_python), "-c", _ORACLE, str(folder / "job.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    yield pt, P.TFRobertaForCausalLM.from_pretrained(folder), oracle
    if oracle.poll() is None:
        oracle.kill()


def _pt(pt, **settings):
    with torch.no_grad():
        return pt.generate(torch.as_tensor(PROMPTS), attention_mask=torch.as_tensor(MASK), max_new_tokens=NEW,
                           return_dict_in_generate=True, output_scores=True, **settings)


def _tf(model, **settings):
    return model.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), max_new_tokens=NEW,
                          return_dict_in_generate=True, output_scores=True, **settings)


def _assert_same_search(ours, theirs):
    np.testing.assert_array_equal(ours.sequences.numpy(), theirs.sequences.numpy())
    np.testing.assert_allclose(ours.sequences_scores.numpy(), theirs.sequences_scores.numpy(), atol=1e-5)
    # PyTorch pads its trails to the sequence width; ours cover the generated columns.
    generated = ours.sequences.shape[1] - START
    np.testing.assert_array_equal(ours.beam_indices.numpy(), theirs.beam_indices.numpy()[:, :generated])
    assert len(ours.scores) == len(theirs.scores)
    for mine, reference in zip(ours.scores, theirs.scores):
        mine, reference = mine.numpy(), reference.numpy()
        np.testing.assert_array_equal(np.isinf(mine), np.isinf(reference))
        np.testing.assert_allclose(mine[~np.isinf(mine)], reference[~np.isinf(reference)], atol=1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_beam_search_equals_pytorch(models, name):
    pt, tf_model, _ = models
    expected = _pt(pt, **CASES[name])
    ours = _tf(tf_model, **CASES[name])
    assert type(ours).__name__ == "TFBeamSearchDecoderOnlyOutput"
    _assert_same_search(ours, expected)


def test_the_cases_cover_what_they_claim(models):
    pt, _, _ = models
    unfilled = _pt(pt, **CASES["eos_unfilled"]).sequences.numpy()
    ended = (unfilled[:, START:] == 4).any(axis=1)
    assert ended.any() and not ended.all(), "some hypotheses end, others run to max_length"
    for name in ("early_stopping", "two_eos"):  # every prompt done: the loop ends before max_length
        short = _pt(pt, **CASES[name])
        assert short.sequences.shape[1] < START + NEW and len(short.scores) < NEW, name
    assert len({tuple(row) for row in _pt(pt, **CASES["two_of_four"]).sequences.numpy()}) == 6


def test_beam_search_under_xla_equals_pytorch(models):
    """One compiled while_loop with end-of-sequence ids and processors: the PyTorch sequences, then padding
    up to max_length; scores and trails as eagerly."""
    pt, tf_model, _ = models
    settings = dict(num_beams=3, num_return_sequences=2, eos_token_id=4, repetition_penalty=1.3,
                    no_repeat_ngram_size=3, bad_words_ids=[[7], [96, 28]], min_new_tokens=2)
    compiled = tf.function(tf_model.generate, jit_compile=True)
    ours = compiled(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), max_new_tokens=NEW,
                    return_dict_in_generate=True, output_scores=True, **settings)
    expected = _pt(pt, **settings)
    width = expected.sequences.shape[1]
    sequences = ours.sequences.numpy()
    assert sequences.shape == (6, START + NEW)
    np.testing.assert_array_equal(sequences[:, :width], expected.sequences.numpy())
    assert (sequences[:, width:] == PAD).all()
    np.testing.assert_allclose(ours.sequences_scores.numpy(), expected.sequences_scores.numpy(), atol=1e-5)
    trails = ours.beam_indices.numpy()
    np.testing.assert_array_equal(trails[:, : width - START], expected.beam_indices.numpy()[:, : width - START])
    assert len(ours.scores) == NEW  # a graph keeps every step's slot


def test_sequence_scores_are_length_normalised_log_probabilities(models):
    """Each returned score is the summed log-probability of its generated tokens (end-of-sequence token
    included) divided by their number ** length_penalty, recomputed here by one full pass."""
    _, tf_model, _ = models
    out = _tf(tf_model, num_beams=3, num_return_sequences=3, eos_token_id=19, length_penalty=0.7)
    sequences = out.sequences.numpy()
    prompts = np.repeat(PROMPTS, 3, axis=0)
    mask = np.concatenate([np.repeat(MASK, 3, axis=0), np.ones((9, sequences.shape[1] - START), np.int64)], 1)
    base = np.where(mask[:, :START] == 1, np.cumsum(mask[:, :START], 1) + PAD, PAD)
    after = np.broadcast_to(PAD + 1 + np.arange(START, sequences.shape[1]), (9, sequences.shape[1] - START))
    positions = np.concatenate([base, after], 1)
    assert (sequences[:, :START] == prompts).all()
    logits = tf_model(sequences, attention_mask=mask, position_ids=positions, use_cache=False).logits
    log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
    for row, score in zip(range(9), out.sequences_scores.numpy()):
        tokens = list(sequences[row, START:])
        length = tokens.index(19) + 1 if 19 in tokens else len(tokens)
        total = sum(log_probs[row, START - 1 + t, tokens[t]] for t in range(length))
        assert score == pytest.approx(total / length**0.7, abs=1e-4)


# ---------------------------------------------------------------------------------------------------
# Logits processors


def _pairs():
    """(name, TF processor, PyTorch processor) with the same settings."""
    return [
        ("repetition", G.TFRepetitionPenaltyLogitsProcessor(1.7), PG.RepetitionPenaltyLogitsProcessor(1.7)),
        ("ngram1", G.TFNoRepeatNGramLogitsProcessor(1), PG.NoRepeatNGramLogitsProcessor(1)),
        ("ngram2", G.TFNoRepeatNGramLogitsProcessor(2), PG.NoRepeatNGramLogitsProcessor(2)),
        ("ngram3", G.TFNoRepeatNGramLogitsProcessor(3), PG.NoRepeatNGramLogitsProcessor(3)),
        ("bad_words", G.TFNoBadWordsLogitsProcessor([[3], [2], [1, 2, 4], [2, 5]], eos_token_id=2),
         PG.NoBadWordsLogitsProcessor([[3], [2], [1, 2, 4], [2, 5]], eos_token_id=2)),
        ("min_length", G.TFMinLengthLogitsProcessor(6, [2, 4]), PG.MinLengthLogitsProcessor(6, [2, 4])),
        ("min_new", G.TFMinNewTokensLengthLogitsProcessor(3, 2, 2), PG.MinNewTokensLengthLogitsProcessor(3, 2, 2)),
        ("forced_bos", G.TFForcedBOSTokenLogitsProcessor(5), PG.ForcedBOSTokenLogitsProcessor(5)),
        ("forced_eos", G.TFForcedEOSTokenLogitsProcessor(6, 2), PG.ForcedEOSTokenLogitsProcessor(6, 2)),
        ("suppress", G.TFSuppressTokensLogitsProcessor([1, 7]), PG.SuppressTokensLogitsProcessor([1, 7])),
        ("suppress_begin", G.TFSuppressTokensAtBeginLogitsProcessor([3], 4),
         PG.SuppressTokensAtBeginLogitsProcessor([3], 4)),
        ("temperature", G.TFTemperatureLogitsWarper(0.6), PG.TemperatureLogitsWarper(0.6)),
        ("top_k", G.TFTopKLogitsWarper(3, min_tokens_to_keep=2), PG.TopKLogitsWarper(3, min_tokens_to_keep=2)),
        ("top_p", G.TFTopPLogitsWarper(0.6), PG.TopPLogitsWarper(0.6)),
        ("top_p_keep", G.TFTopPLogitsWarper(0.05, min_tokens_to_keep=3),
         PG.TopPLogitsWarper(0.05, min_tokens_to_keep=3)),
        ("normalise", G.TFLogitNormalization(), PG.LogitNormalization()),
    ]


def test_processors_equal_pytorch_processors():
    """On a fixed-size buffer whose first cur_len columns are the tokens, at every length that changes
    something (one-token starts, the forced and suppressed positions, n-grams that repeat), eagerly and
    compiled with XLA with cur_len a tensor."""
    rng = np.random.RandomState(0)
    buffer = rng.randint(0, 4, size=(4, 9)).astype(np.int32)  # a small alphabet: n-grams and words repeat
    buffer[1, :6] = [1, 2, 1, 2, 1, 2]
    buffer[2, :4] = [0, 1, 2, 5]
    scores = rng.randn(4, 10).astype(np.float32) * 3
    changed = set()
    for name, ours, theirs in _pairs():
        compiled = tf.function(lambda ids, s, n, p=ours: p(ids, s, n), jit_compile=True)
        for cur_len in range(1, 8):
            expected = theirs(torch.as_tensor(buffer[:, :cur_len], dtype=torch.long), torch.as_tensor(scores)).numpy()
            for run in (ours, compiled):
                got = run(tf.constant(buffer), tf.constant(scores), tf.constant(cur_len)).numpy()
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=f"{name} at {cur_len}")
            changed |= {name} if not np.array_equal(expected, scores) else set()
    assert changed == {name for name, _, _ in _pairs()}, "every processor should act on these inputs"


GREEDY_PROCESSORS = {
    "repetition": dict(repetition_penalty=1.6),
    "ngram": dict(no_repeat_ngram_size=1),  # these continuations repeat tokens, not pairs (the unit test has pairs)
    "bad_words": dict(bad_words_ids=[[19], [96, 28], [4, 4]]),
    "min_length": dict(eos_token_id=19, min_length=12),
    "min_new_tokens": dict(eos_token_id=19, min_new_tokens=5),
    "forced_eos": dict(forced_eos_token_id=7),
    "suppress": dict(suppress_tokens=[19, 20], begin_suppress_tokens=[96]),
}


@pytest.mark.parametrize("beams", [1, 2])
def test_processors_in_generate_equal_pytorch(models, beams):
    pt, tf_model, _ = models
    plain = _pt(pt, num_beams=beams, eos_token_id=None).sequences.numpy()
    for name, setting in GREEDY_PROCESSORS.items():
        setting = dict(dict(eos_token_id=None), **setting)
        expected = _pt(pt, num_beams=beams, **setting)
        ours = _tf(tf_model, num_beams=beams, **setting)
        np.testing.assert_array_equal(ours.sequences.numpy(), expected.sequences.numpy(), err_msg=name)
        if beams > 1:
            _assert_same_search(ours, expected)
        same = expected.sequences.shape == plain.shape and (expected.sequences.numpy() == plain).all()
        assert not same, f"{name} should change what is generated"


def test_forced_bos_after_a_one_token_start(models):
    pt, tf_model, _ = models
    for beams in (1, 2):
        settings = dict(max_new_tokens=4, eos_token_id=None, num_beams=beams, forced_bos_token_id=33)
        with torch.no_grad():
            expected = pt.generate(**settings).numpy()
        ours = tf_model.generate(**settings).numpy()
        np.testing.assert_array_equal(ours, expected)
        assert list(ours[0, :2]) == [TINY["bos_token_id"], 33]


def test_custom_processor_and_conflicts(models):
    _, tf_model, _ = models

    class NoToken19(G.TFLogitsProcessor):
        def __call__(self, input_ids, scores, cur_len):
            return G._ban(scores, [19])

    ours = _tf(tf_model, num_beams=2, eos_token_id=None, logits_processor=G.TFLogitsProcessorList([NoToken19()]))
    by_setting = _tf(tf_model, num_beams=2, eos_token_id=None, suppress_tokens=[19])
    np.testing.assert_array_equal(ours.sequences.numpy(), by_setting.sequences.numpy())
    with pytest.raises(ValueError, match="logits_processor: a TFRepetitionPenaltyLogitsProcessor was passed"):
        _tf(tf_model, repetition_penalty=1.2, logits_processor=[G.TFRepetitionPenaltyLogitsProcessor(1.3)])
    with pytest.raises(TypeError, match="logits_processor: expected a TFLogitsProcessorList"):
        _tf(tf_model, logits_processor=NoToken19())


def test_beam_sampling_is_seeded(models):
    _, tf_model, _ = models
    settings = dict(num_beams=3, do_sample=True, top_k=6, temperature=1.3, eos_token_id=4, num_return_sequences=2)
    first = _tf(tf_model, seed=[2, 9], **settings)
    assert type(first).__name__ == "TFBeamSampleDecoderOnlyOutput"
    again = _tf(tf_model, seed=[2, 9], **settings)
    np.testing.assert_array_equal(first.sequences.numpy(), again.sequences.numpy())
    others = [_tf(tf_model, seed=s, **settings).sequences.numpy() for s in (1, 2, 3)]
    assert any(o.shape != first.sequences.shape or (o != first.sequences.numpy()).any() for o in others)
    scores = first.sequences_scores.numpy().reshape(3, 2)
    assert (scores[:, 0] >= scores[:, 1]).all(), "each prompt's best sequence comes first"


def test_beam_search_equals_reference_437(models):
    """The 4.37 TF search, eager: the same tokens (it returns loop-length columns, padded) and scores where it
    agrees with PyTorch; where a prompt ends unfilled it returns a -1e9 placeholder, and we PyTorch's result."""
    pt, tf_model, oracle = models
    stdout, stderr = oracle.communicate(timeout=240)
    assert oracle.returncode == 0 and "@@" in stdout, stderr[-3000:]
    reference = json.loads(stdout.split("@@", 1)[1])
    for name in [*REFERENCE_CASES, *REFERENCE_PROCESSORS]:
        settings = CASES.get(name) or REFERENCE_PROCESSORS[name]
        ours = _tf(tf_model, **settings)
        theirs = np.array(reference[name]["sequences"])
        width = ours.sequences.shape[1]
        assert theirs.shape[1] >= width, name
        np.testing.assert_array_equal(theirs[:, :width], ours.sequences.numpy(), err_msg=name)
        assert (theirs[:, width:] == PAD).all(), name
        np.testing.assert_allclose(reference[name]["scores"], ours.sequences_scores.numpy(), atol=1e-5, err_msg=name)
    unfilled = reference["eos_unfilled"]
    assert min(unfilled["scores"]) == pytest.approx(-1e9)
    ours = _tf(tf_model, **CASES["eos_unfilled"])
    expected = _pt(pt, **CASES["eos_unfilled"])
    np.testing.assert_array_equal(ours.sequences.numpy(), expected.sequences.numpy())
    assert ours.sequences_scores.numpy().min() > -100

"""The summarization pipeline against the 4.37 reference's (the current reference removed the task), on a
randomized tiny Pegasus with the real SentencePiece test tokenizer."""

from __future__ import annotations

import pytest

from polyformers import pipeline
from polyformers.pipelines import PipelineError

from . import legacy
from .test_pipelines_pt import assert_close


@pytest.fixture(scope="module")
def world(tmp_path_factory, assets, legacy_python):
    return legacy.world(tmp_path_factory, assets, legacy_python)


@pytest.fixture(scope="module")
def summarizer(world):
    return pipeline("summarization", model=str(world["folders"]["pegasus"]))


CASES = legacy.summary_cases()


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_matches_reference_4_37(summarizer, world, index):
    _, inputs, kwargs = CASES[index]
    assert_close(summarizer(inputs, **kwargs), world["summaries"][index])


def test_cases_are_not_trivial(world):
    """The random model must give texts of several lengths, early ends and batch padding to compare."""
    by_name = {name: answer for (name, _, _), answer in zip(CASES, world["summaries"])}
    texts = {r["summary_text"] for r in by_name["default_list"]}
    assert len(texts) == 3 and all(texts)
    batched = [r["summary_token_ids"] for r in by_name["batched"]]
    assert batched[0][-1] == 0, "the first row of a batch should carry padding after its end"
    assert by_name["min_length"] != by_name["default"]
    assert [len(r) for r in by_name["return_sequences_list"]] == [2, 2, 2]


def test_batch_size_changes_only_the_padding(summarizer):
    one = summarizer(legacy.SUMMARY_TEXTS, max_length=12, batch_size=1)
    three = pipeline("summarization", model=summarizer.model, tokenizer=summarizer.tokenizer, batch_size=3)
    assert three(legacy.SUMMARY_TEXTS, max_length=12) == one
    assert summarizer.batch_size == 1, "a call's batch_size must not outlive the call"


def test_clean_up_tokenization_spaces_reaches_decode(summarizer):
    ids = summarizer(legacy.ARTICLE, max_length=16, no_repeat_ngram_size=1, return_tensors=True)[0]["summary_token_ids"]
    for flag in (True, False):
        text = summarizer(legacy.ARTICLE, max_length=16, no_repeat_ngram_size=1, clean_up_tokenization_spaces=flag)
        assert text == [{"summary_text": summarizer.tokenizer.decode(ids, skip_special_tokens=True,
                                                                     clean_up_tokenization_spaces=flag)}]


def test_text_over_the_position_limit_needs_truncation(summarizer):
    with pytest.raises(PipelineError, match=r"inputs: the text is \d+ tokens, longer than the model's limit of 64"):
        summarizer(legacy.LONG_ARTICLE, max_length=10)
    with pytest.raises(PipelineError, match="inputs is empty"):
        summarizer(["fine", "  "])
    with pytest.raises(PipelineError, match="batch_size must be a positive int, got 0"):
        summarizer("fine", batch_size=0)

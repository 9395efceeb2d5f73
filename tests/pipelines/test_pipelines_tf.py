"""Pipelines with framework="tf" (our Keras classes) against the 4.37 reference's TF pipelines, on the same
randomized checkpoints: scores within 1e-4, identical labels, words and offsets."""

from __future__ import annotations

import pytest

from polyformers import pipeline
from polyformers.pipelines import PipelineError

from . import checkpoints as ck
from . import legacy
from .test_pipelines_pt import assert_close


@pytest.fixture(scope="module")
def world(tmp_path_factory, assets, legacy_python):
    return legacy.world(tmp_path_factory, assets, legacy_python)


@pytest.mark.parametrize("case", legacy.TF_CASES, ids=[c[0] for c in legacy.TF_CASES])
def test_matches_reference_tf_pipeline(world, case):
    name, task, folder, calls = case
    pipe = pipeline(task, model=str(world["folders"][folder]), framework="tf")
    assert pipe.framework == "tf" and type(pipe.model).__name__.startswith("TF")
    expected = world["tf"][name]
    assert not any(isinstance(e, dict) and "error" in e for e in expected), expected
    for (args, kwargs), want in zip(calls, expected):
        assert_close(pipe(*args, **kwargs), want)


def test_reference_answers_are_not_trivial(world):
    entities = world["tf"]["ner"][1]
    assert any(entities), "the random tagger should find some entities"
    assert world["tf"]["qa"][0]["answer"] and len(world["tf"]["qa"][1]) == 3


def test_tf_and_pytorch_pipelines_agree(world):
    folder = str(world["folders"]["electra_ner"])
    tf_pipe = pipeline("ner", model=folder, framework="tf", aggregation_strategy="simple")
    pt_pipe = pipeline("ner", model=folder, aggregation_strategy="simple")
    assert_close(tf_pipe(legacy.SENTENCES), pt_pipe(legacy.SENTENCES))


def test_family_without_tf_class_is_refused(tmp_path, assets):
    folder = ck.build(tmp_path, "gptj", "GPTJForCausalLM", ck.GPTJ, lambda f: ck.bpe_files(assets, f, "GPT2Tokenizer"))
    with pytest.raises(PipelineError, match=r"framework 'tf': polyformers has no TFGPTJForCausalLM for the 'gptj'"):
        pipeline("text-generation", model=str(folder), framework="tf")

"""Each pipeline against the reference's pipeline on the same randomized checkpoint (PyTorch)."""

from __future__ import annotations

import json
import subprocess
import textwrap

import numpy as np
import pytest

from polyformers import pipeline
from polyformers.pipelines import PipelineError

from . import checkpoints as ck

ATOL = 1e-4
SENTENCES = [
    "Hugging Face Inc. is a company based in New York City.",
    "My name is Wolfgang and I live in Berlin, unaffordably.",
    "short",
]


def assert_close(ours, ref, path="result"):
    if isinstance(ref, dict):
        assert isinstance(ours, dict) and set(ours) == set(ref), f"{path}: keys {sorted(ours)} != {sorted(ref)}"
        for k in ref:
            assert_close(ours[k], ref[k], f"{path}.{k}")
    elif isinstance(ref, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(ref), f"{path}: {ours!r} != {ref!r}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_close(a, b, f"{path}[{i}]")
    elif isinstance(ref, (float, np.floating)):
        assert abs(float(ours) - float(ref)) <= ATOL, f"{path}: {ours} != {ref}"
    else:
        assert ours == ref, f"{path}: {ours!r} != {ref!r}"


def reference(task, folder, **kwargs):
    import transformers

    return transformers.pipeline(task, model=str(folder), tokenizer=str(folder), device="cpu", **kwargs)


@pytest.fixture(scope="module")
def mlm(tmp_path_factory, assets):
    return ck.build(tmp_path_factory.mktemp("mlm"), "electra", "ElectraForMaskedLM", ck.ELECTRA,
                    lambda f: ck.wordpiece_files(assets, f))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, assets):
    return ck.build(tmp_path_factory.mktemp("cls"), "electra", "ElectraForSequenceClassification", ck.ELECTRA,
                    lambda f: ck.wordpiece_files(assets, f), num_labels=3)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory, assets):
    labels = dict(enumerate(ck.NER_LABELS))
    return ck.build(tmp_path_factory.mktemp("ner"), "electra", "ElectraForTokenClassification", ck.ELECTRA,
                    lambda f: ck.wordpiece_files(assets, f), id2label=labels,
                    label2id={v: k for k, v in labels.items()}, seed=3)


def test_feature_extraction_matches_reference(mlm):
    ours = pipeline("feature-extraction", model=str(mlm))
    ref = reference("feature-extraction", mlm)
    for s in SENTENCES:
        a, b = np.array(ours(s)), np.array(ref(s))
        assert a.shape == b.shape and a.shape[0] == 1
        np.testing.assert_allclose(a, b, atol=ATOL)
    tensor = ours(SENTENCES[0], return_tensors=True)
    assert tuple(tensor.shape) == np.array(ref(SENTENCES[0])).shape


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 3}, {"targets": ["paris", "london", "zzyzx"]}])
def test_fill_mask_matches_reference(mlm, kwargs):
    ours = pipeline("fill-mask", model=str(mlm))
    ref = reference("fill-mask", mlm)
    for text in ["The capital of France is [MASK].", "[MASK] is a [MASK] city."]:
        assert_close(ours(text, **kwargs), ref(text, **kwargs))
    batch = ["Paris is [MASK].", "I [MASK] you."]
    assert_close(ours(batch, **kwargs), ref(batch, **kwargs))


def test_fill_mask_without_mask_is_an_error(mlm):
    with pytest.raises(PipelineError, match=r"no mask token \(\[MASK\]\)"):
        pipeline("fill-mask", model=str(mlm))("nothing to fill")


@pytest.mark.parametrize("kwargs", [{}, {"top_k": None}, {"top_k": 2}, {"function_to_apply": "sigmoid"},
                                    {"function_to_apply": "none", "top_k": 1}])
def test_text_classification_matches_reference(classifier, kwargs):
    ours = pipeline("text-classification", model=str(classifier))
    ref = reference("text-classification", classifier)
    assert_close(ours(SENTENCES[0], **kwargs), ref(SENTENCES[0], **kwargs))
    assert_close(ours(SENTENCES, **kwargs), ref(SENTENCES, **kwargs))
    pair = {"text": "A question?", "text_pair": "An answer."}
    assert_close(ours(pair, **kwargs), ref(pair, **kwargs))


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_reference(tagger, strategy):
    ours = pipeline("token-classification", model=str(tagger), aggregation_strategy=strategy)
    ref = reference("token-classification", tagger, aggregation_strategy=strategy)
    want = ref(SENTENCES)
    assert any(want), "the random tagger should find some entities"
    assert_close(ours(SENTENCES), want)


def test_token_classification_bpe(tmp_path, assets):
    labels = dict(enumerate(ck.NER_LABELS))
    folder = ck.build(tmp_path, "roberta", "RobertaForTokenClassification", ck.ROBERTA,
                      lambda f: ck.bpe_files(assets, f, "RobertaTokenizer"), id2label=labels,
                      label2id={v: k for k, v in labels.items()}, seed=5)
    for strategy in ("none", "simple", "max"):
        ours = pipeline("ner", model=str(folder), aggregation_strategy=strategy)
        ref = reference("ner", folder, aggregation_strategy=strategy)
        assert_close(ours(SENTENCES[1]), ref(SENTENCES[1]))


def test_text_generation_matches_reference(tmp_path, assets):
    folder = ck.build(tmp_path, "gptj", "GPTJForCausalLM", ck.GPTJ,
                      lambda f: ck.bpe_files(assets, f, "GPT2Tokenizer"))
    ours = pipeline("text-generation", model=str(folder))
    ref = reference("text-generation", folder)
    for kwargs in ({"max_new_tokens": 8, "do_sample": False},
                   {"max_new_tokens": 6, "do_sample": False, "return_full_text": False},
                   {"max_new_tokens": 5, "do_sample": False, "num_beams": 3, "num_return_sequences": 2}):
        assert_close(ours("Once upon a time", **kwargs), ref("Once upon a time", **kwargs))


def test_batches_sorted_by_length_give_the_same_results(classifier, tagger):
    one = pipeline("text-classification", model=str(classifier), batch_size=1)
    many = pipeline("text-classification", model=str(classifier), batch_size=2)
    texts = SENTENCES + ["a much longer sentence " * 5, "x"]
    assert_close(many(texts, top_k=None), one(texts, top_k=None))
    ner1 = pipeline("ner", model=str(tagger), aggregation_strategy="simple")
    ner3 = pipeline("ner", model=str(tagger), aggregation_strategy="simple", batch_size=3)
    assert_close(ner3(texts), ner1(texts))


def test_replaced_token_detection_follows_the_discriminator(tmp_path, assets):
    import torch
    import transformers

    folder = ck.build(tmp_path, "electra", "ElectraForPreTraining", ck.ELECTRA, lambda f: ck.wordpiece_files(assets, f))
    detect = pipeline("replaced-token-detection", model=str(folder))
    text = "The quick brown fox fake over the lazy dog"
    result = detect(text)
    model = transformers.ElectraForPreTraining.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tok(text, return_tensors="pt")).logits[0, 1:-1]
    assert [r["token"] for r in result] == tok.tokenize(text)
    np.testing.assert_allclose([r["score"] for r in result], torch.sigmoid(logits).numpy(), atol=ATOL)
    # The spec example's rounding rule: replaced exactly where the logit is positive.
    assert [r["replaced"] for r in result] == (logits > 0).tolist()
    assert text[result[3]["start"]:result[3]["end"]] == "fox"


QA_ORACLE = textwrap.dedent("""
    import json, sys
    from transformers import pipeline
    job = json.load(sys.stdin)
    qa = pipeline("question-answering", model=job["folder"], tokenizer=job["folder"], framework="pt")
    out = [qa(question=c["question"], context=c["context"], **c["kwargs"]) for c in job["cases"]]
    def plain(x):
        if isinstance(x, dict): return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list): return [plain(v) for v in x]
        return x.item() if hasattr(x, "item") else x
    print(json.dumps(plain(out)))
""")


def test_question_answering_matches_reference_4_37(tmp_path, assets, legacy_python):
    folder = ck.build(tmp_path, "electra", "ElectraForQuestionAnswering", ck.ELECTRA,
                      lambda f: ck.wordpiece_files(assets, f), seed=7)
    context = (assets / "corpora" / "macbeth.txt").read_text()[3000:6000]
    cases = [
        {"question": "Who is the king of Scotland?", "context": "Duncan is the King of Scotland.", "kwargs": {}},
        {"question": "Where do the witches meet?", "context": context, "kwargs": {"doc_stride": 32, "max_seq_len": 96}},
        {"question": "Who fought?", "context": context, "kwargs": {"top_k": 3, "max_answer_len": 4, "doc_stride": 20,
                                                                  "max_seq_len": 64}},
        {"question": "Why?", "context": context[:700], "kwargs": {"handle_impossible_answer": True, "top_k": 2}},
    ]
    job = json.dumps({"folder": str(folder), "cases": cases})
    proc = subprocess.run([str(legacy_python), "-c", QA_ORACLE], input=job, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = json.loads(proc.stdout.strip().splitlines()[-1])
    qa = pipeline("question-answering", model=str(folder), batch_size=4)
    for case, want in zip(cases, expected):
        assert_close(qa(question=case["question"], context=case["context"], **case["kwargs"]), want)


def test_question_longer_than_the_window_is_refused(tmp_path, assets):
    folder = ck.build(tmp_path, "electra", "ElectraForQuestionAnswering", ck.ELECTRA,
                      lambda f: ck.wordpiece_files(assets, f))
    qa = pipeline("question-answering", model=str(folder))
    with pytest.raises(PipelineError, match=r"question is \d+ tokens"):
        qa(question="why " * 400, context="Because.")


def test_bad_pipeline_arguments(mlm, classifier):
    with pytest.raises(KeyError, match="Unknown task 'translate-klingon'"):
        pipeline("translate-klingon", model=str(mlm))
    with pytest.raises(PipelineError, match=r"task 'summarization' needs a model of family pegasus; .* 'electra'"):
        pipeline("summarization", model=str(mlm))
    with pytest.raises(PipelineError, match="inputs is empty"):
        pipeline("text-classification", model=str(classifier))("   ")
    with pytest.raises(PipelineError, match="batch_size must be a positive int, got 0"):
        pipeline("text-classification", model=str(classifier), batch_size=0)


def test_framework_without_the_family_class_is_refused(tmp_path, assets):
    # The reference defines no TensorFlow or Flax MPT, so neither will polyformers.
    folder = ck.build(tmp_path, "mpt", "MptForCausalLM", ck.MPT, lambda f: ck.bpe_files(assets, f, "GPT2Tokenizer"))
    for framework, prefix in (("tf", "TF"), ("flax", "Flax")):
        with pytest.raises(PipelineError, match=rf"framework '{framework}': polyformers has no {prefix}MptForCausalLM"):
            pipeline("text-generation", model=str(folder), framework=framework)

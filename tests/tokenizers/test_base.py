"""The shared tokenizer machinery (calling conventions, padding, truncation, tensors, BatchEncoding,
saving and loading), checked on ElectraTokenizer against the 4.37 reference."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polyformers.tokenizers import (
    AddedToken,
    BatchEncoding,
    ElectraTokenizer,
    PaddingStrategy,
    TensorType,
    TruncationStrategy,
)

from ._slow_harness import assert_same, run_oracle, run_ours

A = "Hello, my dog is cute"
B = "And so is my cat, I think."
LONG = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief."
)
BATCH = [A, B, LONG, "Short one.", ""]
PAIRS = [[A, B], [B, LONG], [LONG, A], ["x", "y"]]


def call_cases():
    cases = []
    inputs = [
        ([A], {}),
        ([A, B], {}),
        ([BATCH], {}),
        ([[p[0] for p in PAIRS], [p[1] for p in PAIRS]], {}),
        ([["Hello", "world", "!", "HäLLo"]], {"is_split_into_words": True}),
        ([[["Hello", "world"], ["Hi"], ["tok", "##en", "[MASK]"]]], {"is_split_into_words": True}),
        ([["Hello", "world"], ["pair", "words"]], {"is_split_into_words": True}),
        ([["hello", "world", "notaword"]], {}),  # a list of str without is_split_into_words is a batch
        ([], {"text_target": A}),
        ([A], {"text_target": B}),
        ([[A, B]], {"text_target": [B, LONG]}),
    ]
    for args, kw in inputs:
        cases.append({"call": "__call__", "args": args, "kwargs": kw})

    for args, kw in ([[LONG], {}], [[LONG, A], {}], [[BATCH], {}], [[[p[0] for p in PAIRS], [p[1] for p in PAIRS]], {}]):
        for padding, max_length, truncation in itertools.product(
            (True, "longest", "max_length", False, "do_not_pad"),
            (None, 12),
            (None, True, "only_first", "only_second", "longest_first", False),
        ):
            cases.append({"call": "__call__", "args": args,
                          "kwargs": {**kw, "padding": padding, "max_length": max_length, "truncation": truncation}})
        for extra in (
            {"padding": True, "pad_to_multiple_of": 8},
            {"padding": "max_length", "max_length": 24, "pad_to_multiple_of": 8, "truncation": True},
            {"padding": "max_length", "max_length": 20, "pad_to_multiple_of": 8, "truncation": True},  # error
            {"padding": "max_length", "max_length": 20, "pad_to_multiple_of": 8},
            {"return_special_tokens_mask": True, "padding": True},
            {"return_length": True},
            {"return_length": True, "padding": "max_length", "max_length": 40},
            {"return_token_type_ids": False, "return_attention_mask": False},
            {"add_special_tokens": False},
            {"add_special_tokens": False, "return_special_tokens_mask": True, "padding": True},
            {"add_special_tokens": False, "return_token_type_ids": True},  # error
            {"return_overflowing_tokens": True, "truncation": "only_first", "max_length": 10, "stride": 3},
            {"return_overflowing_tokens": True, "truncation": "only_second", "max_length": 10, "stride": 2},
            {"return_overflowing_tokens": True, "truncation": True, "max_length": 10, "stride": 4},
            {"return_overflowing_tokens": True, "truncation": "only_first", "max_length": 4},
            {"truncation": "only_second", "max_length": 3},
            {"return_tensors": "np", "padding": True},
            {"return_tensors": "np", "return_overflowing_tokens": True, "truncation": "only_first", "max_length": 9},
            {"return_tensors": "np", "padding": True, "return_length": True, "return_special_tokens_mask": True},
            {"padding": "maxlen"},  # error
            {"truncation": "sideways"},  # error
            {"truncation_strategy": "only_first", "max_length": 6},
            {"pad_to_max_length": True, "max_length": 30},
        ):
            cases.append({"call": "__call__", "args": args, "kwargs": {**kw, **extra}})

    sided = {"padding_side": "left", "truncation_side": "left", "model_max_length": 16}
    for args in ([LONG], [LONG, A], [BATCH], [[p[0] for p in PAIRS], [p[1] for p in PAIRS]]):
        for kw in (
            {"padding": True},
            {"padding": "max_length"},
            {"truncation": True},
            {"truncation": True, "padding": "max_length", "return_special_tokens_mask": True},
            {"truncation": "only_first", "return_overflowing_tokens": True, "stride": 2},
            {"truncation": "only_second", "return_overflowing_tokens": True, "stride": 1},
        ):
            cases.append({"init": sided, "call": "__call__", "args": args, "kwargs": kw})
            cases.append({"init": {"model_max_length": 16}, "call": "__call__", "args": args, "kwargs": kw})

    # other entry points
    cases += [
        {"call": "encode", "args": [A, B]},
        {"call": "encode", "args": [LONG], "kwargs": {"max_length": 8}},
        {"call": "encode", "args": [A], "kwargs": {"return_tensors": "np"}},
        {"call": "encode", "args": [[7592, 2088]]},
        {"call": "encode", "args": [["hello", "world"]]},
        {"call": "encode", "args": [[]]},
        {"call": "encode", "args": [3]},
        {"call": "encode_plus", "args": [A, B], "kwargs": {"return_special_tokens_mask": True}},
        {"call": "encode_plus", "args": [[7592, 2088], [2017]]},
        {"call": "encode_plus", "args": [A], "kwargs": {"return_offsets_mapping": True}},
        {"call": "batch_encode_plus", "args": [[A, [B, A], "z"]], "kwargs": {"padding": True}},
        {"call": "batch_encode_plus", "args": [[[7592, 2088], [2017]]]},
        {"call": "batch_encode_plus", "args": [[A, B]], "kwargs": {"return_tensors": "np"}},
        {"call": "prepare_for_model", "args": [[5, 6, 7, 8, 9], [10, 11]],
         "kwargs": {"max_length": 6, "truncation": "only_first", "return_overflowing_tokens": True, "stride": 1}},
        {"call": "prepare_for_model", "args": [[5, 6, 7]], "kwargs": {"padding": "max_length", "max_length": 8}},
        {"call": "truncate_sequences", "args": [[1, 2, 3, 4, 5], [6, 7]],
         "kwargs": {"num_tokens_to_remove": 3, "truncation_strategy": "longest_first"}},
        {"call": "truncate_sequences", "args": [[1, 2, 3, 4, 5], [6, 7, 8, 9]],
         "kwargs": {"num_tokens_to_remove": 4, "truncation_strategy": "longest_first"}},
        {"call": "truncate_sequences", "args": [[1, 2, 3, 4, 5], [6, 7, 8, 9]],
         "kwargs": {"num_tokens_to_remove": 3, "truncation_strategy": "only_second", "stride": 1}},
        {"call": "truncate_sequences", "args": [[1, 2], [6, 7, 8, 9]],
         "kwargs": {"num_tokens_to_remove": 3, "truncation_strategy": "only_first"}},
        {"call": "__call__", "args": [A], "kwargs": {"return_tensors": "xx"}},
        {"call": "__call__", "args": [3]},
        {"call": "__call__", "args": [[A, B], "single"]},
        {"call": "__call__", "args": [[A, B], [B]]},
        {"call": "__call__", "args": [BATCH], "kwargs": {"return_tensors": "np"}},  # ragged: object array
        {"init": {"pad_token": None}, "call": "__call__", "args": [BATCH], "kwargs": {"padding": True}},
    ]
    return cases


def pad_cases():
    features = [
        {"input_ids": [101, 7592, 102], "token_type_ids": [0, 0, 0], "special_tokens_mask": [1, 0, 1]},
        {"input_ids": [101, 7592, 2088, 999, 102], "token_type_ids": [0, 0, 0, 1, 1], "special_tokens_mask": [1, 0, 0, 0, 1]},
        {"input_ids": [101, 102], "token_type_ids": [0, 0], "special_tokens_mask": [1, 1]},
    ]
    with_mask = [{**f, "attention_mask": [1] * len(f["input_ids"]), "labels": 3} for f in features]
    columns = {k: [f[k] for f in features] for k in features[0]}
    cases = []
    for init in ({}, {"padding_side": "left"}, {"model_max_length": 7}):
        for data in (features, with_mask, columns, features[0]):
            for kw in (
                {},
                {"padding": "longest"},
                {"padding": "max_length", "max_length": 8},
                {"padding": "max_length"},
                {"padding": True, "pad_to_multiple_of": 4},
                {"padding": False},
                {"return_attention_mask": False},
                {"return_tensors": "np"},
            ):
                cases.append({"init": init, "call": "pad", "args": [data], "kwargs": kw})
    cases.append({"call": "pad", "args": [{"input_ids": []}], "kwargs": {"return_attention_mask": True}})
    cases.append({"call": "pad", "args": [{"attention_mask": [[1]]}]})
    return cases


@pytest.fixture(scope="module")
def vocab(assets):
    return assets / "minilm" / "vocab.txt"


@pytest.fixture(scope="module")
def results(vocab, legacy_python):
    groups = {"call": call_cases(), "pad": pad_cases()}
    flat = [case for cases in groups.values() for case in cases]
    ours = run_ours(vocab, flat)
    theirs = run_oracle(legacy_python, vocab, flat)
    out, start = {}, 0
    for name, cases in groups.items():
        out[name] = (cases, ours[start : start + len(cases)], theirs[start : start + len(cases)])
        start += len(cases)
    return out


@pytest.mark.filterwarnings("ignore:max_length is ignored", "ignore:pad_to_max_length", "ignore:truncation_strategy")
@pytest.mark.parametrize("group", ["call", "pad"])
def test_matches_reference(results, group):
    cases, ours, theirs = results[group]
    assert_same(cases, ours, theirs)


def test_error_cases_really_fail(results):
    # assert_same accepts "both raised"; make sure the cases meant to fail do fail (and the others don't
    # all fail for some unrelated reason).
    cases, ours, _ = results["call"]
    errors = [c for c, r in zip(cases, ours) if "error" in r]
    assert 0 < len(errors) < len(cases) // 4
    for c in errors:
        kw = c.get("kwargs", {})
        assert (
            kw.get("padding") == "maxlen"
            or kw.get("truncation") == "sideways"
            or kw.get("return_tensors") == "xx"
            or kw.get("pad_to_multiple_of") == 8
            or kw.get("return_token_type_ids") is True
            or kw.get("return_offsets_mapping")
            or kw.get("return_overflowing_tokens")
            or c.get("init", {}).get("pad_token", "") is None
            or c["args"] in ([3], [[]], [[A, B], "single"], [[A, B], [B]], [[[7592, 2088], [2017]]])
        ), c


# ---------------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------------

SAVE_INIT = {"model_max_length": 64, "padding_side": "left", "never_split": ["[FOO]"], "do_lower_case": True}
SAVE_SETUP = [
    ["add_tokens", [["NewTok", {"__added__": {"content": "<lst>", "lstrip": True}}]], {}],
    ["add_special_tokens", [{"additional_special_tokens": ["<ent>"], "bos_token": "<s>"}], {}],
]
PROBE_TEXTS = ["Hello NewTok <ent> world [FOO] <s>", "  <lst> x HäLLo", LONG]


def _probe_cases(init, setup=()):
    cases = []
    for text in PROBE_TEXTS:
        cases.append({"init": init, "setup": list(setup), "call": "tokenize", "args": [text]})
        cases.append({"init": init, "setup": list(setup), "call": "__call__", "args": [text],
                      "kwargs": {"padding": "max_length", "max_length": 70, "truncation": True}})
    for attr in ("special_tokens_map", "added_tokens_decoder", "all_special_ids", "model_max_length",
                 "padding_side", "do_lower_case", "vocab_size"):
        cases.append({"init": init, "setup": list(setup), "attr": attr})
    cases.append({"init": init, "setup": list(setup), "call": "__len__"})
    return cases


def _read_folder(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        text = Path(folder, name).read_text(encoding="utf-8")
        out[name] = json.loads(text) if name.endswith(".json") else text
    return out


def test_save_pretrained_round_trips_both_ways(vocab, legacy_python, tmp_path):
    ours_dir, ref_dir = tmp_path / "ours", tmp_path / "ref"
    save = lambda d: SAVE_SETUP + [["save_pretrained", [str(d)], {}]]  # noqa: E731
    before = _probe_cases(SAVE_INIT, SAVE_SETUP)
    ours_before = run_ours(vocab, before + [{"init": SAVE_INIT, "setup": save(ours_dir), "call": "__len__"}])
    ref_before = run_oracle(legacy_python, vocab, before + [{"init": SAVE_INIT, "setup": save(ref_dir), "call": "__len__"}])
    assert_same(before, ours_before[:-1], ref_before[:-1])

    # the same files, byte for byte once parsed (key order, AddedToken dicts, added_tokens.json)
    assert _read_folder(ours_dir) == _read_folder(ref_dir)
    assert (ours_dir / "vocab.txt").read_bytes() == Path(vocab).read_bytes()

    reloaded_by_ref = run_oracle(legacy_python, vocab, _probe_cases({"from_pretrained": str(ours_dir)}))
    reloaded_by_us = run_ours(vocab, _probe_cases({"from_pretrained": str(ref_dir)}))
    ours_reload_ours = run_ours(vocab, _probe_cases({"from_pretrained": str(ours_dir)}))
    expected = ref_before[:-1]
    for got in (reloaded_by_ref, reloaded_by_us, ours_reload_ours):
        assert_same(before, got, expected)


def test_from_pretrained_variants(vocab, assets, legacy_python, tmp_path):
    # a real checkpoint folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt)
    real = str(assets / "minilm")
    legacy = tmp_path / "legacy"  # pre-4.34 layout: no tokenizer_config.json, added tokens in added_tokens.json
    legacy.mkdir()
    (legacy / "vocab.txt").write_bytes(Path(vocab).read_bytes())
    (legacy / "added_tokens.json").write_text(json.dumps({"<new>": 30522, "<sp>": 30523}))
    (legacy / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": {"content": "[MASK]", "lstrip": True, "rstrip": False, "single_word": False,
                        "normalized": False}, "additional_special_tokens": ["<sp>"]}))
    prefixed = tmp_path / "prefixed"
    cases = []
    for init in (
        {"from_pretrained": real},
        {"from_pretrained": real, "do_lower_case": False, "model_max_length": 8},
        {"from_pretrained": str(legacy)},
        {"from_pretrained": str(vocab)},  # a single vocabulary file (deprecated, still accepted)
    ):
        cases += _probe_cases(init)
        cases.append({"init": init, "attr": "init_kwargs"})
    cases.append({"init": {}, "call": "save_pretrained", "args": [str(prefixed)], "kwargs": {"filename_prefix": "p"}})
    cases.append({"init": {}, "call": "save_pretrained", "args": [str(tmp_path / "nolegacy")],
                  "kwargs": {"legacy_format": False}})
    ours = run_ours(vocab, cases)
    ref_prefixed = _read_folder(prefixed)
    for name in os.listdir(prefixed):
        os.unlink(prefixed / name)
    theirs = run_oracle(legacy_python, vocab, cases)
    # init_kwargs holds absolute file paths in both; they are the same paths
    assert_same(cases[:-2], ours[:-2], theirs[:-2])
    assert sorted(ref_prefixed) == ["p-special_tokens_map.json", "p-tokenizer_config.json", "p-vocab.txt"]
    assert ref_prefixed == _read_folder(prefixed)
    assert "error" in ours[-1] and "error" in theirs[-1]


def test_from_pretrained_missing_files_name_the_folder(tmp_path):
    with pytest.raises(OSError, match="empty"):
        (tmp_path / "empty").mkdir()
        ElectraTokenizer.from_pretrained(tmp_path / "empty")
    with pytest.raises(OSError, match="no such checkpoint folder"):
        ElectraTokenizer.from_pretrained(str(tmp_path / "does" / "not" / "exist"))


def test_save_is_atomic_and_leaves_no_temporaries(vocab, tmp_path):
    tok = ElectraTokenizer(str(vocab))
    files = tok.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["special_tokens_map.json", "tokenizer_config.json", "vocab.txt"]
    assert files[-1].endswith("added_tokens.json")  # listed like the reference, written only when needed
    with pytest.raises(ValueError, match="save_directory"):
        tok.save_pretrained(tmp_path / "vocab.txt")


# ---------------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------------


def test_return_tensors_all_frameworks(vocab):
    import jax.numpy as jnp
    import tensorflow as tf
    import torch

    tok = ElectraTokenizer(str(vocab))
    reference = tok(BATCH, padding=True, return_tensors="np")
    assert reference["input_ids"].shape == (5, 38)
    assert reference["input_ids"].dtype == np.int64
    for kind, array_type in (("pt", torch.Tensor), ("tf", tf.Tensor), ("jax", jnp.ndarray), (TensorType.NUMPY, np.ndarray)):
        out = tok(BATCH, padding=True, return_tensors=kind)
        assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}
        for key, value in out.items():
            assert isinstance(value, array_type), (kind, key, type(value))
            assert np.array_equal(np.asarray(value), reference[key]), (kind, key)
        single = tok(A, return_tensors=kind)
        assert tuple(single["input_ids"].shape) == (1, 8)
        assert np.asarray(tok.encode(A, return_tensors=kind)).tolist() == [tok.encode(A)]
    pt = tok(BATCH, padding=True, return_tensors="pt")
    assert pt["input_ids"].dtype == torch.int64
    assert pt.to("cpu") is pt and pt["input_ids"].device.type == "cpu"
    assert pt.to(torch.device("cpu"))["attention_mask"].dtype == torch.int64
    # pad() keeps the framework it was given
    rows = [{"input_ids": torch.tensor(ids)} for ids in tok(BATCH)["input_ids"]]
    padded = tok.pad(rows)
    assert isinstance(padded["input_ids"], torch.Tensor) and padded["input_ids"].shape == (5, 38)
    np_rows = tok.pad({"input_ids": [np.array(ids) for ids in tok(BATCH)["input_ids"]]})
    assert isinstance(np_rows["input_ids"], np.ndarray) and np_rows["input_ids"].shape == (5, 38)
    # decode accepts tensors and arrays
    assert tok.decode(pt["input_ids"][0], skip_special_tokens=True) == "hello, my dog is cute"
    assert tok.batch_decode(tf.constant(reference["input_ids"]), skip_special_tokens=True)[1] == (
        "and so is my cat, i think."
    )


def test_ragged_tensors_are_refused_with_a_hint(vocab):
    tok = ElectraTokenizer(str(vocab))
    with pytest.raises(ValueError, match="padding=True"):
        tok(BATCH, return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors.*'pt', 'tf', 'np', 'jax'.*'torch'"):
        tok(A, return_tensors="torch")
    with pytest.raises(ValueError, match="overflowing_tokens"):
        tok([LONG, A], max_length=8, truncation=True, return_overflowing_tokens=True, padding=True,
            return_tensors="pt")
    one = tok(LONG, max_length=8, truncation=True, return_overflowing_tokens=True, return_tensors="pt")
    assert one["overflowing_tokens"].shape == (1, 30) and one["num_truncated_tokens"].tolist() == [30]


# ---------------------------------------------------------------------------------------------------
# BatchEncoding and the other API surface
# ---------------------------------------------------------------------------------------------------


def test_batch_encoding_behaviour(vocab):
    tok = ElectraTokenizer(str(vocab))
    enc = tok([A, B], padding=True)
    assert isinstance(enc, BatchEncoding)
    assert enc.input_ids is enc["input_ids"] and enc.data["attention_mask"] == enc.attention_mask
    assert list(enc.keys()) == ["input_ids", "token_type_ids", "attention_mask"]
    assert dict(**enc) == enc.data
    assert enc.encodings is None and enc.is_fast is False and enc.n_sequences is None
    assert enc[:1] == {k: v[:1] for k, v in enc.items()}
    with pytest.raises(AttributeError, match="labels"):
        enc.labels
    with pytest.raises(KeyError, match="slow tokenizer"):
        enc[0]
    for method, args in (("tokens", ()), ("word_ids", ()), ("sequence_ids", ()), ("char_to_token", (0, 1)),
                         ("token_to_chars", (0, 1)), ("word_to_tokens", (0, 0)), ("token_to_word", (0, 1)),
                         ("word_to_chars", (0, 0)), ("char_to_word", (0, 0)), ("token_to_sequence", (0, 1))):
        with pytest.raises(ValueError, match=rf"{method}\(\).*fast"):
            getattr(enc, method)(*args)
    clone = pickle.loads(pickle.dumps(enc))
    assert clone.data == enc.data and clone.encodings is None
    assert BatchEncoding({"input_ids": [1, 2]}, tensor_type="np", prepend_batch_axis=True)["input_ids"].shape == (1, 2)


def test_batch_encoding_alignment_with_encodings():
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    encodings = backend.encode_batch(["hello world", "world"])
    enc = BatchEncoding({"input_ids": [e.ids for e in encodings]}, encoding=encodings)
    assert enc.is_fast and enc[1] is encodings[1] and enc.n_sequences == 1
    assert enc.tokens(0) == ["hello", "world"] and enc.word_ids(1) == [0]
    assert enc.char_to_token(0, 7) == 1 and enc.token_to_chars(0, 1) == (6, 11)
    assert enc.word_to_tokens(0, 1) == (1, 2) and enc.token_to_word(0, 1) == 1
    assert enc.sequence_ids(0) == [0, 0]
    with pytest.raises(ValueError, match="batch index"):
        enc.char_to_token(3)


def test_error_messages_name_the_argument(vocab):
    tok = ElectraTokenizer(str(vocab))
    with pytest.raises(ValueError, match=r"padding must be .*'max_length'.*got 'maxlen'"):
        tok(A, padding="maxlen")
    with pytest.raises(ValueError, match=r"truncation must be .*'only_first'.*got 'sideways'"):
        tok(A, truncation="sideways")
    with pytest.raises(ValueError, match=r"text must be .*got int 3"):
        tok(3)
    with pytest.raises(ValueError, match=r"max_length \(20\).*pad_to_multiple_of \(8\)"):
        tok(A, padding="max_length", max_length=20, truncation=True, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="padding_side"):
        ElectraTokenizer(str(vocab), padding_side="middle")
    with pytest.raises(NotImplementedError, match="return_offsets_mapping"):
        tok(A, return_offsets_mapping=True)
    no_pad = ElectraTokenizer(str(vocab), pad_token=None)
    with pytest.raises(ValueError, match="pad_token"):
        no_pad([A, B], padding=True)
    with pytest.raises(ValueError, match="PaddingStrategy"):
        PaddingStrategy("sideways")
    assert TruncationStrategy("only_second") is TruncationStrategy.ONLY_SECOND


def test_truncation_without_any_limit_warns_and_keeps_everything(vocab, caplog, monkeypatch):
    from polyformers.tokenizers import base

    monkeypatch.setattr(base, "_warned", set())  # the warning is given once per process
    tok = ElectraTokenizer(str(vocab))  # no model_max_length
    with caplog.at_level("WARNING"):
        out = tok(LONG, truncation=True)
    assert len(out["input_ids"]) == len(tok.encode(LONG))
    assert "max_length" in caplog.text


def test_special_token_attributes_and_setters(vocab):
    tok = ElectraTokenizer(str(vocab))
    assert (tok.cls_token, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id) == (
        "[CLS]", 101, 102, 0, 103,
    )
    assert tok.bos_token is None and tok.bos_token_id is None
    tok.bos_token = "[CLS]"
    assert tok.bos_token_id == 101
    tok.eos_token_id = 102
    assert tok.eos_token == "[SEP]"
    with pytest.raises(ValueError, match="bos_token"):
        tok.bos_token = 5
    assert tok.add_special_tokens({"additional_special_tokens": [AddedToken("<x>", lstrip=True)]}) == 1
    assert tok.additional_special_tokens == ["<x>"] and tok.additional_special_tokens_ids == [30522]
    assert tok.tokenize("a   <x> b") == ["a", "<x>", "b"]
    with pytest.raises(ValueError, match="add_special_tokens got the key 'foo_token'"):
        tok.add_special_tokens({"foo_token": "x"})
    assert tok.num_special_tokens_to_add(pair=True) == 3 and tok.max_len_sentences_pair > 10**20


def test_import_pulls_in_no_framework():
    code = (
        "import sys, polyformers.tokenizers as t\n"
        "tok = t.BatchEncoding({'input_ids': [[1, 2]]}, tensor_type='np')\n"
        "bad = [m for m in ('torch', 'tensorflow', 'jax', 'flax') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr

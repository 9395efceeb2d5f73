"""Data collators against the reference: transformers 5 in this process and the 4.37 release in its venv.

Every case runs three times through ``_collator_runner``: with polyformers (our tokenizers and
collators), with the installed transformers 5 and with transformers 4.37, each library building its own
tokenizer from the same real vocabulary files. The batches (keys, order, framework, dtype, shape and
values) must be identical; for the masked-LM collators that includes the random masks, since every
library is seeded the same way before the calls. A case whose reference raises must raise a compatible
error in polyformers, with a message naming what was wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polyformers.tokenizers import ElectraTokenizer, GPT2Tokenizer

from . import _collator_runner

RUNNER = Path(_collator_runner.__file__)

ELECTRA = {"kind": "electra"}
ELECTRA_LEFT = {"kind": "electra", "padding_side": "left"}
ROBERTA = {"kind": "roberta"}
GPT2 = {"kind": "gpt2"}
GPT2_PAD = {"kind": "gpt2", "pad_token": "<|endoftext|>"}
GPT2_PAD_LEFT = {"kind": "gpt2", "pad_token": "<|endoftext|>", "padding_side": "left"}

TEXTS = [
    "Hello world, this is a test of the data collators.",
    "Short one.",
    "An unaffable, somewhat longer sentence: tokenization quirks & hyphen-ated words!",
    "x",
]
WORD_TEXTS = [  # many words split into several WordPiece tokens, for whole-word masking
    "Tokenization of unaffable hyperparameters is embarrassingly straightforward.",
    "Photosynthesis transforms electromagnetic radiation into biochemical energy.",
    "the quick brown fox",
]


def T(values, dtype="int64"):
    return {"__t__": "torch", "v": values, "dtype": dtype}


def N(values, dtype="int64"):
    return {"__t__": "np", "v": values, "dtype": dtype}


# Only the 4.37 release has this behaviour (the spec's); transformers 5 changed or dropped it.
ONLY_437 = "437"


def cases():
    c = {}

    # -- default_data_collator ---------------------------------------------------------------------
    def dd(name, features, refs=None, **more):
        c["default/" + name] = {"collator": "default_data_collator", "features": features, "refs": refs, **more}

    ids = [[1, 2, 3], [4, 5, 6]]
    dd("int_label", [{"input_ids": ids[0], "attention_mask": [1, 1, 1], "label": 1},
                     {"input_ids": ids[1], "attention_mask": [1, 1, 0], "label": 0}])
    dd("float_label", [{"input_ids": ids[0], "label": 0.5}, {"input_ids": ids[1], "label": 2}])
    dd("bool_label", [{"input_ids": ids[0], "label": True}, {"input_ids": ids[1], "label": False}])
    dd("tensor_label", [{"input_ids": ids[0], "label": T(3)}, {"input_ids": ids[1], "label": T(1)}])
    dd("float_tensor_label", [{"input_ids": ids[0], "label": T(0.25, "float32")},
                              {"input_ids": ids[1], "label": T(1.5, "float32")}])
    # A NumPy integer is not a Python int: 4.37 then makes float labels (transformers 5 makes int64).
    dd("numpy_scalar_label", [{"input_ids": ids[0], "label": {"__t__": "np_scalar", "v": 1, "dtype": "int64"}},
                              {"input_ids": ids[1], "label": {"__t__": "np_scalar", "v": 0, "dtype": "int64"}}],
       refs=ONLY_437)
    dd("label_ids_int", [{"input_ids": ids[0], "label_ids": [1, 0, 1]}, {"input_ids": ids[1], "label_ids": [0, 0, 1]}])
    dd("label_ids_float", [{"input_ids": ids[0], "label_ids": [0.5, 1.0]},
                           {"input_ids": ids[1], "label_ids": [1.0, 0.0]}])
    dd("label_ids_tensor", [{"input_ids": ids[0], "label_ids": T([1, 2])},
                            {"input_ids": ids[1], "label_ids": T([3, 4])}])
    dd("label_wins_over_label_ids", [{"input_ids": ids[0], "label": 1, "label_ids": [9]},
                                     {"input_ids": ids[1], "label": 0, "label_ids": [8]}])
    dd("none_label_and_strings_skipped", [{"input_ids": ids[0], "label": None, "text": "a", "extra": None},
                                          {"input_ids": ids[1], "label": None, "text": "b", "extra": None}])
    dd("tensors_and_arrays", [{"input_ids": T(ids[0]), "pixel_values": N([[0.5, 1.0]], "float32"), "score": 0.5},
                              {"input_ids": T(ids[1]), "pixel_values": N([[2.0, 3.0]], "float32"), "score": 1.5}])
    dd("objects", [{"input_ids": ids[0], "attention_mask": [1, 1, 1], "label": 1},
                   {"input_ids": ids[1], "attention_mask": [1, 1, 0], "label": 0}], as_objects=True)
    dd("numpy_out", [{"input_ids": ids[0], "label": 1, "pixel_values": N([0.5, 1.0], "float32")},
                     {"input_ids": ids[1], "label": 0, "pixel_values": N([2.0, 3.0], "float32")}],
       call={"return_tensors": "np"})
    dd("numpy_out_float_label_ids", [{"input_ids": ids[0], "label_ids": [0.5]},
                                     {"input_ids": ids[1], "label_ids": [1.5]}],
       call={"return_tensors": "np"})
    dd("error_ragged", [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}], mention=["input_ids", "pad"])
    dd("error_missing_key", [{"input_ids": ids[0], "token_type_ids": [0, 0, 0]}, {"input_ids": ids[1]}],
       mention=["features[1]", "token_type_ids"])

    # -- DataCollatorWithPadding -----------------------------------------------------------------
    def wp(name, tokenizer=ELECTRA, texts=TEXTS, **more):
        c["padding/" + name] = {"collator": "DataCollatorWithPadding", "tokenizer": tokenizer, "texts": texts, **more}

    wp("longest")
    wp("max_length", kwargs={"padding": "max_length", "max_length": 40})
    wp("multiple_of", kwargs={"pad_to_multiple_of": 8})
    wp("max_length_multiple_of", kwargs={"padding": "max_length", "max_length": 30, "pad_to_multiple_of": 16})
    wp("left", tokenizer=ELECTRA_LEFT, kwargs={"pad_to_multiple_of": 8})
    wp("do_not_pad_same_lengths", texts=["a b c", "d e f"], kwargs={"padding": False})
    wp("label_renamed", extra=[{"label": i % 2} for i in range(4)])
    wp("label_ids_renamed", extra=[{"label_ids": [i, 1]} for i in range(4)])
    wp("special_tokens_mask", encode={"return_special_tokens_mask": True})
    wp("roberta", tokenizer=ROBERTA)
    wp("numpy", kwargs={"return_tensors": "np"}, extra=[{"label": 1.5 * i} for i in range(4)])
    wp("error_no_pad_token", tokenizer=GPT2, mention=["pad"])
    c["padding/error_mixed_keys"] = {
        "collator": "DataCollatorWithPadding", "tokenizer": ELECTRA,
        "features": [{"input_ids": [101, 7592, 102], "attention_mask": [1, 1, 1]}, {"input_ids": [101, 102]}],
        "mention": ["features[1]", "attention_mask"],
    }

    # -- DataCollatorForTokenClassification ------------------------------------------------------
    tc_features = [
        {"input_ids": [101, 7592, 2088, 999, 102], "labels": [-100, 1, 2, 0, -100]},
        {"input_ids": [101, 7592, 102], "labels": [-100, 3, -100]},
        {"input_ids": [101, 102], "labels": [-100, -100]},
    ]

    def tc(name, tokenizer=ELECTRA, features=tc_features, **more):
        c["token_classification/" + name] = {
            "collator": "DataCollatorForTokenClassification", "tokenizer": tokenizer, "features": features, **more}

    tc("right")
    tc("left", tokenizer=ELECTRA_LEFT)
    tc("multiple_of_left", tokenizer=ELECTRA_LEFT, kwargs={"pad_to_multiple_of": 4})
    tc("max_length", kwargs={"padding": "max_length", "max_length": 9})
    tc("label_pad_token_id", kwargs={"label_pad_token_id": -1, "pad_to_multiple_of": 8})
    tc("label_key", features=[{"input_ids": f["input_ids"], "label": f["labels"]} for f in tc_features])
    tc("tensor_labels", features=[{"input_ids": f["input_ids"], "labels": T(f["labels"])} for f in tc_features])
    tc("no_labels", features=[{"input_ids": f["input_ids"]} for f in tc_features])
    tc("numpy", call={"return_tensors": "np"})
    tc("numpy_left", tokenizer=ELECTRA_LEFT, kwargs={"return_tensors": "np", "pad_to_multiple_of": 8})
    tc("numpy_no_labels", features=[{"input_ids": f["input_ids"]} for f in tc_features],
       kwargs={"return_tensors": "np"})
    tc("error_missing_labels", features=[tc_features[0], {"input_ids": [101, 102]}], mention=["features[1]", "labels"])

    # -- DataCollatorForSeq2Seq ------------------------------------------------------------------
    targets = [{"targets": t} for t in ["A summary.", "Another, rather longer, summary of it all.", "ok", "x y"]]
    pegasus = {"vocab_size": 30522, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
               "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32,
               "decoder_ffn_dim": 32, "max_position_embeddings": 128, "pad_token_id": 0}

    def s2s(name, tokenizer=ELECTRA, extra=targets, **more):
        c["seq2seq/" + name] = {"collator": "DataCollatorForSeq2Seq", "tokenizer": tokenizer, "texts": TEXTS,
                                "extra": extra, **more}

    s2s("longest")
    s2s("multiple_of", kwargs={"pad_to_multiple_of": 8})
    s2s("left", tokenizer=ELECTRA_LEFT, kwargs={"pad_to_multiple_of": 8})
    s2s("label_pad_token_id", kwargs={"label_pad_token_id": 0})
    # 4.37 pads inputs to max_length but labels only to the longest label; transformers 5 pads both.
    s2s("max_length", kwargs={"padding": "max_length", "max_length": 40}, refs=ONLY_437)
    s2s("numpy", kwargs={"return_tensors": "np", "pad_to_multiple_of": 4})
    s2s("numpy_labels_arrays", extra=[{"labels": N([5, 6, 7])}, {"labels": N([8])}, {"labels": N([9, 9])},
                                      {"labels": N([1])}], tokenizer=ELECTRA_LEFT)
    # transformers 5 adds labels=None
    s2s("no_labels", extra=[], model=dict(pegasus, decoder_start_token_id=0), refs=ONLY_437)
    s2s("model_decoder_input_ids", model=dict(pegasus, decoder_start_token_id=0))
    s2s("model_decoder_start_token", model=dict(pegasus, decoder_start_token_id=3), kwargs={"pad_to_multiple_of": 8})
    s2s("model_left", tokenizer=ELECTRA_LEFT, model=dict(pegasus, decoder_start_token_id=2))
    s2s("error_missing_labels", extra=targets[:1], mention=["features[1]", "labels"])

    # -- DataCollatorForLanguageModeling ---------------------------------------------------------
    def lm(name, tokenizer=ELECTRA, texts=TEXTS, **more):
        c["language_modeling/" + name] = {
            "collator": "DataCollatorForLanguageModeling", "tokenizer": tokenizer, "texts": texts, **more}

    for seed in range(4):
        lm(f"mlm_seed{seed}", seed=seed, calls=3)
    lm("mlm_probability_half", kwargs={"mlm_probability": 0.5}, seed=1, calls=2)
    lm("mlm_probability_one", kwargs={"mlm_probability": 1.0}, seed=2)
    lm("mlm_special_tokens_mask_field", encode={"return_special_tokens_mask": True}, seed=3, calls=2)
    lm("mlm_multiple_of", kwargs={"pad_to_multiple_of": 8}, seed=4, calls=2)
    lm("mlm_left", tokenizer=ELECTRA_LEFT, kwargs={"pad_to_multiple_of": 8}, seed=5, calls=2)
    lm("mlm_token_id_lists", ids_only=True, seed=6, calls=2)
    lm("mlm_token_id_lists_left", tokenizer=ELECTRA_LEFT, ids_only=True, kwargs={"pad_to_multiple_of": 4}, seed=7)
    lm("mlm_token_id_tensors", ids_only=True, seed=8,
       features=[{"input_ids": T([101, 2000 + i, 2001, 2002, 102])} for i in range(3)], texts=None)
    lm("mlm_roberta", tokenizer=ROBERTA, seed=9, calls=2)
    # transformers 5 draws NumPy's random numbers differently from 4.37
    lm("mlm_numpy", kwargs={"return_tensors": "np", "mlm_probability": 0.4}, seed=10, calls=2, refs=ONLY_437)
    lm("mlm_numpy_token_id_lists", ids_only=True, call={"return_tensors": "np"}, seed=11, calls=2, refs=ONLY_437)
    lm("clm", kwargs={"mlm": False})
    lm("clm_gpt2", tokenizer=GPT2_PAD, kwargs={"mlm": False, "pad_to_multiple_of": 8})
    lm("clm_gpt2_left_token_id_lists", tokenizer=GPT2_PAD_LEFT, ids_only=True, kwargs={"mlm": False})
    lm("clm_numpy", kwargs={"mlm": False, "return_tensors": "np"})
    lm("clm_no_padding_needed", tokenizer=GPT2, texts=["one two", "three four"], ids_only=True, kwargs={"mlm": False})
    lm("error_mlm_without_mask_token", tokenizer=GPT2_PAD, mention=["mlm", "mask"])
    lm("error_pad_without_pad_token", tokenizer=GPT2, ids_only=True, kwargs={"mlm": False}, mention=["pad_token"])
    for key in [k for k in c if k.startswith("language_modeling/") and c[k]["texts"] is None]:
        del c[key]["texts"]

    # -- DataCollatorForWholeWordMask (gone from transformers 5) ---------------------------------
    def wwm(name, texts=WORD_TEXTS, **more):
        c["whole_word_mask/" + name] = {"collator": "DataCollatorForWholeWordMask", "tokenizer": ELECTRA,
                                        "texts": texts, "refs": ONLY_437, **more}

    for seed in range(3):
        wwm(f"seed{seed}", seed=seed, calls=3)
    wwm("probability_half", kwargs={"mlm_probability": 0.5}, seed=3, calls=2)
    wwm("token_id_lists_multiple_of", ids_only=True, kwargs={"pad_to_multiple_of": 8}, seed=4, calls=2)
    wwm("chinese_ref", texts=["我爱北京天安门", "今天天气很好"],
        extra=[{"chinese_ref": [3, 5]}, {"chinese_ref": [2]}],
        seed=5, calls=2)
    wwm("numpy", kwargs={"return_tensors": "np"}, seed=6, calls=2)
    return c


CASES = cases()


def _run_ours_and_reference(assets, legacy_python):
    names = list(CASES)
    payload = [CASES[n] for n in names]
    ours = _collator_runner.run_cases("polyformers", assets, payload)
    v5 = _collator_runner.run_cases("transformers", assets, [c for c in payload if c.get("refs") != ONLY_437])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([str(legacy_python), str(RUNNER), "transformers", str(assets)], input=json.dumps(payload),
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    v437, v5 = iter(json.loads(proc.stdout)), iter(v5)
    results = {}
    for name, case, mine in zip(names, payload, ours):
        old = next(v437)
        new = next(v5) if case.get("refs") != ONLY_437 else None
        results[name] = (mine, old, new)
    return results


@pytest.fixture(scope="module")
def results(assets, legacy_python):
    return _run_ours_and_reference(assets, legacy_python)


def _assert_same(case, ours, ref, which, strict=True):
    if "error" in ref:
        assert "error" in ours, f"{which} raised {ref['error']}: {ref['message']}; ours returned a batch"
        assert ref["error"] in ours["mro"], f"{which} raised {ref['error']}, ours {ours['error']}: {ours['message']}"
        for word in case.get("mention", []):
            assert word in ours["message"], f"error message should mention {word!r}: {ours['message']}"
        return
    assert "error" not in ours, f"ours raised {ours['error']}: {ours['message']}"
    assert len(ours["outputs"]) == len(ref["outputs"])
    for call, (mine, theirs) in enumerate(zip(ours["outputs"], ref["outputs"])):
        if strict:
            assert mine["keys"] == theirs["keys"], f"call {call}: keys differ from {which}"
            assert mine["type"] == theirs["type"], f"call {call}: batch type differs from {which}"
        else:
            assert sorted(mine["keys"]) == sorted(theirs["keys"]), f"call {call}: keys differ from {which}"
        for key in theirs["keys"]:
            assert mine["values"][key] == theirs["values"][key], f"call {call}: {key!r} differs from {which}"


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(results, name):
    case = CASES[name]
    ours, v437, v5 = results[name]
    _assert_same(case, ours, v437, "transformers 4.37")
    if v5 is not None:
        # transformers 5's tokenizers and collators order some keys differently and return a BatchEncoding
        # where 4.37 returns a dict: 4.37 alone checks those.
        _assert_same(case, ours, v5, "transformers 5", strict=False)
    if "mention" in case:
        assert "error" in ours, f"expected an error, got {ours}"


def test_cases_exercise_masking(results):
    # The parity checks would pass vacuously if nothing were masked, or if every seed gave the same mask.
    seen = set()
    for seed in range(4):
        ours, _, _ = results[f"language_modeling/mlm_seed{seed}"]
        labels = ours["outputs"][0]["values"]["labels"]["v"]
        chosen = sum(label != -100 for row in labels for label in row)
        assert chosen > 0
        seen.add(json.dumps(labels))
    assert len(seen) == 4
    for name in ("whole_word_mask/seed0", "whole_word_mask/seed1"):
        ours, _, _ = results[name]
        assert any(label != -100 for row in ours["outputs"][0]["values"]["labels"]["v"] for label in row)


@pytest.fixture(scope="module")
def electra(assets):
    return ElectraTokenizer(str(assets / "minilm" / "vocab.txt"))


def test_mlm_statistics(electra):
    from polyformers.training.collators import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(electra, mlm_probability=0.3)
    rows = [[electra.cls_token_id] + list(range(2000, 2200)) + [electra.sep_token_id] for _ in range(50)]
    rows[0] = rows[0][:20]  # padded row
    torch.manual_seed(0)
    batch = collator(rows)
    inputs, labels = batch["input_ids"], batch["labels"]
    original = torch.full_like(inputs, electra.pad_token_id)
    for i, row in enumerate(rows):
        original[i, : len(row)] = torch.tensor(row)
    chosen = labels != -100
    special = sum(original == i for i in (electra.cls_token_id, electra.sep_token_id, electra.pad_token_id)).bool()
    assert not (chosen & special).any()
    assert torch.equal(labels[chosen], original[chosen])
    assert torch.equal(inputs[~chosen], original[~chosen])
    share = chosen.sum().item() / (~special).sum().item()
    assert 0.27 < share < 0.33
    masked = (inputs == electra.mask_token_id) & chosen
    kept = (inputs == original) & chosen
    assert 0.76 < masked.sum().item() / chosen.sum().item() < 0.84
    assert 0.07 < kept.sum().item() / chosen.sum().item() < 0.13


def test_argument_errors_name_the_argument(electra, assets):
    from polyformers.training import collators as C

    gpt2 = GPT2Tokenizer(str(assets / "gpt2" / "vocab.json"), str(assets / "gpt2" / "merges.txt"))
    with pytest.raises(ValueError, match="mlm=False"):
        C.DataCollatorForLanguageModeling(gpt2)
    with pytest.raises(ValueError, match="mlm_probability"):
        C.DataCollatorForLanguageModeling(electra, mlm_probability=1.5)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        C.DataCollatorWithPadding(electra, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="return_tensors"):
        C.DataCollatorForTokenClassification(electra)([{"input_ids": [1, 2]}], return_tensors="jax")
    with pytest.raises(ValueError, match="return_tensors"):
        C.default_data_collator([{"input_ids": [1, 2]}], return_tensors="tf")
    with pytest.raises(ValueError, match="features"):
        C.DataCollatorWithPadding(electra)([])
    with pytest.raises(ValueError, match=r"examples\[1\]"):
        C.DataCollatorForLanguageModeling(electra)([{"input_ids": [101, 102]}, "not ids"])
    # The missing-key error is both what the reference raises (KeyError) and a ValueError.
    with pytest.raises(KeyError):
        C.default_data_collator([{"a": 1}, {"b": 2}])


def test_seq2seq_leaves_features_unchanged_and_uses_polyformers_pegasus(electra):
    from polyformers import PegasusConfig, PegasusForConditionalGeneration
    from polyformers.training.collators import DataCollatorForSeq2Seq

    config = PegasusConfig(vocab_size=64, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
                           max_position_embeddings=32, pad_token_id=0, decoder_start_token_id=7)
    model = PegasusForConditionalGeneration(config)
    features = [{"input_ids": [101, 5, 102], "labels": [11, 12, 13]}, {"input_ids": [101, 102], "labels": [14]}]
    batch = DataCollatorForSeq2Seq(electra, model=model)(features)
    assert features[1]["labels"] == [14]
    assert batch["labels"].tolist() == [[11, 12, 13], [14, -100, -100]]
    # shifted right, decoder_start_token_id first, -100 replaced by the pad id
    assert batch["decoder_input_ids"].tolist() == [[7, 11, 12], [7, 14, 0]]


def test_return_tensors_at_call_overrides_the_collator_setting(electra):
    import numpy as np

    from polyformers.training import collators as C

    token_labels = [{"input_ids": [101, 7592, 102], "labels": [0, 1, 0]}, {"input_ids": [101, 102], "labels": [0, 0]}]
    one_label = [{"input_ids": [101, 7592, 102], "label": 1}, {"input_ids": [101, 102], "label": 0}]
    same_length = [{"input_ids": [1, 2], "label": 1}, {"input_ids": [3, 4], "label": 0}]
    for collator, features in ((C.DataCollatorWithPadding(electra), one_label),
                               (C.DataCollatorForTokenClassification(electra), token_labels),
                               (C.DataCollatorForSeq2Seq(electra), token_labels),
                               (C.DataCollatorForLanguageModeling(electra, mlm=False), one_label),
                               (C.DefaultDataCollator(), same_length)):
        name = type(collator).__name__
        assert all(isinstance(v, np.ndarray) for v in collator(features, return_tensors="np").values()), name
        assert all(isinstance(v, torch.Tensor) for v in collator(features).values()), name

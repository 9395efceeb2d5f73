"""TF RoBERTa (Keras 3) against polyformers' PyTorch RoBERTa and the reference's own 4.37 TF classes.

One module-scoped fixture does the slow work once: perturbed PyTorch checkpoints, the Keras models
loaded from them, and one run of the 4.37 environment (its TF classes on the same folders with
``from_pt=True``, its ``tf_model.h5`` files, its PyTorch classes on folders saved by our Keras models).
Inputs hold real padding (right, left, a pad id inside a row): RoBERTa derives positions from it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import polyformers as P

ORACLE = Path(__file__).with_name("_legacy_tf_oracle.py")
ATOL = 1e-4
PAD = 1
TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=40, type_vocab_size=2, pad_token_id=PAD, bos_token_id=0, eos_token_id=2,
)
CROSS = dict(TINY, is_decoder=True, add_cross_attention=True)
B, S = 4, 9


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    ids = rng.randint(3, TINY["vocab_size"], (B, S))
    ids[:, 0] = 0
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, 6:] = 0  # right padding
    mask[2, :3] = 0  # left padding: real tokens still start at position PAD + 1
    ids[mask == 0] = PAD
    ids[3, 4] = PAD  # a pad id the mask keeps
    right = mask.copy()
    right[2] = 1
    right[2, 7:] = 0  # decoders: right padding only, so that no query row is fully masked
    dec_ids = np.where(right == 1, ids, PAD)
    dec_ids[3, 4] = 7
    types = np.zeros((B, S), dtype=np.int64)
    types[:, 5:] = 1
    mlm = np.full((B, S), -100)
    mlm[:, 2] = ids[:, 2]
    mlm[0, 4] = 7
    head_mask = np.ones((2, 4), dtype=np.float32)
    head_mask[0, 1], head_mask[1, 3] = 0.0, 0.5
    return dict(
        ids=ids, mask=mask, types=types, mlm=mlm, head_mask=head_mask,
        embeds=rng.randn(B, S, TINY["hidden_size"]).astype(np.float32),
        positions=rng.randint(0, TINY["max_position_embeddings"], (B, S)),
        dec_ids=dec_ids, dec_mask=right, step=rng.randint(3, TINY["vocab_size"], (B, 1)),
        step_mask=np.concatenate([right, np.ones((B, 1), dtype=np.int64)], 1),
        enc=rng.randn(B, 5, TINY["hidden_size"]).astype(np.float32),
        enc_mask=np.array([[1, 1, 1, 0, 0]] + [[1] * 5] * 3),
        seq3=rng.randint(0, 3, (B,)), reg=rng.randn(B).astype(np.float32),
        multi=rng.randint(0, 2, (B, 4)).astype(np.float32),
        tok=np.where(mask == 1, rng.randint(0, 5, (B, S)), -100),
        start=np.array([1, 8, 2, 0]), end=np.array([3, 8, 5, 0]),
        mc_ids=np.stack([ids[:2], ids[2:]]), mc_mask=np.stack([mask[:2], mask[2:]]), mc_labels=np.array([0, 1]),
    )


BASE = {"input_ids": "@ids", "attention_mask": "@mask", "token_type_ids": "@types"}
EVERY = dict(BASE, output_attentions=True, output_hidden_states=True)
ENC = {"encoder_hidden_states": "@enc", "encoder_attention_mask": "@enc_mask"}

ALL = 99
# name: (class without "TF", config, calls, how many of the calls the 4.37 TF class runs too: it has no
# head_mask, relative positions, untied LM head or multi-label loss)
CASES = {
    "model": ("RobertaModel", TINY, [
        BASE, EVERY, dict(BASE, position_ids="@positions"),
        {"inputs_embeds": "@embeds", "attention_mask": "@mask", "output_hidden_states": True},
        dict(EVERY, return_dict=False),
    ], ALL),
    "model_extras": ("RobertaModel", dict(TINY, position_embedding_type="relative_key_query"),
                     [EVERY, dict(BASE, head_mask="@head_mask")], 0),
    "masked_lm": ("RobertaForMaskedLM", TINY, [dict(EVERY, labels="@mlm"), dict(BASE, labels="@mlm", return_dict=False),
                                               {"inputs_embeds": "@embeds", "attention_mask": "@mask"}], ALL),
    "masked_lm_untied": ("RobertaForMaskedLM", dict(TINY, tie_word_embeddings=False), [dict(BASE, labels="@mlm")], 0),
    "causal": ("RobertaForCausalLM", CROSS, [
        dict(ENC, input_ids="@dec_ids", attention_mask="@dec_mask", output_attentions=True, output_hidden_states=True),
        dict(ENC, input_ids="@step", attention_mask="@step_mask", past_key_values="#0.past_key_values",
             output_attentions=True),
        dict(ENC, input_ids="@dec_ids", attention_mask="@dec_mask", labels="@dec_ids", use_cache=False),
    ], ALL),
    "seq": ("RobertaForSequenceClassification", dict(TINY, num_labels=3), [dict(EVERY, labels="@seq3")], ALL),
    "seq_regression": ("RobertaForSequenceClassification", dict(TINY, num_labels=1), [dict(BASE, labels="@reg")], ALL),
    "seq_multi": ("RobertaForSequenceClassification",
                  dict(TINY, num_labels=4, problem_type="multi_label_classification"), [dict(BASE, labels="@multi")],
                  0),
    "token": ("RobertaForTokenClassification", dict(TINY, num_labels=5), [dict(EVERY, labels="@tok")], ALL),
    "qa": ("RobertaForQuestionAnswering", TINY, [dict(EVERY, start_positions="@start", end_positions="@end")], ALL),
    # The 4.37 TF class hands output_attentions/output_hidden_states to the wrong arguments of its main
    # layer, so it returns neither: only the first call is compared with it.
    "choice": ("RobertaForMultipleChoice", TINY, [
        {"input_ids": "@mc_ids", "attention_mask": "@mc_mask", "labels": "@mc_labels"},
        {"input_ids": "@mc_ids", "attention_mask": "@mc_mask", "output_hidden_states": True, "output_attentions": True},
    ], 1),
}


def _resolve(call: dict, arrays: dict, outputs: list, convert) -> dict:
    args = {}
    for name, value in call.items():
        if isinstance(value, str) and value.startswith("@"):
            args[name] = convert(arrays[value[1:]])
        elif isinstance(value, str) and value.startswith("#"):
            index, field = value[1:].split(".", 1)
            args[name] = outputs[int(index)][field]
        else:
            args[name] = value
    return args


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}.{i}", out)
    elif value is not None:
        out[prefix] = value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _run(model, calls, arrays, convert=lambda a: a):
    flat, outputs, kinds = {}, [], []
    for i, call in enumerate(calls):
        with torch.no_grad():
            result = model(**_resolve(call, arrays, outputs, convert))
        outputs.append(result)
        items = enumerate(result) if isinstance(result, tuple) else result.items()
        kinds.append([str(k) for k, _ in (enumerate(result) if isinstance(result, tuple) else result.items())])
        for key, value in items:
            _flatten(value, f"{i}.{key}", flat)
    return flat, kinds


def _assert_close(expected: dict, actual: dict, what: str, reduce_loss: bool = False) -> None:
    assert sorted(expected) == sorted(actual), f"{what}: outputs differ: {sorted(expected)} vs {sorted(actual)}"
    for key, ref in expected.items():
        ours = actual[key]
        if reduce_loss and ref.ndim == 0 and ours.shape != ref.shape:
            ours = ours.mean()  # TF losses keep one value per example (or shape (1,)); PyTorch averages
        assert ours.shape == ref.shape, f"{what}: {key} has shape {ours.shape}, expected {ref.shape}"
        if np.issubdtype(ref.dtype, np.floating):
            diff = float(np.abs(ours.astype(np.float64) - ref).max()) if ref.size else 0.0
            assert diff <= ATOL, f"{what}: {key} differs by {diff:.3g}"
        else:
            np.testing.assert_array_equal(ours, ref, err_msg=f"{what}: {key}")


def _perturbed_pt(cls_name: str, config: dict, folder: Path, seed: int):
    torch.manual_seed(seed)
    model = getattr(P, cls_name)(P.RobertaConfig(**config))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.eval()
    model.save_pretrained(folder)
    return model


def _run_legacy(python: Path, job: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(python), str(ORACLE)], input=json.dumps(job), capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, f"reference run failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def world(tmp_path_factory, legacy_python):
    import tensorflow as tf  # noqa: F401  (imported once here; the slow part of this module)

    root = tmp_path_factory.mktemp("tf_roberta")
    arrays = _arrays()
    np.savez(root / "inputs.npz", **arrays)
    pt_models, tf_models, runs = {}, {}, []
    for seed, (name, (cls_name, config, calls, legacy)) in enumerate(CASES.items()):
        pt_models[name] = _perturbed_pt(cls_name, config, root / name, seed)
        tf_models[name] = getattr(P, "TF" + cls_name).from_pretrained(root / name)
        if legacy:
            runs.append({"name": name, "cls": "TF" + cls_name, "folder": str(root / name), "from_pt": True,
                         "calls": calls[:legacy]})
    # Our Keras save, read by the reference's PyTorch class; the reference's h5 save, read by ours.
    tf_models["masked_lm"].save_pretrained(root / "ours_masked_lm")
    runs.append({"name": "pt_reads_ours", "cls": "RobertaForMaskedLM", "folder": str(root / "ours_masked_lm"),
                 "calls": CASES["masked_lm"][2][:2]})
    runs[[r["name"] for r in runs].index("masked_lm")]["save_h5"] = str(root / "h5_masked_lm")
    runs.append({"name": "bert", "cls": "TFBertModel", "calls": [], "save_h5": str(root / "h5_bert"),
                 "config": {k: TINY[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                 "num_attention_heads", "intermediate_size")}})
    kinds = _run_legacy(legacy_python, {"inputs": str(root / "inputs.npz"), "out": str(root / "out.npz"),
                                        "runs": runs})
    legacy = dict(np.load(root / "out.npz"))
    return dict(root=root, arrays=arrays, pt=pt_models, tf=tf_models, legacy=legacy, legacy_kinds=kinds)


def _legacy_outputs(world, name):
    prefix = name + "."
    found = {k[len(prefix):]: v for k, v in world["legacy"].items() if k.startswith(prefix)}
    assert found, f"the reference run returned nothing for {name}"
    return found


@pytest.mark.parametrize("name", list(CASES))
def test_matches_polyformers_pytorch(world, name):
    cls_name, _, calls, _ = CASES[name]
    tf_model = world["tf"][name]
    assert type(tf_model).__name__ == "TF" + cls_name
    expected, pt_kinds = _run(world["pt"][name], calls, world["arrays"], torch.as_tensor)
    actual, tf_kinds = _run(tf_model, calls, world["arrays"])
    assert [sorted(k) for k in tf_kinds] == [sorted(k) for k in pt_kinds]
    _assert_close(expected, actual, name, reduce_loss=True)


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[3]])
def test_matches_reference_tf_classes(world, name):
    """The 4.37 TF class, loading the same PyTorch folder with from_pt=True: same fields in the same
    order, same values, same loss shapes."""
    actual, kinds = _run(world["tf"][name], CASES[name][2][:CASES[name][3]], world["arrays"])
    assert kinds == world["legacy_kinds"][name]
    _assert_close(_legacy_outputs(world, name), actual, f"{name} vs the 4.37 TF class")


def test_reference_pytorch_loads_our_save(world):
    calls = CASES["masked_lm"][2][:2]
    ours, _ = _run(world["tf"]["masked_lm"], calls, world["arrays"])
    reference = _legacy_outputs(world, "pt_reads_ours")
    _assert_close(reference, ours, "4.37 RobertaForMaskedLM on our Keras save", reduce_loss=True)
    again = P.RobertaForMaskedLM.from_pretrained(world["root"] / "ours_masked_lm")
    mine, _ = _run(again, calls, world["arrays"], torch.as_tensor)
    _assert_close(mine, ours, "our RobertaForMaskedLM on our Keras save", reduce_loss=True)


def test_loads_reference_h5(world):
    folder = world["root"] / "h5_masked_lm"
    assert (folder / "tf_model.h5").exists() and not (folder / "model.safetensors").exists()
    model = P.TFRobertaForMaskedLM.from_pretrained(folder)
    calls = CASES["masked_lm"][2]
    expected, _ = _run(world["tf"]["masked_lm"], calls, world["arrays"])
    actual, _ = _run(model, calls, world["arrays"])
    _assert_close(expected, actual, "loaded from the reference's tf_model.h5")
    bare = P.TFRobertaModel.from_pretrained(folder)  # a head model's h5 into the bare model
    np.testing.assert_allclose(
        bare(world["arrays"]["ids"]).last_hidden_state,
        world["tf"]["masked_lm"].roberta(world["arrays"]["ids"]).last_hidden_state, atol=ATOL,
    )


def test_h5_of_another_architecture_is_refused(world):
    with pytest.raises(OSError, match="belong to TFRobertaModel"):
        P.TFRobertaModel.from_pretrained(world["root"] / "h5_bert", config=P.RobertaConfig(**TINY))


def test_input_formats_agree(world):
    model, a = world["tf"]["masked_lm"], world["arrays"]
    keywords = model(input_ids=a["ids"], attention_mask=a["mask"], token_type_ids=a["types"], labels=a["mlm"])
    as_list = model([a["ids"], a["mask"], a["types"]], labels=a["mlm"])
    as_dict = model({"input_ids": a["ids"], "attention_mask": a["mask"], "token_type_ids": a["types"],
                     "labels": a["mlm"]})
    positional = model(a["ids"], a["mask"], a["types"], labels=a["mlm"])
    int32 = model(a["ids"].astype(np.int32), attention_mask=a["mask"], token_type_ids=a["types"].astype(np.int32),
                  labels=a["mlm"])
    for other in (as_list, as_dict, positional, int32):
        assert list(other.keys()) == ["loss", "logits"]
        np.testing.assert_array_equal(other.logits, keywords.logits)
        np.testing.assert_array_equal(other.loss, keywords.loss)


def test_bad_inputs_name_the_problem(world):
    model, a = world["tf"]["model"], world["arrays"]
    with pytest.raises(ValueError, match="list of 15 inputs, expected at most 13"):
        model([a["ids"]] * 15)
    with pytest.raises(ValueError, match=r"unknown input name\(s\) \['labels'\]"):
        model({"input_ids": a["ids"], "labels": a["ids"]})
    with pytest.raises(ValueError, match=r"\['attention_mask'\] both"):
        model({"input_ids": a["ids"], "attention_mask": a["mask"]}, attention_mask=a["mask"])
    with pytest.raises(TypeError, match="input_ids must hold integer ids"):
        model(a["ids"].astype(np.float32))
    with pytest.raises(IndexError, match="input_ids holds id 99, outside"):
        model(np.full((1, 3), 99))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 8\), expected \(4, 9\)"):
        model(a["ids"], attention_mask=a["mask"][:, :8])


def test_training_switches_dropout(world):
    config = P.RobertaConfig(**dict(TINY, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    model = P.TFRobertaForMaskedLM(config)
    ids = world["arrays"]["ids"]
    first, second = model(ids).logits, model(ids, training=False).logits
    np.testing.assert_array_equal(first, second)
    trained = model(ids, training=True).logits
    assert np.abs(np.asarray(trained) - np.asarray(first)).max() > 1e-3


def test_decoder_steps_equal_the_full_pass(world):
    model, a = world["tf"]["causal"], world["arrays"]
    ids = a["ids"][:, :] * 0 + a["dec_ids"]
    ids = np.where(ids == PAD, 5, ids)  # no padding: the step sees every earlier token
    enc = {"encoder_hidden_states": a["enc"], "encoder_attention_mask": a["enc_mask"]}
    full = model(ids, **enc, use_cache=False)
    assert "past_key_values" not in full
    past = None
    logits = []
    for start, stop in ((0, 5), (5, 6), (6, 9)):
        step = model(ids[:, start:stop], past_key_values=past, use_cache=True, **enc)
        past = step.past_key_values
        assert len(past) == 2 and len(past[0]) == 4 and past[0][0].shape[2] == stop
        logits.append(np.asarray(step.logits))
    np.testing.assert_allclose(np.concatenate(logits, 1), full.logits, atol=ATOL)


def test_jit_compiled_forward_equals_eager(world):
    import tensorflow as tf

    model, a = world["tf"]["causal"], world["arrays"]
    args = dict(attention_mask=a["dec_mask"], encoder_hidden_states=a["enc"], output_attentions=True)

    @tf.function(jit_compile=True)
    def forward(ids):
        return model(ids, **args)

    eager = model(a["dec_ids"], **args)
    compiled = forward(tf.constant(a["dec_ids"]))
    assert list(compiled.keys()) == list(eager.keys())
    for key in ("logits", "attentions", "cross_attentions", "past_key_values"):
        expected, got = {}, {}
        _flatten(eager[key], key, expected)
        _flatten(compiled[key], key, got)
        _assert_close(expected, got, f"jit {key}")


def test_fit_trains_with_labels_in_the_inputs(world):
    import keras

    a = world["arrays"]
    model = P.TFRobertaForSequenceClassification.from_pretrained(world["root"] / "seq")
    assert isinstance(model, __import__("tensorflow").keras.Model)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    data = {"input_ids": a["ids"], "attention_mask": a["mask"], "labels": a["seq3"]}
    history = model.fit(data, batch_size=B, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.8, losses


def test_same_classes_run_on_the_jax_backend(world):
    """The layers use keras.ops only, so KERAS_BACKEND=jax runs the same model to the same outputs."""
    import sys

    folder, out = world["root"] / "masked_lm", world["root"] / "jax_logits.npy"
    code = (
        "import sys, numpy as np, keras, polyformers as P\n"
        "assert keras.backend.backend() == 'jax'\n"
        "m = P.TFRobertaForMaskedLM.from_pretrained(sys.argv[1])\n"
        "a = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], np.asarray(m(a['ids'], attention_mask=a['mask'], token_type_ids=a['types']).logits))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code, str(folder), str(world["root"] / "inputs.npz"), str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a = world["arrays"]
    expected = world["tf"]["masked_lm"](a["ids"], attention_mask=a["mask"], token_type_ids=a["types"]).logits
    np.testing.assert_allclose(np.load(out), expected, atol=ATOL)

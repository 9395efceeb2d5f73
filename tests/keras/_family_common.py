"""What the Keras family tests (ELECTRA, RoBERTa, MPNet) share: running a list of calls on a model, comparing
flattened outputs, the one run of the 4.37 environment (tests/keras/_legacy_tf_oracle.py) and the checks that
read the same in every family.

A call maps argument names to "@key" (an input array), "#i.field" (a field of call i's output) or a plain
value. A family's ``CASES`` maps a case name to (class without "TF", config, calls, how many of the calls
the 4.37 TF class runs too).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import polyformers as P

ORACLE = Path(__file__).with_name("_legacy_tf_oracle.py")
ATOL = 1e-4
ALL = 99  # "every call" in a case's count of calls the reference runs too
BERT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# Cross-attention inputs of a decoder call: the arrays "enc" and "enc_mask".
ENC = {"encoder_hidden_states": "@enc", "encoder_attention_mask": "@enc_mask"}


def call_specs(**more) -> tuple[dict, dict]:
    """A plain call on the arrays "ids" and "mask" (and ``more``), and the same asking for every attention
    map and hidden state."""
    base = {"input_ids": "@ids", "attention_mask": "@mask", **more}
    return base, dict(base, output_attentions=True, output_hidden_states=True)


def bare_model_calls(base: dict, every: dict, *more: dict) -> list[dict]:
    """The bare encoder's calls: ``base``, ``every``, then ``more``, the positions given ("positions"), the
    embeddings given ("embeds") with every hidden state, and every output as a tuple."""
    return [
        base, every, *more, dict(base, position_ids="@positions"),
        {"inputs_embeds": "@embeds", "attention_mask": "@mask", "output_hidden_states": True},
        dict(every, return_dict=False),
    ]


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


def flatten(value, prefix: str, out: dict) -> None:
    """Nested tuples of tensors into ``out`` as numpy arrays under dotted keys (None left out)."""
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            flatten(item, f"{prefix}.{i}", out)
    elif value is not None:
        out[prefix] = value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def flatten_fields(output, keys) -> dict:
    flat = {}
    for key in keys:
        flatten(output[key], key, flat)
    return flat


def run_calls(model, calls, arrays, convert=lambda a: a):
    """Every call on ``model``: the flattened outputs, and each call's output keys (indices for tuples)."""
    flat, outputs, kinds = {}, [], []
    for i, call in enumerate(calls):
        with torch.no_grad():
            result = model(**_resolve(call, arrays, outputs, convert))
        outputs.append(result)
        items = list(enumerate(result) if isinstance(result, tuple) else result.items())
        kinds.append([str(k) for k, _ in items])
        for key, value in items:
            flatten(value, f"{i}.{key}", flat)
    return flat, kinds


def assert_close(expected: dict, actual: dict, what: str, reduce_loss: bool = False) -> None:
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


def _run_legacy(python: Path, job: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(python), str(ORACLE)], input=json.dumps(job), capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, f"reference run failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def perturbed_pt(cls_name: str, config, folder: Path, seed: int):
    """polyformers' PyTorch ``cls_name`` seeded with ``seed``, every weight perturbed, saved to ``folder``."""
    torch.manual_seed(seed)
    model = getattr(P, cls_name)(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.eval()
    model.save_pretrained(folder)
    return model


def build_world(root: Path, legacy_python: Path, arrays: dict, cases: dict, config_cls, tiny: dict,
                ours: tuple[str, int]) -> dict:
    """Perturbed PyTorch checkpoints of every case, the Keras models loaded from them, and one run of the
    4.37 environment: its TF classes on the same folders (``from_pt=True``), a ``tf_model.h5`` of the
    masked LM it writes, a TFBertModel h5 (another architecture), and its PyTorch class on the folder our
    Keras model of case ``ours[0]`` saves (the first ``ours[1]`` calls of that case)."""
    import tensorflow as tf  # noqa: F401  (imported once here; the slow part of these modules)

    np.savez(root / "inputs.npz", **arrays)
    pt_models, tf_models, runs = {}, {}, []
    for seed, (name, (cls_name, config, calls, legacy)) in enumerate(cases.items()):
        pt_models[name] = perturbed_pt(cls_name, config_cls(**config), root / name, seed)
        tf_models[name] = getattr(P, "TF" + cls_name).from_pretrained(root / name)
        if legacy:
            runs.append({"name": name, "cls": "TF" + cls_name, "folder": str(root / name), "from_pt": True,
                         "calls": calls[:legacy]})
    # Our Keras save, read by the reference's PyTorch class; the reference's h5 save, read by ours.
    case, count = ours
    tf_models[case].save_pretrained(root / f"ours_{case}")
    runs.append({"name": "pt_reads_ours", "cls": cases[case][0], "folder": str(root / f"ours_{case}"),
                 "calls": cases[case][2][:count]})
    runs[[r["name"] for r in runs].index("masked_lm")]["save_h5"] = str(root / "h5_masked_lm")
    runs.append({"name": "bert", "cls": "TFBertModel", "calls": [], "save_h5": str(root / "h5_bert"),
                 "config": {k: tiny[k] for k in BERT_KEYS}})
    kinds = _run_legacy(legacy_python, {"inputs": str(root / "inputs.npz"), "out": str(root / "out.npz"),
                                        "runs": runs})
    legacy = dict(np.load(root / "out.npz"))
    return dict(root=root, arrays=arrays, cases=cases, ours=ours, pt=pt_models, tf=tf_models, legacy=legacy,
                legacy_kinds=kinds)


def legacy_outputs(world, name):
    prefix = name + "."
    found = {k[len(prefix):]: v for k, v in world["legacy"].items() if k.startswith(prefix)}
    assert found, f"the reference run returned nothing for {name}"
    return found


def assert_matches_polyformers_pytorch(world, name):
    cls_name, _, calls, _ = world["cases"][name]
    tf_model = world["tf"][name]
    assert type(tf_model).__name__ == "TF" + cls_name
    expected, pt_kinds = run_calls(world["pt"][name], calls, world["arrays"], torch.as_tensor)
    actual, tf_kinds = run_calls(tf_model, calls, world["arrays"])
    assert [sorted(k) for k in tf_kinds] == [sorted(k) for k in pt_kinds]
    assert_close(expected, actual, name, reduce_loss=True)


def assert_matches_reference_tf_class(world, name):
    """The 4.37 TF class, loading the same PyTorch folder with from_pt=True: same fields in the same
    order, same values, same loss shapes."""
    _, _, calls, count = world["cases"][name]
    actual, kinds = run_calls(world["tf"][name], calls[:count], world["arrays"])
    assert kinds == world["legacy_kinds"][name]
    assert_close(legacy_outputs(world, name), actual, f"{name} vs the 4.37 TF class")


def assert_pytorch_reads_our_save(world):
    """The reference's PyTorch class, and ours, on the folder our Keras model saved: the Keras outputs."""
    case, count = world["ours"]
    cls_name, _, calls, _ = world["cases"][case]
    calls = calls[:count]
    ours, _ = run_calls(world["tf"][case], calls, world["arrays"])
    _assert_close_to(legacy_outputs(world, "pt_reads_ours"), ours, f"4.37 {cls_name} on our Keras save")
    again = getattr(P, cls_name).from_pretrained(world["root"] / f"ours_{case}")
    mine, _ = run_calls(again, calls, world["arrays"], torch.as_tensor)
    _assert_close_to(mine, ours, f"our {cls_name} on our Keras save")


def _assert_close_to(expected, actual, what):
    assert_close(expected, actual, what, reduce_loss=True)


def load_reference_h5(world, tf_cls, bare_cls, backbone: str):
    """Our masked LM and bare model from the reference's tf_model.h5 of the masked LM: the masked LM gives
    the outputs of the one loaded from PyTorch, the bare model its backbone's. Returns both loading infos."""
    folder = world["root"] / "h5_masked_lm"
    assert (folder / "tf_model.h5").exists() and not (folder / "model.safetensors").exists()
    model, info = tf_cls.from_pretrained(folder, output_loading_info=True)
    calls = world["cases"]["masked_lm"][2]
    expected, _ = run_calls(world["tf"]["masked_lm"], calls, world["arrays"])
    actual, _ = run_calls(model, calls, world["arrays"])
    assert_close(expected, actual, "loaded from the reference's tf_model.h5")
    bare, bare_info = bare_cls.from_pretrained(folder, output_loading_info=True)  # a head model's h5, bare
    ids = world["arrays"]["ids"]
    np.testing.assert_allclose(bare(ids).last_hidden_state,
                               getattr(world["tf"]["masked_lm"], backbone)(ids).last_hidden_state, atol=ATOL)
    return info, bare_info


def family_tests(label: str, cases: dict, config_cls, tiny: dict, arrays, ours: tuple[str, int]):
    """The module fixture ``world`` (see build_world; ``arrays`` makes the inputs) and the tests every family
    module runs on it: each case against polyformers' PyTorch class, the cases the 4.37 TF classes run
    against those, and the reference's PyTorch class reading our save. A module binds them to these names."""

    @pytest.fixture(scope="module")
    def world(tmp_path_factory, legacy_python):
        return build_world(tmp_path_factory.mktemp(label), legacy_python, arrays(), cases, config_cls, tiny, ours)

    @pytest.mark.parametrize("name", list(cases))
    def test_matches_polyformers_pytorch(world, name):
        assert_matches_polyformers_pytorch(world, name)

    @pytest.mark.parametrize("name", [name for name, case in cases.items() if case[3]])
    def test_matches_reference_tf_classes(world, name):
        assert_matches_reference_tf_class(world, name)

    def test_reference_pytorch_loads_our_save(world):
        assert_pytorch_reads_our_save(world)

    return world, test_matches_polyformers_pytorch, test_matches_reference_tf_classes, \
        test_reference_pytorch_loads_our_save


def padded_batch(rng, low: int, vocab_size: int, first: int, pad: int, batch: int = 4, length: int = 9):
    """Ids from ``low`` up, ``first`` at the start of each row; row 1 padded on the right, row 2 on the left."""
    ids = rng.randint(low, vocab_size, (batch, length))
    ids[:, 0] = first
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, 6:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    ids[mask == 0] = pad
    return ids, mask


def mlm_labels_and_head_mask(ids):
    """Masked-LM labels at position 2 of every row (and one more in row 0); a head mask of 2 layers x 4 heads
    with a head off and a head halved."""
    mlm = np.full(ids.shape, -100)
    mlm[:, 2] = ids[:, 2]
    mlm[0, 4] = 7
    head_mask = np.ones((2, 4), dtype=np.float32)
    head_mask[0, 1], head_mask[1, 3] = 0.0, 0.5
    return mlm, head_mask


def assert_jit_equals_eager(model, ids, mask, **options):
    """The model under tf.function(jit_compile=True) gives its eager outputs (every field, within ATOL)."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def forward(ids, mask):
        return model(ids, attention_mask=mask, **options)

    eager = model(ids, attention_mask=mask, **options)
    compiled = forward(tf.constant(ids), tf.constant(mask))
    assert_close(flatten_fields(eager, eager.keys()), flatten_fields(compiled, eager.keys()), "jit")


def assert_dropout_only_in_training(model, ids):
    first, second = model(ids).logits, model(ids, training=False).logits
    np.testing.assert_array_equal(first, second)
    trained = model(ids, training=True).logits
    assert np.abs(np.asarray(trained) - np.asarray(first)).max() > 1e-3


def assert_fit_lowers_loss(model, data: dict, batch_size: int):
    """keras fit() with the labels among the inputs: eight epochs cut the loss by at least a fifth."""
    import keras
    import tensorflow as tf

    assert isinstance(model, tf.keras.Model)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    losses = model.fit(data, batch_size=batch_size, epochs=8, verbose=0).history["loss"]
    assert losses[-1] < losses[0] * 0.8, losses


def assert_same_outputs(reference, others, keys):
    """Each of ``others`` has exactly ``keys`` and the values of ``reference`` for them, bit for bit."""
    for other in others:
        assert list(other.keys()) == keys
        for key in keys:
            np.testing.assert_array_equal(other[key], reference[key])


def assert_input_formats_agree(model, a: dict, labels: str, int32_mask_and_labels: bool) -> None:
    """Keywords, a list, a dict, positional arguments and int32 ids (with the mask and the labels as well
    when ``int32_mask_and_labels``) give the same loss and logits, the labels being the array ``labels``."""
    ids, mask, types, gold = a["ids"], a["mask"], a["types"], a[labels]
    keywords = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=gold)
    as_list = model([ids, mask, types], labels=gold)
    as_dict = model({"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": gold})
    positional = model(ids, mask, types, labels=gold)
    if int32_mask_and_labels:
        mask, gold = mask.astype(np.int32), gold.astype(np.int32)
    int32 = model(ids.astype(np.int32), attention_mask=mask, token_type_ids=types.astype(np.int32), labels=gold)
    assert_same_outputs(keywords, (as_list, as_dict, positional, int32), ["loss", "logits"])


def assert_foreign_h5_refused(world, cls, config) -> None:
    """The world's BERT h5 file, loaded into ``cls``, is refused with a message naming ``cls``."""
    with pytest.raises(OSError, match=f"belong to {cls.__name__}"):
        cls.from_pretrained(world["root"] / "h5_bert", config=config)


def assert_common_input_mistakes_named(model, ids, listed: int, most: int, unknown: dict) -> None:
    """The input mistakes every family's model names in its error: a list of ``listed`` inputs where it
    takes at most ``most``, input names it does not take (the keys of ``unknown``, with their values), and
    ids that are floats."""
    with pytest.raises(ValueError, match=f"list of {listed} inputs, expected at most {most}"):
        model([ids] * listed)
    names = ", ".join(repr(name) for name in unknown)
    with pytest.raises(ValueError, match=re.escape(f"unknown input name(s) [{names}]")):
        model({"input_ids": ids, **unknown})
    with pytest.raises(TypeError, match="input_ids must hold integer ids"):
        model(ids.astype(np.float32))

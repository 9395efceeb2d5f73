"""Distributed training of the TF* (Keras 3) classes equals training on one device.

One module fixture writes PyTorch checkpoints of tiny RoBERTa, MPNet and ELECTRA models (a sequence
classifier each, and a RoBERTa masked LM) and the training batches, then runs two worker processes at
once (devices must be set up before the framework starts):

* TensorFlow: ``fit`` under ``tf.distribute.MirroredStrategy`` over two logical CPUs, against one device;
* JAX backend: ``keras.distribution.DataParallel`` over four host devices and ``ModelParallel`` on a 2x2
  (batch, model) mesh with :func:`polyformers.keras.distribution.layout_map`, against one device;

each from the same checkpoint, global batch of 8, plain SGD (a gradient scaled wrongly changes the
second step's loss), dropout off. Every distributed model is saved with ``save_pretrained`` under its
distribution, reloaded on one device, and loaded in polyformers' PyTorch classes here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import polyformers as P

WORKER = Path(__file__).with_name("_distribution_worker.py")
PAD = 1
ROWS, S, EVAL = 24, 8, 4  # three steps of the global batch of 8
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=36,
             max_position_embeddings=40, pad_token_id=PAD, num_labels=3, **NO_DROPOUT)
CASES = {
    # name: (PyTorch class, Keras class, config class, config)
    "roberta": ("RobertaForSequenceClassification", "TFRobertaForSequenceClassification", "RobertaConfig",
                dict(SMALL, type_vocab_size=1, bos_token_id=0, eos_token_id=2)),
    "mpnet": ("MPNetForSequenceClassification", "TFMPNetForSequenceClassification", "MPNetConfig",
              dict(SMALL, relative_attention_num_buckets=32)),
    "electra": ("ElectraForSequenceClassification", "TFElectraForSequenceClassification", "ElectraConfig",
                dict(SMALL, embedding_size=16, type_vocab_size=2)),
    "roberta_mlm": ("RobertaForMaskedLM", "TFRobertaForMaskedLM", "RobertaConfig",
                    dict(SMALL, type_vocab_size=1, bos_token_id=0, eos_token_id=2)),
}
MODES = {"tensorflow": ["mirrored"], "jax": ["data", "model"]}


def _inputs(rng, rows):
    ids = rng.randint(3, SMALL["vocab_size"], (rows, S))
    ids[:, 0] = 0
    mask = np.ones((rows, S), dtype=np.int32)
    for row in range(rows):
        mask[row, S - row % 3:] = 0  # right padding of 0, 1 or 2 tokens
    ids[mask == 0] = PAD
    return ids.astype(np.int32), mask


def _labels(rng, name, ids):
    if name != "roberta_mlm":
        return rng.randint(0, 3, (len(ids),)).astype(np.int32)
    # Two labelled tokens in every row: a MirroredStrategy replica averages over its own tokens, so the
    # mean of the replicas' means is the global mean only when they hold as many (see compute_loss).
    labels = np.full(ids.shape, -100, dtype=np.int32)
    labels[:, 1:3] = ids[:, 1:3]
    return labels


def _write_inputs(root: Path) -> dict:
    """The checkpoints, cases.json and data.npz that the workers read; returns the arrays."""
    rng = np.random.RandomState(0)
    torch.manual_seed(0)
    cases, data = [], {}
    for name, (pt_cls, tf_cls, config_cls, config) in CASES.items():
        model = getattr(P, pt_cls)(getattr(P, config_cls)(**config)).eval()
        model.save_pretrained(root / f"ckpt_{name}")
        cases.append({"name": name, "cls": tf_cls, "config": config_cls, "checkpoint": str(root / f"ckpt_{name}")})
        ids, mask = _inputs(rng, ROWS)
        data.update({f"{name}:input_ids": ids, f"{name}:attention_mask": mask,
                     f"{name}:labels": _labels(rng, name, ids)})
        eval_ids, eval_mask = _inputs(rng, EVAL)
        data.update({f"{name}:eval_input_ids": eval_ids, f"{name}:eval_attention_mask": eval_mask})
    (root / "cases.json").write_text(json.dumps(cases))
    np.savez(root / "data.npz", **data)
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distribution")
    data = _write_inputs(root)
    source = str(Path(P.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
    workers = {backend: subprocess.Popen([sys.executable, str(WORKER), backend, str(root)], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for backend in MODES}
    results = {}
    for backend, process in workers.items():
        log, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{backend} worker failed:\n{log[-6000:]}"
        results[backend] = json.loads((root / f"result_{backend}.json").read_text())
        print(f"{backend} worker: {results[backend]['seconds']:.1f} s, {results[backend]['cpu_seconds']:.1f} s of CPU")
        results[backend]["logits"] = dict(np.load(root / f"logits_{backend}.npz"))
    return {"root": root, "data": data, **results}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend, mode", [("tensorflow", "mirrored"), ("jax", "data"), ("jax", "model")])
def test_distributed_fit_has_the_losses_of_one_device(world, backend, mode, name):
    losses = world[backend]["losses"]
    one, many = np.array(losses[f"{name}/one"]), np.array(losses[f"{name}/{mode}"])
    assert one.shape == (3,)
    assert abs(one[0] - one[2]) > 1e-3  # the weights did move: later steps check the summed gradients
    np.testing.assert_allclose(many, one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_both_backends_start_from_the_same_losses(world, name):
    # Same checkpoint, same batches: the JAX backend runs our Keras code as TensorFlow does.
    np.testing.assert_allclose(world["jax"]["losses"][f"{name}/one"], world["tensorflow"]["losses"][f"{name}/one"],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, attention", [("roberta", "attention/self/query"), ("mpnet", "attention/attn/q"),
                                             ("electra", "attention/self/value")])
def test_model_parallel_splits_attention_and_feed_forward(world, name, attention):
    specs = world["jax"]["shardings"][f"{name}/model"]

    def spec(suffix):
        found = [v for path, v in specs.items() if path.endswith(suffix) and "layer_0/" in path]
        assert len(found) == 1, (suffix, sorted(specs))
        return found[0]

    assert spec(f"{attention}/kernel") == [None, "model"]
    assert spec(f"{attention}/bias") == ["model"]
    assert spec("intermediate/dense/kernel") == [None, "model"]
    assert spec("layer_0/output_/dense/kernel") == ["model", None]
    assert spec("layer_0/output_/LayerNorm/gamma") in ([], [None])
    split = [path for path, v in specs.items() if "model" in v]
    assert len(split) == 10  # q, k, v (kernels and biases), attention output, two feed-forward kernels, one bias
    assert all(set(v) <= {None} for v in world["jax"]["shardings"][f"{name}/data"].values())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend, mode", [("tensorflow", "mirrored"), ("jax", "data"), ("jax", "model")])
def test_checkpoint_saved_under_distribution_reloads_on_one_device_and_in_pytorch(world, backend, mode, name):
    reload = world[backend]["reload"][f"{name}/{mode}"]
    assert reload["same_keys"] and reload["max_difference"] == 0.0
    reloaded = world[backend]["logits"][f"{name}/{mode}/reloaded"]
    saved = world[backend]["saved"][f"{name}/{mode}"]
    assert sorted(p.name for p in Path(saved).iterdir()) == ["config.json", "model.safetensors"]
    model = getattr(P, CASES[name][0]).from_pretrained(saved).eval()
    data = world["data"]
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(data[f"{name}:eval_input_ids"]).long(),
                    attention_mask=torch.from_numpy(data[f"{name}:eval_attention_mask"]).long()).logits
    np.testing.assert_allclose(out.numpy(), reloaded, atol=1e-4, rtol=0)
    # training moved the weights away from the starting checkpoint
    start = getattr(P, CASES[name][0]).from_pretrained(world["root"] / f"ckpt_{name}").eval()
    with torch.no_grad():
        before = start(input_ids=torch.from_numpy(data[f"{name}:eval_input_ids"]).long(),
                       attention_mask=torch.from_numpy(data[f"{name}:eval_attention_mask"]).long()).logits
    assert np.abs(before.numpy() - reloaded).max() > 1e-3


def test_layout_rule_that_matches_nothing_is_named(world):
    error = world["jax"]["errors"]["unmatched_rule"]
    assert error["type"] == "ValueError"
    assert "'.*/no_such_layer/kernel' matches no variable" in error["message"]
    assert "TFRobertaForSequenceClassification" in error["message"]


def test_model_axis_that_does_not_divide_the_heads_is_refused(world):
    error = world["jax"]["errors"]["heads"]
    assert error["type"] == "ValueError"
    assert "'model' of size 3" in error["message"] and "num_attention_heads=4" in error["message"]


def test_missing_model_axis_is_refused(world):
    error = world["jax"]["errors"]["axis"]
    assert error["type"] == "ValueError"
    assert "model_axis" in error["message"] and "['batch', 'model']" in error["message"]
    assert "'tensor'" in error["message"]


def test_data_axis_that_does_not_divide_the_batch_is_refused(world):
    error = world["jax"]["errors"]["batch"]
    assert error["type"] == "ValueError"
    assert error["message"].startswith("batch_size:")
    assert "'batch' has 4 devices" in error["message"] and "batch of 6 rows" in error["message"]

"""The reference's legacy tf_model.h5 and flax_model.msgpack, read framework-free as PyTorch names and
layouts, and `convert` from them to safetensors, checked against the reference's own outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from polyformers import PegasusForConditionalGeneration, RobertaForMaskedLM
from polyformers.checkpoints.legacy import LegacyWeights, find_legacy_weights, flax_key, read_flax_msgpack, tf_key
from polyformers.cli import convert
from tests.pipelines import legacy

ATOL = 1e-4
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def world(tmp_path_factory, assets, legacy_python):
    return legacy.world(tmp_path_factory, assets, legacy_python)


def test_name_rules():
    assert tf_key("tf_roberta/roberta/encoder/layer_._3/attention/self/query/kernel:0".split("/", 1)[1]) == (
        "roberta.encoder.layer.3.attention.self.query.weight", True)
    assert tf_key("roberta/embeddings/LayerNorm/gamma:0") == ("roberta.embeddings.LayerNorm.weight", False)
    assert tf_key("lm_head/bias:0") == ("lm_head.bias", False)
    assert tf_key("a/b/kernel:0", {"a.b.kernel": "c.weight"}) == ("c.weight", False)
    assert flax_key(("model", "decoder", "layers", "1", "fc1", "kernel")) == ("model.decoder.layers.1.fc1.weight", True)
    assert flax_key(("model", "shared", "embedding")) == ("model.shared.weight", False)


def test_h5_reads_as_the_pytorch_state(world):
    state = load_file(world["folders"]["roberta_mlm"] / "model.safetensors")
    with find_legacy_weights(world["h5"]) as reader:
        assert isinstance(reader, LegacyWeights) and reader.source_format == "tf"
        # The tied decoder weight and bias are in neither file.
        assert set(reader.keys()) == set(state) and "lm_head.decoder.weight" not in state
        for key in reader.keys():
            assert reader.shape(key) == state[key].shape and reader.dtype(key) == "float32"
            np.testing.assert_array_equal(reader.get(key, "np"), state[key], err_msg=key)
        tensor = reader.get("roberta.encoder.layer.0.attention.self.query.weight", "pt")
        assert isinstance(tensor, torch.Tensor) and tensor.is_contiguous()
        np.testing.assert_array_equal(tensor.numpy(), state["roberta.encoder.layer.0.attention.self.query.weight"])


def test_msgpack_reads_as_the_pytorch_state(world):
    state = load_file(world["folders"]["pegasus"] / "model.safetensors")
    reader = read_flax_msgpack(world["msgpack"] / "flax_model.msgpack")
    assert reader.source_format == "flax" and set(reader.keys()) <= set(state)
    # Flax computes the sinusoidal tables and ties every embedding to model.shared.
    left = {k for k in set(state) - set(reader.keys())
            if not k.endswith(("embed_positions.weight", "embed_tokens.weight")) and k != "lm_head.weight"}
    assert left == set()
    for key in reader.keys():
        np.testing.assert_array_equal(reader.get(key, "np"), state[key], err_msg=key)


def test_readers_import_no_framework(world):
    script = (
        "import sys\n"
        "from polyformers.checkpoints.legacy import find_legacy_weights\n"
        "for folder in sys.argv[1:]:\n"
        "    with find_legacy_weights(folder) as r:\n"
        "        assert all(r.get(k, 'np').size for k in r.keys())\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(world["h5"]), str(world["msgpack"])],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(SRC)), timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]"]


def test_bfloat16_msgpack(tmp_path):
    import jax.numpy as jnp
    from flax.serialization import to_bytes

    params = {"model": {"dense": {"kernel": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3),
                                  "bias": jnp.ones(3, jnp.float32)}}}
    (tmp_path / "flax_model.msgpack").write_bytes(to_bytes(params))
    with read_flax_msgpack(tmp_path / "flax_model.msgpack") as reader:
        assert reader.dtype("model.dense.weight") == "bfloat16" and reader.shape("model.dense.weight") == (3, 2)
        weight = reader.get("model.dense.weight", "pt")
        assert weight.dtype == torch.bfloat16
        assert weight.float().tolist() == [[0, 3], [1, 4], [2, 5]]


def test_bad_files(tmp_path):
    (tmp_path / "tf_model.h5").write_bytes(b"not an h5 file at all")
    with pytest.raises(OSError, match="cannot read .*tf_model.h5.* as a Keras h5 weights file"):
        find_legacy_weights(tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(b"\xc1\xc1\xc1")
    with pytest.raises(OSError, match="cannot read .*flax_model.msgpack.* as a Flax msgpack checkpoint"):
        find_legacy_weights(tmp_path, "flax")
    with pytest.raises(ValueError, match="framework must be one of \\['flax', 'tf'\\] or None, got 'jax'"):
        find_legacy_weights(tmp_path, "jax")
    with pytest.raises(OSError, match="no such checkpoint folder"):
        find_legacy_weights(tmp_path / "nothing", "tf")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_legacy_weights(empty) is None


def _torch_out(model, probe):
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in probe.items()})
    return out.logits.numpy()


def test_convert_h5_to_safetensors(world, tmp_path):
    dest = tmp_path / "out"
    report = convert(str(world["h5"]), str(dest), max_shard_size="200KB", quiet=True)
    assert report["source_format"] == "tf" and report["class"] == "RobertaForMaskedLM" and report["verified"]
    assert report["max_abs_diff_vs_tf"] <= ATOL
    assert "model.safetensors.index.json" in report["files"] and "vocab.json" in report["files"]
    assert not any(f.endswith(".h5") for f in report["files"])
    model = RobertaForMaskedLM.from_pretrained(dest)
    np.testing.assert_allclose(_torch_out(model, legacy.PROBE), np.array(world["h5_out"]), atol=ATOL)


def test_convert_msgpack_to_safetensors_in_bfloat16(world, tmp_path):
    dest = tmp_path / "out"
    report = convert(str(world["msgpack"]), str(dest), dtype="bfloat16", quiet=True)
    assert report["source_format"] == "flax" and report["class"] == "PegasusForConditionalGeneration"
    assert report["max_abs_diff_vs_flax"] <= ATOL and report["verified"]
    assert {"spiece.model", "generation_config.json", "model.safetensors"} <= set(report["files"])
    model = PegasusForConditionalGeneration.from_pretrained(dest, dtype="auto")
    assert model.dtype == torch.bfloat16
    want = np.array(world["msgpack_out"])
    got = _torch_out(PegasusForConditionalGeneration.from_pretrained(dest, dtype=torch.float32), legacy.PEGASUS_PROBE)
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()  # bfloat16 weights: close, not equal
    exact = convert(str(world["msgpack"]), str(tmp_path / "fp32"), quiet=True)
    fp32 = PegasusForConditionalGeneration.from_pretrained(tmp_path / "fp32")
    np.testing.assert_allclose(_torch_out(fp32, legacy.PEGASUS_PROBE), want, atol=ATOL)
    assert exact["max_abs_diff_after_reload"] == 0.0


def test_convert_fails_loudly_when_pytorch_reads_other_numbers(world, tmp_path, monkeypatch):
    """A reading bug on the PyTorch side only (one tensor off) must stop the conversion before writing."""
    original = LegacyWeights.get

    def skewed(self, key, framework="pt", **kwargs):
        array = original(self, key, framework, **kwargs)
        return array * 1.01 if framework == "pt" and key.endswith("attention.self.value.weight") else array

    monkeypatch.setattr(LegacyWeights, "get", skewed)
    dest = tmp_path / "out"
    with pytest.raises(ValueError, match=r"verification failed: the weights read from .* differ by .* from "
                                         r"TFRobertaForMaskedLM's; nothing was written"):
        convert(str(world["h5"]), str(dest), quiet=True)
    assert not dest.exists()

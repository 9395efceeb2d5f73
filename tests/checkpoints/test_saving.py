from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch

from polyformers.checkpoints import find_weights, parse_size, save_weights
from polyformers.checkpoints import saving


def read_all(folder) -> dict:
    with find_weights(folder) as reader:
        return {key: reader.get(key).clone() for key in reader.keys()}


def assert_same_state(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


@pytest.mark.parametrize(
    "size, expected",
    [
        (123, 123),
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("20KB", 20_000),
        ("5GiB", 5 * 2**30),
        ("3MiB", 3 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("8Gb", 10**9),  # a lowercase final b means bits, as in the reference
        ("2048", 2048),
    ],
)
def test_parse_size(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("bad, error", [("5 GBs", ValueError), ("GB", ValueError), ("-1GB", ValueError), (0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_parse_size_refuses(bad, error):
    with pytest.raises(error, match=f"size.*{bad!r}" if error is ValueError else "size must be an int or a string such as '5GB', got"):
        parse_size(bad)


def test_single_file_is_byte_identical_to_reference(tmp_path, reference_model, reference_single):
    written = save_weights(reference_model.state_dict(), tmp_path)
    assert written == [str(tmp_path / "model.safetensors")] and os.listdir(tmp_path) == ["model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == (reference_single / "model.safetensors").read_bytes()


def test_shards_match_reference(tmp_path, reference_model, reference_sharded):
    save_weights(reference_model.state_dict(), tmp_path, max_shard_size="20KB")
    ours = sorted(os.listdir(tmp_path))
    assert ours == sorted(n for n in os.listdir(reference_sharded) if n != "config.json")
    for name in ours:
        if name.endswith(".safetensors"):
            assert (tmp_path / name).read_bytes() == (reference_sharded / name).read_bytes(), name
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    reference = json.loads((reference_sharded / "model.safetensors.index.json").read_text())
    # transformers 5 adds total_parameters; 4.37, whose layout we write, has total_size only
    assert index["metadata"] == {"total_size": reference["metadata"]["total_size"]}
    assert index["weight_map"] == reference["weight_map"]
    text = (tmp_path / "model.safetensors.index.json").read_text()
    assert text == json.dumps(index, indent=2, sort_keys=True) + "\n"


def test_our_shards_load_in_the_reference(tmp_path, reference_model):
    import transformers

    state = {k: torch.randn_like(v) for k, v in reference_model.state_dict().items()}
    save_weights(state, tmp_path, max_shard_size="30KB")
    reference_model.config.save_pretrained(tmp_path)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]) > 2
    loaded = transformers.ElectraModel.from_pretrained(tmp_path)
    assert_same_state(loaded.state_dict(), state)


def test_our_shards_load_in_the_437_reference(tmp_path, reference_model, legacy_python):
    import subprocess

    state = reference_model.state_dict()
    save_weights(state, tmp_path, max_shard_size="30KB")
    reference_model.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "expected.pt")
    script = (
        "import sys, torch, transformers\n"
        "m = transformers.ElectraModel.from_pretrained(sys.argv[1])\n"
        "e = torch.load(sys.argv[1] + '/expected.pt')\n"
        "got = m.state_dict()\n"
        "assert sorted(got) == sorted(e), sorted(set(got) ^ set(e))\n"
        "assert all(torch.equal(got[k], e[k]) for k in e)\n"
        "print('ok', transformers.__version__)\n"
    )
    done = subprocess.run([str(legacy_python), "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok 4.37" in done.stdout, done.stderr[-2000:]


def test_numpy_state_with_bfloat16_and_variant(tmp_path):
    state = {
        "b": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
        "a": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        "c": np.array(7, dtype=np.int64),
        "d": np.array([True, False]),
    }
    save_weights(state, tmp_path, framework="np", variant="fp16", metadata={"format": "pt", "note": "x"})
    assert os.listdir(tmp_path) == ["model.fp16.safetensors"]
    with find_weights(tmp_path, variant="fp16") as reader:
        assert reader.metadata == {"format": "pt", "note": "x"}
        for key, array in state.items():
            got = reader.get(key, "np")
            assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array), key
        assert torch.equal(reader.get("a"), torch.tensor([1.5, -2.0], dtype=torch.bfloat16))


def test_torch_views_and_odd_tensors(tmp_path):
    base = torch.arange(24.0)
    state = {
        "transposed": torch.randn(3, 5).T,
        "first_half": base[:12],  # two views of one storage that do not overlap are fine
        "second_half": base[12:].view(3, 4),
        "scalar": torch.tensor(3, dtype=torch.int32),
        "bf16": torch.randn(4, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 2),
        "param": torch.nn.Parameter(torch.ones(2)),
    }
    save_weights(state, tmp_path, max_shard_size=64)
    expected = {k: v.detach().contiguous() for k, v in state.items()}
    assert_same_state(read_all(tmp_path), expected)


@pytest.mark.parametrize("framework", ["pt", "np"])
def test_shared_memory_is_refused_naming_both_keys(tmp_path, framework):
    weight = torch.randn(4, 3) if framework == "pt" else np.ones((4, 3), np.float32)
    tied = {"encoder.embed.weight": weight, "other": weight[:1] * 2, "lm_head.weight": weight}
    with pytest.raises(ValueError, match=r"state\['encoder\.embed\.weight'\] and state\['lm_head\.weight'\] share memory"):
        save_weights(tied, tmp_path, framework=framework)
    overlapping = {"whole": weight, "row": weight[1]}
    with pytest.raises(ValueError, match=r"state\['whole'\] and state\['row'\] share memory"):
        save_weights(overlapping, tmp_path, framework=framework)
    assert os.listdir(tmp_path) == []


def test_bad_arguments_name_what_is_wrong(tmp_path):
    with pytest.raises(TypeError, match=r"state\['w'\] is a ndarray, expected a torch\.Tensor"):
        save_weights({"w": np.zeros(2)}, tmp_path)
    with pytest.raises(TypeError, match=r"state\['w'\] is a torch\.Tensor, expected a numpy array"):
        save_weights({"w": torch.zeros(2)}, tmp_path, framework="np")
    with pytest.raises(TypeError, match=r"state\['w'\] has dtype complex128, which safetensors cannot store"):
        save_weights({"w": np.zeros(2, np.complex128)}, tmp_path, framework="np")
    with pytest.raises(ValueError, match=r"state\['w'\] is on the meta device"):
        save_weights({"w": torch.zeros(2, device="meta")}, tmp_path)
    with pytest.raises(TypeError, match="metadata must map str to str, got 'step': 3"):
        save_weights({"w": torch.zeros(2)}, tmp_path, metadata={"step": 3})
    with pytest.raises(ValueError, match="framework must be 'pt' or 'np', got 'jax'"):
        save_weights({"w": torch.zeros(2)}, tmp_path, framework="jax")
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="save_directory .*file' is a file"):
        save_weights({"w": torch.zeros(2)}, tmp_path / "file")


def _state(seed: int, n: int = 6) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {f"layer.{i}.weight": torch.randn(10, 10, generator=generator) for i in range(n)}  # 400 bytes each


def test_stale_files_of_an_earlier_save_are_removed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "unrelated-00001-of-00002.safetensors").write_bytes(b"keep")
    steps = [
        (_state(0), 1000, ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json"]),
        (_state(1), 1300, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]),
        (_state(2), "5GB", ["model.safetensors"]),
        (_state(3), 500, [f"model-0000{i}-of-00006.safetensors" for i in range(1, 7)] + ["model.safetensors.index.json"]),
    ]
    for state, size, names in steps:
        save_weights(state, tmp_path, max_shard_size=size)
        assert sorted(os.listdir(tmp_path)) == sorted(names + ["config.json", "unrelated-00001-of-00002.safetensors"])
        assert_same_state(read_all(tmp_path), state)


@pytest.mark.parametrize("previous_size", [1000, "5GB"], ids=["sharded", "single"])
def test_interrupted_save_leaves_the_previous_one(tmp_path, monkeypatch, previous_size):
    old = _state(0)
    save_weights(old, tmp_path, max_shard_size=previous_size)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    calls = []
    real_write = saving._write_tensor

    def dying_write(fh, entry):
        calls.append(entry.key)
        if len(calls) == 4:  # two tensors per shard: the second tensor of the 2nd shard
            raise KeyboardInterrupt("power cut")
        real_write(fh, entry)

    monkeypatch.setattr(saving, "_write_tensor", dying_write)
    with pytest.raises(KeyboardInterrupt):
        save_weights(_state(1), tmp_path, max_shard_size=800)
    assert len(calls) == 4
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    assert_same_state(read_all(tmp_path), old)

    monkeypatch.setattr(saving, "_write_tensor", real_write)
    save_weights(_state(1), tmp_path, max_shard_size=800)
    assert_same_state(read_all(tmp_path), _state(1))
    assert len(os.listdir(tmp_path)) == 4


def test_tiny_model_round_trip_through_reference(tmp_path, reference_model):
    import transformers

    save_weights(reference_model.state_dict(), tmp_path, max_shard_size="40KB")
    model = transformers.ElectraModel(reference_model.config)
    with find_weights(tmp_path) as reader:
        missing, unexpected = model.load_state_dict({k: reader.get(k) for k in reader.keys()}, strict=True)
    assert not missing and not unexpected
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).last_hidden_state, reference_model(ids).last_hidden_state)

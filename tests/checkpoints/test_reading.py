from __future__ import annotations

import json
import os
import pickle
import shlex
import struct
import sys

import numpy as np
import pytest
import torch

from polyformers.checkpoints import WeightsReader, find_weights


def assert_reads_state(reader: WeightsReader, state: dict) -> None:
    assert sorted(reader.keys()) == sorted(state)
    for key, tensor in state.items():
        got = reader.get(key)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), key
        array = reader.get(key, framework="np")
        assert isinstance(array, np.ndarray) and np.array_equal(array, tensor.numpy()), key
        assert reader.shape(key) == tuple(tensor.shape)
        assert reader.dtype(key) == "float32"


def test_reads_reference_single_file(reference_model, reference_single):
    with find_weights(reference_single) as reader:
        assert reader.files == (os.path.join(reference_single, "model.safetensors"),)
        assert reader.metadata == {"format": "pt"}
        assert_reads_state(reader, reference_model.state_dict())


def test_reads_reference_shards(reference_model, reference_sharded):
    with find_weights(str(reference_sharded)) as reader:
        assert len(reader.files) > 2
        assert reader.index_file.endswith("model.safetensors.index.json")
        assert_reads_state(reader, reference_model.state_dict())
        assert "embeddings.word_embeddings.weight" in reader and "nope" not in reader


def test_index_wins_over_single_file_and_bin(tmp_path, reference_model, reference_sharded):
    for name in os.listdir(reference_sharded):
        (tmp_path / name).write_bytes((reference_sharded / name).read_bytes())
    torch.save({"other": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with find_weights(tmp_path) as reader:
        assert "other" not in reader and len(reader) == len(reference_model.state_dict())


def test_unknown_key_names_the_key_and_suggests(reference_single):
    with find_weights(reference_single) as reader:
        with pytest.raises(KeyError, match="embeddings.word_embedding.weight.*close matches.*word_embeddings"):
            reader.get("embeddings.word_embedding.weight")
        with pytest.raises(ValueError, match="framework must be one of 'pt', 'np', got 'tf'"):
            reader.get("embeddings.word_embeddings.weight", framework="tf")
    with pytest.raises(ValueError, match="closed"):
        reader.get("embeddings.word_embeddings.weight")


def test_bfloat16_and_other_dtypes_to_numpy(tmp_path):
    from safetensors.torch import save_file

    state = {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "half": torch.randn(5).half(),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with find_weights(tmp_path) as reader:
        expected = {"bf16": "bfloat16", "half": "float16", "ids": "int64", "mask": "bool", "scalar": "float32", "empty": "float32"}
        assert {k: reader.dtype(k) for k in state} == expected
        for key, tensor in state.items():
            assert torch.equal(reader.get(key), tensor)
            array = reader.get(key, "np")
            assert array.shape == tuple(tensor.shape) and array.dtype.name == expected[key]
            assert torch.equal(torch.from_numpy(array.astype(np.float64)), tensor.double())
        assert np.array_equal(reader.get("mask", "np"), [True, False])


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_unmapped_reads_equal_mapped_ones_and_own_their_memory(tmp_path, fmt):
    from safetensors.torch import save_file

    state = {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "half": torch.randn(5).half(),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
    }
    if fmt == "safetensors":
        save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    with find_weights(tmp_path) as reader:
        for key, tensor in state.items():
            mapped, private = reader.get(key), reader.get(key, mapped=False)
            assert private.dtype == tensor.dtype and torch.equal(private, tensor) and torch.equal(mapped, tensor)
            if tensor.numel():
                assert private.untyped_storage().data_ptr() != mapped.untyped_storage().data_ptr()
                private.view(-1)[0] = private.view(-1)[1]  # writable, and the mapped copy is untouched
                assert torch.equal(reader.get(key), tensor)
    reread = find_weights(tmp_path)
    kept = reread.get("ids", mapped=False)
    reread.close()
    assert torch.equal(kept, state["ids"])  # outlives the reader


def test_bfloat16_to_numpy_without_ml_dtypes_is_a_clear_error(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "model.safetensors")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # makes `import ml_dtypes` fail
    with find_weights(tmp_path) as reader:
        with pytest.raises(ImportError, match="numpy has no bfloat16 dtype; install ml_dtypes"):
            reader.get("w", "np")
        assert torch.equal(reader.get("w"), torch.ones(2, dtype=torch.bfloat16))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_reads_pytorch_bin(tmp_path, reference_model, zipped):
    state = reference_model.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
    with find_weights(tmp_path) as reader:
        assert reader.metadata == {"format": "pt"}
        assert_reads_state(reader, state)


def test_reads_sharded_pytorch_bin_with_variant(tmp_path):
    parts = [{"a": torch.randn(3), "b": torch.randn(2, 2)}, {"c": torch.arange(4)}]
    names = [f"pytorch_model.fp16-0000{i}-of-00002.bin" for i in (1, 2)]
    weight_map = {}
    for name, part in zip(names, parts):
        torch.save(part, tmp_path / name)
        weight_map.update(dict.fromkeys(part, name))
    (tmp_path / "pytorch_model.bin.index.fp16.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(OSError, match="no weights found"):
        find_weights(tmp_path)
    with find_weights(tmp_path, variant="fp16") as reader:
        assert reader.keys() == ["a", "b", "c"] and reader.dtype("c") == "int64"
        assert torch.equal(reader.get("b"), parts[0]["b"]) and np.array_equal(reader.get("c", "np"), np.arange(4))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_refuses_pickle_that_would_run_code(tmp_path, zipped):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "pytorch_model.bin"
    state = {"w": torch.zeros(2), "evil": _Payload(marker)}
    if zipped:
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps({"evil": _Payload(marker)}, protocol=2))  # as old torch.save wrote
    with pytest.raises(OSError, match=r"refused to load .*pytorch_model\.bin.*would execute code.*system"):
        find_weights(tmp_path)
    assert not marker.exists()
    if not zipped:  # the payload is live: an unsafe load would have run it
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_garbage_bin_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(OSError, match=r"cannot read .*pytorch_model\.bin.* as a PyTorch checkpoint"):
        find_weights(tmp_path)


def test_bin_holding_something_else_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "step": 3}, tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"entry 'step' is a int, expected a tensor"):
        find_weights(tmp_path)


def _copy(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_truncated_safetensors(tmp_path, reference_single):
    folder = _copy(reference_single, tmp_path / "cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"model\.safetensors' is truncated: tensor '.*' ends at byte \d+ but the file has only \d+ bytes"):
        find_weights(folder)
    (folder / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(OSError, match=r"model\.safetensors' is not a safetensors file: it has only 5 bytes"):
        find_weights(folder)


def test_corrupt_header_length(tmp_path, reference_single):
    folder = _copy(reference_single, tmp_path / "bad")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(OSError, match=r"model\.safetensors' is truncated or not a safetensors file: its header length field says 1099511627776 bytes"):
        find_weights(folder)
    (header_len,) = struct.unpack("<Q", data[:8])
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", header_len - 20) + data[8:])
    with pytest.raises(OSError, match=r"model\.safetensors' is corrupt: its safetensors header is not valid JSON"):
        find_weights(folder)
    # still valid JSON (the header ends in padding spaces) but every tensor would be read 3 bytes early
    assert data[8 + header_len - 3 : 8 + header_len] == b"   "
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", header_len - 3) + data[8:])
    with pytest.raises(OSError, match=r"model\.safetensors' is corrupt: its tensors end at byte \d+ but the file has \d+ bytes"):
        find_weights(folder)


def test_index_naming_a_missing_shard(tmp_path, reference_sharded):
    folder = _copy(reference_sharded, tmp_path / "missing")
    (folder / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(OSError, match=r"index .*model\.safetensors\.index\.json' names the shard 'model-00002-of-00004\.safetensors', which is missing"):
        find_weights(folder)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path, reference_sharded):
    folder = _copy(reference_sharded, tmp_path / "liar")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost.weight"] = "model-00001-of-00004.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(OSError, match=r"puts tensor 'ghost\.weight' in 'model-00001-of-00004\.safetensors', but that shard has no such tensor"):
        find_weights(folder)


def test_index_cannot_point_outside_the_folder(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../secret.safetensors"}}))
    with pytest.raises(OSError, match=r"names the shard '\.\./secret\.safetensors', expected a file name next to the index"):
        find_weights(tmp_path)


def test_no_weights_lists_what_was_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(OSError) as info:
        find_weights(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "legacy" not in message
    for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"):
        assert name in message
    (tmp_path / "tf_model.h5").write_bytes(b"")
    with pytest.raises(OSError, match=r"legacy TF/Flax weights found \(tf_model\.h5\); reading them is not supported yet"):
        find_weights(tmp_path)


def test_subfolder_and_unknown_option(tmp_path, reference_single):
    _copy(reference_single, tmp_path / "sub")
    with find_weights(tmp_path, subfolder="sub") as reader:
        assert len(reader) > 0
    with pytest.raises(TypeError, match="unexpected keyword arguments: revison"):
        find_weights(tmp_path, revison="main")


def test_use_safetensors_picks_the_format(tmp_path):
    from safetensors.torch import save_file

    save_file({"from_safetensors": torch.ones(1)}, tmp_path / "model.safetensors")
    torch.save({"from_bin": torch.ones(1)}, tmp_path / "pytorch_model.bin")
    for choice, key in [(None, "from_safetensors"), (True, "from_safetensors"), (False, "from_bin")]:
        with find_weights(tmp_path, use_safetensors=choice) as reader:
            assert reader.keys() == [key], choice
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match=r"looked for model\.safetensors\.index\.json, model\.safetensors$"):
        find_weights(tmp_path, use_safetensors=True)

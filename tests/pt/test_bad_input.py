"""Bad checkpoints and bad inputs raise an exception that says what is wrong (and nothing runs code)."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

import polyformers
from polyformers.checkpoints import saving

from .tiny import TINY


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = polyformers.ElectraModel(polyformers.ElectraConfig(**TINY)).eval()
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def model(good):
    return good[1]


def _copy(folder, tmp_path, *names):
    for name in names:
        shutil.copy(folder / name, tmp_path / name)
    return tmp_path


# ---------------------------------------------------------------------------------------------------
# checkpoints


def test_folder_without_weights(good, tmp_path):
    _copy(good[0], tmp_path, "config.json")
    with pytest.raises(OSError) as err:
        polyformers.ElectraModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "model.safetensors" in message and "pytorch_model.bin" in message


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(OSError, match="no-such-folder"):
        polyformers.ElectraModel.from_pretrained(tmp_path / "no-such-folder")


@pytest.mark.parametrize("keep", [0.5, 0.999, 5 / 100_000])
def test_truncated_safetensors(good, tmp_path, keep):
    _copy(good[0], tmp_path, "config.json")
    data = (good[0] / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: max(5, int(len(data) * keep))])
    with pytest.raises(OSError) as err:
        polyformers.ElectraModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert "model.safetensors" in message and ("truncated" in message or "not a safetensors file" in message)


def test_garbage_header(good, tmp_path):
    _copy(good[0], tmp_path, "config.json")
    (tmp_path / "model.safetensors").write_bytes((40).to_bytes(8, "little") + b"{not json" + b" " * 60)
    with pytest.raises(OSError, match="model.safetensors"):
        polyformers.ElectraModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "field, value, expected",
    [("num_hidden_layers", "two", "int"), ("hidden_dropout_prob", [0.1], "number"), ("vocab_size", 12.5, "int")],
)
def test_config_field_of_wrong_type(good, tmp_path, field, value, expected):
    _copy(good[0], tmp_path, "model.safetensors")
    config = json.loads((good[0] / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises((TypeError, ValueError)) as err:
        polyformers.ElectraModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert field in message and expected in message and repr(value) in message


def test_config_json_not_json(good, tmp_path):
    _copy(good[0], tmp_path, "model.safetensors")
    (tmp_path / "config.json").write_text("{\"hidden_size\": 32,")
    with pytest.raises((OSError, ValueError), match="config.json"):
        polyformers.ElectraModel.from_pretrained(tmp_path)


def test_unknown_model_type(good, tmp_path):
    _copy(good[0], tmp_path, "model.safetensors")
    config = json.loads((good[0] / "config.json").read_text())
    config["model_type"] = "frobnicator"
    (tmp_path / "config.json").write_text(json.dumps(config))
    for load in (polyformers.AutoModel.from_pretrained, polyformers.AutoConfig.from_pretrained):
        with pytest.raises(ValueError) as err:
            load(tmp_path)
        assert "frobnicator" in str(err.value) and "electra" in str(err.value)
    with pytest.raises(ValueError, match="frobnicator"):
        polyformers.AutoConfig.for_model("frobnicator")


def test_hidden_size_not_divisible_by_heads():
    with pytest.raises(ValueError) as err:
        polyformers.ElectraModel(polyformers.ElectraConfig(**{**TINY, "hidden_size": 30}))
    message = str(err.value)
    assert "hidden_size" in message and "30" in message and "num_attention_heads" in message and "4" in message


class _Payload:
    """Unpickling this runs code that creates ``marker``: a stand-in for anything a hostile file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle file
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_carrying_code_is_refused(good, tmp_path, writer):
    folder = _copy(good[0], tmp_path, "config.json")
    marker = tmp_path / "marker"
    state = dict(good[1].state_dict())
    state["embeddings.position_ids"] = _Payload(marker)
    path = folder / "pytorch_model.bin"
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    with pytest.raises(OSError) as err:
        polyformers.ElectraModel.from_pretrained(folder)
    assert "pytorch_model.bin" in str(err.value)
    assert not marker.exists(), "loading executed code from the pickle"

    # the payload is live: an unrestricted unpickler does create the marker
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_refusal_message_says_code_would_run(good, tmp_path):
    folder = _copy(good[0], tmp_path, "config.json")
    torch.save({"x": _Payload(tmp_path / "m")}, folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="(?i)refused|not allowed|code"):
        polyformers.ElectraModel.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------------
# interrupted saves


class _Crash(RuntimeError):
    pass


def _crash_after(monkeypatch, tensors: int):
    """Make the safetensors writer write half of tensor number ``tensors + 1`` and then fail."""
    original = saving._write_tensor
    written = []

    def flaky(fh, entry):
        if len(written) == tensors:
            fh.write(b"\0" * (entry.nbytes // 2))
            raise _Crash("disk went away")
        written.append(entry.key)
        original(fh, entry)

    monkeypatch.setattr(saving, "_write_tensor", flaky)
    return written


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shard", ["5GB", "20KB"], ids=["single_file", "sharded"])
def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch, shard):
    config = polyformers.ElectraConfig(**TINY, num_labels=3)
    torch.manual_seed(0)
    before = polyformers.ElectraForSequenceClassification(config).eval()
    before.save_pretrained(tmp_path)
    files_before = sorted(p.name for p in tmp_path.iterdir())

    # the new model differs in values and in its config (more labels, so another head shape)
    after = polyformers.ElectraForSequenceClassification(polyformers.ElectraConfig(**TINY, num_labels=5))
    written = _crash_after(monkeypatch, tensors=7)
    with pytest.raises(_Crash):
        after.save_pretrained(tmp_path, max_shard_size=shard)
    assert len(written) == 7
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == files_before, "temporary or partial files were left"
    loaded = polyformers.ElectraForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.num_labels == 3
    assert _state_equal(loaded.state_dict(), before.state_dict())


def test_interrupted_bin_save_leaves_previous_checkpoint(tmp_path):
    torch.manual_seed(0)
    before = polyformers.ElectraModel(polyformers.ElectraConfig(**TINY)).eval()
    before.save_pretrained(tmp_path, safe_serialization=False)
    after = polyformers.ElectraModel(polyformers.ElectraConfig(**TINY))

    def half_then_fail(state, path):
        with open(path, "wb") as f:
            f.write(b"PK\3\4 partial")
        raise _Crash("disk went away")

    with pytest.raises(_Crash):
        after.save_pretrained(tmp_path, safe_serialization=False, save_function=half_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]
    assert _state_equal(polyformers.ElectraModel.from_pretrained(tmp_path).state_dict(), before.state_dict())


def test_save_into_a_file_path(model, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises((ValueError, OSError), match="file"):
        model.save_pretrained(target)


# ---------------------------------------------------------------------------------------------------
# forward inputs


def test_input_ids_at_or_above_vocab_size(model):
    with pytest.raises(IndexError) as err:
        model(torch.tensor([[1, 2, TINY["vocab_size"]]]))
    message = str(err.value)
    assert "input_ids" in message and str(TINY["vocab_size"]) in message and "vocab_size" in message


def test_negative_input_ids(model):
    with pytest.raises(IndexError) as err:
        model(torch.tensor([[1, -3, 2]]))
    assert "input_ids" in str(err.value) and "-3" in str(err.value)


def test_token_type_ids_out_of_range(model):
    with pytest.raises(IndexError, match="token_type_ids.*type_vocab_size"):
        model(torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 1, 2]]))


def test_float_input_ids(model):
    with pytest.raises(TypeError, match="input_ids.*integer"):
        model(torch.tensor([[1.0, 2.0]]))


def test_sequence_longer_than_max_positions(model):
    limit = TINY["max_position_embeddings"]
    model(torch.ones(1, limit, dtype=torch.long))  # exactly the limit is fine
    with pytest.raises(ValueError) as err:
        model(torch.ones(1, limit + 1, dtype=torch.long))
    message = str(err.value)
    assert str(limit + 1) in message and "max_position_embeddings" in message and str(limit) in message


@pytest.mark.parametrize("shape", [(2, 4), (3, 5), (5,), (2, 5, 1, 1, 1)])
def test_attention_mask_of_wrong_shape(model, shape):
    with pytest.raises(ValueError) as err:
        model(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(shape))
    message = str(err.value)
    assert "attention_mask" in message and str(tuple(shape)) in message


def test_both_input_ids_and_inputs_embeds(model):
    with pytest.raises(ValueError, match="input_ids.*inputs_embeds"):
        model(torch.ones(1, 3, dtype=torch.long), inputs_embeds=torch.zeros(1, 3, TINY["embedding_size"]))


def test_neither_input_ids_nor_inputs_embeds(model):
    with pytest.raises(ValueError, match="input_ids.*inputs_embeds"):
        model(attention_mask=torch.ones(1, 3))


def test_inputs_embeds_of_wrong_width(model):
    with pytest.raises(ValueError) as err:
        model(inputs_embeds=torch.zeros(1, 3, TINY["hidden_size"]))
    assert "inputs_embeds" in str(err.value) and str(TINY["embedding_size"]) in str(err.value)


def test_heads_validate_through_the_body():
    head = polyformers.ElectraForPreTraining(polyformers.ElectraConfig(**TINY)).eval()
    with pytest.raises(IndexError, match="input_ids"):
        head(torch.tensor([[TINY["vocab_size"] + 5]]))


def test_model_needs_a_config():
    with pytest.raises(TypeError, match="PretrainedConfig"):
        polyformers.ElectraModel({"hidden_size": 32})

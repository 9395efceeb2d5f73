"""from_pretrained / save_pretrained behaviour of the PyTorch models, beyond numerical parity.

The loading reports (missing / unexpected / mismatched keys) and resize_token_embeddings are compared
with the reference's 4.37 release, run once for the whole module in its own environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import polyformers
from polyformers import checkpoints

from .tiny import TINY, auto_classes, electra_inputs

LEGACY_SCRIPT = Path(__file__).with_name("_legacy_loading.py")


def perturbed(model):
    """Every parameter moved off its initial value, so a tensor loaded into the wrong place shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def build(cls_name: str, folder: Path, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = perturbed(getattr(polyformers, cls_name)(polyformers.ElectraConfig(**{**TINY, **config})))
    model.save_pretrained(folder)
    return model


def hidden(model, inputs=None):
    inputs = inputs or electra_inputs()
    with torch.no_grad():
        out = model(**inputs)
    return out[0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "bare": (root / "bare", build("ElectraModel", root / "bare")),
        "seq3": (root / "seq3", build("ElectraForSequenceClassification", root / "seq3", num_labels=3)),
        "mlm": (root / "mlm", build("ElectraForMaskedLM", root / "mlm")),
        "mlm_untied": (root / "mlm_untied", build("ElectraForMaskedLM", root / "mlm_untied", tie_word_embeddings=False)),
        "root": (root, None),
    }


LOADS = {
    "bare_into_pretraining": ("ElectraForPreTraining", "bare", {}),
    "bare_into_sequence_classification": ("ElectraForSequenceClassification", "bare", {}),
    "bare_into_masked_lm": ("ElectraForMaskedLM", "bare", {}),
    "head_into_bare": ("ElectraModel", "seq3", {}),
    "generator_into_bare": ("ElectraModel", "mlm", {}),
    "generator_into_discriminator": ("ElectraForPreTraining", "mlm", {}),
    "other_num_labels_ignored": ("ElectraForSequenceClassification", "seq3",
                                 {"num_labels": 5, "ignore_mismatched_sizes": True}),
    "same_class": ("ElectraForSequenceClassification", "seq3", {}),
}
RESIZES = {
    "grow_tied": ("ElectraForMaskedLM", "mlm", [110]),
    "grow_padded": ("ElectraForMaskedLM", "mlm", [101, 8]),
    "shrink_tied": ("ElectraForMaskedLM", "mlm", [50]),
    "grow_untied": ("ElectraForMaskedLM", "mlm_untied", [110]),
    "grow_bare": ("ElectraModel", "bare", [120]),
}


@pytest.fixture(scope="module")
def reference(folders, legacy_python):
    """What the 4.37 release reports for LOADS and produces for RESIZES, in one subprocess."""
    workdir = folders["root"][0]
    job = {
        "workdir": str(workdir),
        "loads": [[name, cls, str(folders[f][0]), kw] for name, (cls, f, kw) in LOADS.items()],
        "resizes": [[name, cls, str(folders[f][0]), args] for name, (cls, f, args) in RESIZES.items()],
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(legacy_python), str(LEGACY_SCRIPT)], input=json.dumps(job), capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["workdir"] = workdir
    return report


# ---------------------------------------------------------------------------------------------------
# loading reports


@pytest.mark.parametrize("case", sorted(LOADS))
def test_loading_info_matches_reference(case, folders, reference):
    cls, folder, kwargs = LOADS[case]
    model, info = getattr(polyformers, cls).from_pretrained(folders[folder][0], output_loading_info=True, **kwargs)
    ours = {
        "missing_keys": sorted(info["missing_keys"]),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "mismatched_keys": sorted([k, list(a), list(b)] for k, a, b in info["mismatched_keys"]),
    }
    assert ours == reference["loads"][case]
    assert info["error_msgs"] == []
    assert isinstance(model, getattr(polyformers, cls))


def test_loaded_values_cross_the_base_model_prefix(folders):
    """Bare checkpoint -> head model and head checkpoint -> bare model carry the encoder's exact weights."""
    bare_folder, bare = folders["bare"]
    seq_folder, seq = folders["seq3"]
    head = polyformers.ElectraForPreTraining.from_pretrained(bare_folder)
    for key, value in bare.state_dict().items():
        assert torch.equal(head.state_dict()["electra." + key], value), key
    body = polyformers.ElectraModel.from_pretrained(seq_folder)
    for key, value in body.state_dict().items():
        assert torch.equal(seq.state_dict()["electra." + key], value), key
    assert torch.equal(hidden(body), hidden(seq.electra))


def test_ignore_mismatched_sizes_keeps_the_rest_and_reinitialises_the_head(folders):
    folder, original = folders["seq3"]
    model = polyformers.ElectraForSequenceClassification.from_pretrained(folder, num_labels=5,
                                                                        ignore_mismatched_sizes=True)
    assert model.config.num_labels == 5
    assert model.classifier.out_proj.weight.shape == (5, 32)
    assert torch.equal(model.classifier.dense.weight, original.classifier.dense.weight)
    assert torch.count_nonzero(model.classifier.out_proj.bias) == 0  # fresh Linear bias, as initialised
    assert 0 < model.classifier.out_proj.weight.std() < 0.05  # normal(0, initializer_range=0.02)


def test_shape_mismatch_without_ignore_names_key_and_shapes(folders):
    with pytest.raises(ValueError) as err:
        polyformers.ElectraForSequenceClassification.from_pretrained(folders["seq3"][0], num_labels=5)
    message = str(err.value)
    assert "classifier.out_proj.weight" in message or "classifier.out_proj.bias" in message
    assert ("(3, 32)" in message and "(5, 32)" in message) or ("(3,)" in message and "(5,)" in message)
    assert "ignore_mismatched_sizes" in message


# ---------------------------------------------------------------------------------------------------
# dtypes


@pytest.fixture(scope="module")
def half_folder(folders):
    """An fp16 checkpoint whose config.json declares bfloat16 (so "auto" must prefer the config)."""
    folder = folders["root"][0] / "half"
    _, model = folders["mlm"]
    polyformers.ElectraForMaskedLM.from_config(model.config).half().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["torch_dtype"] == "float16"
    config["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _dtypes(model):
    return {p.dtype for p in model.parameters()}


def test_default_dtype_is_float32_even_for_fp16_checkpoint(half_folder):
    model = polyformers.ElectraForMaskedLM.from_pretrained(half_folder)
    assert _dtypes(model) == {torch.float32} and model.dtype == torch.float32
    assert model.electra.embeddings.position_ids.dtype == torch.int64  # integer buffers are never cast


@pytest.mark.parametrize("argument", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("wanted", [torch.float16, torch.bfloat16, "float16", "bfloat16"])
def test_explicit_dtype(argument, wanted, folders):
    model = polyformers.ElectraForPreTraining.from_pretrained(folders["bare"][0], **{argument: wanted})
    expected = getattr(torch, wanted) if isinstance(wanted, str) else wanted
    # the freshly initialised head (missing from the bare checkpoint) too
    assert _dtypes(model) == {expected}
    assert model.discriminator_predictions.dense.weight.dtype == expected
    reference = polyformers.ElectraForPreTraining.from_pretrained(folders["bare"][0])
    assert torch.equal(model.electra.encoder.layer[0].attention.self.query.weight,
                       reference.electra.encoder.layer[0].attention.self.query.weight.to(expected))
    logits = hidden(model)
    assert logits.dtype == expected and torch.isfinite(logits).all()


def test_auto_dtype_prefers_config_then_checkpoint(half_folder, tmp_path):
    assert _dtypes(polyformers.ElectraForMaskedLM.from_pretrained(half_folder, dtype="auto")) == {torch.bfloat16}
    assert _dtypes(polyformers.ElectraForMaskedLM.from_pretrained(half_folder, torch_dtype="auto")) == {torch.bfloat16}
    undeclared = tmp_path / "undeclared"
    undeclared.mkdir()
    config = json.loads((half_folder / "config.json").read_text())
    del config["torch_dtype"]
    (undeclared / "config.json").write_text(json.dumps(config))
    (undeclared / "model.safetensors").write_bytes((half_folder / "model.safetensors").read_bytes())
    assert _dtypes(polyformers.ElectraForMaskedLM.from_pretrained(undeclared, dtype="auto")) == {torch.float16}


def test_save_records_dtype(folders, tmp_path):
    model = polyformers.ElectraModel.from_pretrained(folders["bare"][0], dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("embeddings.word_embeddings.weight").dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------
# saving formats


def test_sharded_save_round_trips_and_reference_reads_it(folders, tmp_path):
    import transformers

    _, model = folders["mlm"]
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    names = sorted(os.listdir(tmp_path))
    shards = [n for n in names if n.endswith(".safetensors")]
    assert "model.safetensors.index.json" in names and "model.safetensors" not in names
    assert len(shards) > 1 and all(n.startswith("model-0000") for n in shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    for shard in shards:  # each shard keeps under the limit unless one tensor alone exceeds it
        with safe_open(str(tmp_path / shard), framework="pt") as f:
            sizes = [f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()]
        assert sum(sizes) <= 50_000 or len(sizes) == 1

    ours = polyformers.ElectraForMaskedLM.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    ref = transformers.ElectraForMaskedLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    inputs = electra_inputs()
    with torch.no_grad():
        assert torch.allclose(ref(**inputs).logits, hidden(model, inputs), atol=1e-5)


def test_resave_as_one_file_removes_old_shards(folders, tmp_path):
    _, model = folders["bare"]
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model.save_pretrained(tmp_path)
    assert sorted(n for n in os.listdir(tmp_path) if "safetensors" in n) == ["model.safetensors"]
    assert torch.equal(hidden(polyformers.ElectraModel.from_pretrained(tmp_path)), hidden(model))


def test_pytorch_model_bin_save_and_load(folders, tmp_path):
    _, model = folders["seq3"]
    model.save_pretrained(tmp_path, safe_serialization=False)
    names = os.listdir(tmp_path)
    assert "pytorch_model.bin" in names and not any(n.endswith(".safetensors") for n in names)
    loaded = polyformers.ElectraForSequenceClassification.from_pretrained(tmp_path)
    assert torch.equal(hidden(loaded), hidden(model))
    with pytest.raises(OSError, match="safetensors"):
        polyformers.ElectraForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True)


def test_loaded_model_is_materialised_and_in_eval_mode(folders):
    model = polyformers.ElectraForPreTraining.from_pretrained(folders["bare"][0])
    assert not model.training and not any(m.training for m in model.modules())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert tensor.device.type == "cpu", f"{name} is on {tensor.device}"
    assert all(p.requires_grad for p in model.parameters())
    # eval mode means no dropout: two calls agree exactly
    assert torch.equal(hidden(model), hidden(model))


# ---------------------------------------------------------------------------------------------------
# tied weights and legacy names


def test_tied_generator_head_is_the_embedding_after_load_and_saved_once(folders, tmp_path):
    folder, original = folders["mlm"]
    model = polyformers.ElectraForMaskedLM.from_pretrained(folder)
    embedding = model.electra.embeddings.word_embeddings.weight
    assert model.generator_lm_head.weight is embedding
    assert torch.equal(embedding, original.electra.embeddings.word_embeddings.weight)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "electra.embeddings.word_embeddings.weight" in keys and "generator_lm_head.weight" not in keys
    assert "generator_lm_head.bias" in keys
    # training the embedding moves the head with it
    with torch.no_grad():
        embedding[3] += 1.0
    assert torch.equal(model.generator_lm_head.weight[3], embedding[3])


def test_untied_generator_head_is_saved_and_loaded_separately(folders):
    folder, original = folders["mlm_untied"]
    model = polyformers.ElectraForMaskedLM.from_pretrained(folder)
    assert model.generator_lm_head.weight is not model.electra.embeddings.word_embeddings.weight
    assert torch.equal(model.generator_lm_head.weight, original.generator_lm_head.weight)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert "generator_lm_head.weight" in set(f.keys())


def test_legacy_gamma_beta_names_load(folders, tmp_path):
    folder, original = folders["bare"]
    state = load_file(str(folder / "model.safetensors"))
    renamed = {}
    for key, value in state.items():
        if "LayerNorm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[key] = value
    assert any(k.endswith(".gamma") for k in renamed) and any(k.endswith(".beta") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    model, info = polyformers.ElectraModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert torch.equal(model.embeddings.LayerNorm.weight, original.embeddings.LayerNorm.weight)
    assert torch.equal(hidden(model), hidden(original))


# ---------------------------------------------------------------------------------------------------
# auto classes and from_config

AUTO = auto_classes("Electra", "ElectraForPreTraining")


@pytest.mark.parametrize("auto", sorted(AUTO))
def test_auto_model_picks_the_electra_class(auto, folders):
    model = getattr(polyformers, auto).from_pretrained(folders["bare"][0])
    assert type(model) is getattr(polyformers, AUTO[auto])
    assert not model.training
    fresh = getattr(polyformers, auto).from_config(model.config)
    assert type(fresh) is type(model)


def test_auto_config_and_kwargs(folders):
    config = polyformers.AutoConfig.from_pretrained(folders["seq3"][0])
    assert type(config) is polyformers.ElectraConfig and config.num_labels == 3
    model = polyformers.AutoModelForSequenceClassification.from_pretrained(folders["bare"][0], num_labels=4)
    assert model.config.num_labels == 4 and model.classifier.out_proj.out_features == 4


def test_unknown_model_type_is_named(folders, tmp_path):
    config = json.loads((folders["bare"][0] / "config.json").read_text())
    config["model_type"] = "not-a-family"
    (tmp_path / "config.json").write_text(json.dumps(config))
    for load in (polyformers.AutoConfig.from_pretrained, polyformers.AutoModel.from_pretrained):
        with pytest.raises(ValueError, match="not-a-family"):
            load(tmp_path)


def test_from_config_builds_fresh_initialised_model():
    config = polyformers.ElectraConfig(**TINY)
    model = polyformers.ElectraForPreTraining.from_config(config)
    assert type(model) is polyformers.ElectraForPreTraining and model.config is config
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(model.electra.embeddings.LayerNorm.weight, torch.ones(TINY["embedding_size"]))
    assert 0.01 < model.electra.encoder.layer[0].intermediate.dense.weight.std() < 0.03
    assert torch.count_nonzero(model.electra.embeddings.word_embeddings.weight[TINY["pad_token_id"]]) == 0
    half = polyformers.AutoModel.from_config(config, torch_dtype=torch.float16)
    assert _dtypes(half) == {torch.float16}


# ---------------------------------------------------------------------------------------------------
# resize_token_embeddings against the 4.37 release


@pytest.mark.parametrize("case", sorted(RESIZES))
def test_resize_token_embeddings_matches_reference(case, folders, reference):
    cls, folder, args = RESIZES[case]
    expected = reference["resizes"][case]
    ref_state = load_file(str(reference["workdir"] / f"{case}.resized.safetensors"))
    model = getattr(polyformers, cls).from_pretrained(folders[folder][0])
    old_vocab = model.config.vocab_size
    old_state = {k: v.clone() for k, v in model.state_dict().items()}
    returned = model.resize_token_embeddings(*args)
    head = model.get_output_embeddings()
    assert {
        "returned_shape": list(returned.weight.shape),
        "vocab_size": model.config.vocab_size,
        "tied": head is not None and head.weight is model.get_input_embeddings().weight,
        "out_features": None if head is None else head.out_features,
    } == expected
    assert returned is model.get_input_embeddings()
    # 4.37 drops padding_idx from the resized embedding (only the gradient of the pad row differs); later
    # releases keep it, and so do we.
    assert returned.padding_idx == TINY["pad_token_id"]

    state = model.state_dict()
    assert sorted(state) == sorted(ref_state)
    new_vocab = model.config.vocab_size
    keep = min(old_vocab, new_vocab)
    for key, ref_value in ref_state.items():
        ours = state[key]
        assert ours.shape == ref_value.shape, f"{key}: {tuple(ours.shape)} vs reference {tuple(ref_value.shape)}"
        if ours.shape[:1] == (new_vocab,) and new_vocab != old_vocab:
            # kept rows are the checkpoint's in both; new rows are freshly initialised in both
            assert torch.equal(ours[:keep], old_state[key][:keep]) and torch.equal(ref_value[:keep], ours[:keep]), key
            if key.endswith("bias"):
                assert torch.count_nonzero(ours[keep:]) == 0 and torch.count_nonzero(ref_value[keep:]) == 0, key
            elif new_vocab > old_vocab:
                assert 0.005 < ours[keep:].std() < 0.05 and 0.005 < ref_value[keep:].std() < 0.05, key
        else:
            assert torch.equal(ours, ref_value), key
    # the resized model runs on the new ids
    ids = torch.tensor([[1, new_vocab - 1, 2]])
    with torch.no_grad():
        out = model(input_ids=ids)
    if head is not None:
        assert out.logits.shape == (1, 3, new_vocab)


def test_auto_model_passes_dtype_to_the_loader_not_the_config(tmp_path):
    folder = tmp_path / "fp16"
    model = polyformers.ElectraModel(polyformers.ElectraConfig(**TINY)).half()
    model.save_pretrained(folder)
    auto = polyformers.AutoModel.from_pretrained(folder, dtype="auto")
    assert auto.dtype == torch.float16
    assert polyformers.AutoModel.from_pretrained(folder, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert polyformers.AutoModel.from_pretrained(folder).dtype == torch.float32

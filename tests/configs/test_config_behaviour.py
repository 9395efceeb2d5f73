"""PretrainedConfig behaviour: round trips, labels, overrides, aliases, dtype, validation, atomic saves."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

import polyformers
import polyformers.configs as configs_package
from polyformers.configs.base import SAVED_VERSION
from polyformers.configs import (
    CONFIG_MAPPING,
    ElectraConfig,
    GPTJConfig,
    MPNetConfig,
    MptAttentionConfig,
    MptConfig,
    PegasusConfig,
    PretrainedConfig,
    RobertaConfig,
)
from polyformers.configs import base as base_module

FAMILIES = [ElectraConfig, RobertaConfig, MPNetConfig, GPTJConfig, MptConfig, PegasusConfig]


def write_config(folder, data) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(data, handle)


# -- registry and imports ------------------------------------------------------------------------


def test_config_mapping_covers_every_family():
    assert CONFIG_MAPPING == {
        "electra": ElectraConfig,
        "roberta": RobertaConfig,
        "mpnet": MPNetConfig,
        "gptj": GPTJConfig,
        "mpt": MptConfig,
        "pegasus": PegasusConfig,
    }
    assert polyformers.MptAttentionConfig is MptAttentionConfig
    assert configs_package.PreTrainedConfig is PretrainedConfig


def test_importing_configs_imports_no_framework():
    code = (
        "import sys, polyformers.configs as c; c.GPTJConfig(dtype='float16').to_json_string(); "
        "print([m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules])"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# -- serialisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", FAMILIES)
def test_json_round_trip(cls, tmp_path):
    config = cls(vocab_size=99, num_labels=4, foo_bar={"x": [1, 2]}, torch_dtype="bfloat16")
    config.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
    assert again.vocab_size == 99 and again.foo_bar == {"x": [1, 2]} and again.torch_dtype == "bfloat16"
    assert cls.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert cls.from_dict(config.to_dict()) == again
    path = tmp_path / "full.json"
    config.to_json_file(path, use_diff=False)
    assert cls.from_json_file(path).to_dict() == config.to_dict()


def test_base_class_alone():
    config = PretrainedConfig(foo=1, problem_type="regression", eos_token_id=[2, 3])
    data = config.to_dict()
    assert data["model_type"] == "" and data["foo"] == 1 and data["eos_token_id"] == [2, 3]
    assert data["return_dict"] is True and data["max_length"] == 20 and data["tie_word_embeddings"] is True
    assert json.loads(config.to_json_string()) == {
        "foo": 1, "problem_type": "regression", "eos_token_id": [2, 3], "transformers_version": SAVED_VERSION
    }


def test_to_dict_records_the_writer_version_and_model_type():
    data = PegasusConfig().to_dict()
    assert data["transformers_version"] == SAVED_VERSION
    assert data["model_type"] == "pegasus"
    assert "_commit_hash" not in data and "_attn_implementation_internal" not in data


def test_unknown_keys_are_kept(tmp_path):
    write_config(tmp_path, {"model_type": "electra", "hidden_size": 32, "my_extra": [1, "two"], "_private": 3})
    config = ElectraConfig.from_pretrained(tmp_path)
    assert config.my_extra == [1, "two"] and config._private == 3
    assert json.loads(config.to_json_string())["my_extra"] == [1, "two"]


def test_diff_dict_keeps_family_fields_and_drops_common_defaults():
    diff = RobertaConfig().to_diff_dict()
    assert diff["hidden_size"] == 768 and diff["pad_token_id"] == 1
    assert "return_dict" not in diff and "id2label" not in diff
    assert "return_dict" in RobertaConfig(return_dict=False).to_diff_dict()


def test_repr_eq_update():
    a, b = GPTJConfig(n_embd=64), GPTJConfig(n_embd=64)
    assert a == b and a != GPTJConfig() and a != {"n_embd": 64}
    assert repr(a).startswith("GPTJConfig {") and '"n_embd": 64' in repr(a)
    a.update({"n_layer": 3, "new_key": "x"})
    assert a.n_layer == 3 and a.new_key == "x"
    a.update_from_string("n_head=8,resid_pdrop=0.25,use_cache=false,activation_function=relu")
    assert (a.n_head, a.resid_pdrop, a.use_cache, a.activation_function) == (8, 0.25, False, "relu")
    with pytest.raises(ValueError, match="missing_key"):
        a.update_from_string("missing_key=1")
    with pytest.raises(ValueError, match="use_cache"):
        a.update_from_string("use_cache=maybe")


# -- labels ----------------------------------------------------------------------------------------


def test_labels_default_and_num_labels():
    config = ElectraConfig()
    assert config.num_labels == 2 and config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    config = ElectraConfig(num_labels=3)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    config.num_labels = 5
    assert config.num_labels == 5 and config.label2id["LABEL_4"] == 4
    with pytest.raises(ValueError, match="num_labels"):
        config.num_labels = -1


def test_id2label_keys_are_ints_after_json_load(tmp_path):
    write_config(tmp_path, {"model_type": "roberta", "id2label": {"0": "neg", "1": "neu", "2": "pos"},
                            "label2id": {"neg": 0, "neu": 1, "pos": 2}})
    config = RobertaConfig.from_pretrained(tmp_path)
    assert config.id2label == {0: "neg", 1: "neu", 2: "pos"} and config.num_labels == 3
    assert config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    with pytest.raises(ValueError, match="id2label"):
        RobertaConfig(id2label=["a", "b"])
    with pytest.raises(ValueError, match="id2label"):
        RobertaConfig(id2label={"zero": "a"})


def test_pruned_heads_keys_are_ints(tmp_path):
    MPNetConfig(pruned_heads={2: [0, 1]}).save_pretrained(tmp_path)
    assert MPNetConfig.from_pretrained(tmp_path).pruned_heads == {2: [0, 1]}


def test_problem_type_is_validated():
    assert ElectraConfig(problem_type="regression").problem_type == "regression"
    with pytest.raises(ValueError, match="problem_type.*'classify'"):
        ElectraConfig(problem_type="classify")


# -- from_pretrained -------------------------------------------------------------------------------


def test_kwargs_override_and_unused_kwargs(tmp_path):
    GPTJConfig(n_embd=64, n_head=4).save_pretrained(tmp_path)
    config, unused = GPTJConfig.from_pretrained(
        tmp_path, return_unused_kwargs=True, n_head=8, hidden_size=128, not_a_field=1, torch_dtype="float16",
        revision="main", local_files_only=True,
    )
    assert (config.n_head, config.n_embd, config.torch_dtype) == (8, 128, "float16")
    assert unused == {"not_a_field": 1, "torch_dtype": "float16"}
    assert not hasattr(config, "not_a_field")
    assert GPTJConfig.from_pretrained(tmp_path, n_layer=1).n_layer == 1


def test_num_labels_and_id2label_must_agree(tmp_path):
    ElectraConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels"):
        ElectraConfig.from_pretrained(tmp_path, num_labels=3, id2label={0: "a", 1: "b"})
    assert ElectraConfig.from_pretrained(tmp_path, num_labels=4).num_labels == 4


def test_from_pretrained_file_subfolder_and_missing(tmp_path):
    RobertaConfig(vocab_size=7).save_pretrained(tmp_path / "sub")
    assert RobertaConfig.from_pretrained(tmp_path / "sub" / "config.json").vocab_size == 7
    assert RobertaConfig.from_pretrained(tmp_path, subfolder="sub").vocab_size == 7
    with pytest.raises(OSError, match="config.json"):
        RobertaConfig.from_pretrained(tmp_path)
    with pytest.raises(OSError):
        RobertaConfig.from_pretrained(tmp_path / "does-not-exist")


def test_versioned_configuration_files(tmp_path):
    write_config(tmp_path, {"model_type": "roberta", "vocab_size": 10,
                            "configuration_files": ["config.4.0.0.json", "config.99.0.0.json"]})
    (tmp_path / "config.4.0.0.json").write_text(json.dumps({"model_type": "roberta", "vocab_size": 20}))
    (tmp_path / "config.99.0.0.json").write_text(json.dumps({"model_type": "roberta", "vocab_size": 30}))
    assert RobertaConfig.from_pretrained(tmp_path).vocab_size == 20


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 12,')
    with pytest.raises(OSError, match="config.json.*not valid JSON"):
        ElectraConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(OSError, match="config.json.*JSON object"):
        ElectraConfig.from_pretrained(tmp_path)


def test_other_model_type_only_warns(tmp_path, caplog):
    RobertaConfig(hidden_size=48).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="polyformers.configs.base"):
        config = ElectraConfig.from_pretrained(tmp_path)
    assert config.hidden_size == 48
    assert "'roberta'" in caplog.text and "ElectraConfig" in caplog.text


# -- aliases and dtype -----------------------------------------------------------------------------


def test_attribute_map_aliases():
    config = PegasusConfig(hidden_size=64, num_attention_heads=4)
    assert config.d_model == 64 and config.hidden_size == 64 and config.encoder_attention_heads == 4
    config.hidden_size = 32
    assert config.d_model == 32 and "hidden_size" not in config.to_dict()
    gptj = GPTJConfig()
    gptj.num_hidden_layers = 3
    assert (gptj.n_layer, gptj.max_position_embeddings, gptj.hidden_size) == (3, 2048, 4096)
    mpt = MptConfig(num_attention_heads=8)
    assert mpt.n_heads == 8 and mpt.num_hidden_layers == 24
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = mpt.no_such_thing


def test_dtype_names_objects_and_alias(tmp_path):
    config = GPTJConfig(torch_dtype=torch.float16)
    assert config.torch_dtype == "float16" and config.dtype == "float16"
    config.dtype = torch.bfloat16
    assert config.torch_dtype == "bfloat16"
    assert GPTJConfig(dtype="torch.float32").torch_dtype == "float32"
    assert GPTJConfig(torch_dtype="half").torch_dtype == "float16"
    assert "dtype" not in config.to_dict() and config.to_dict()["torch_dtype"] == "bfloat16"
    # a config.json written by a newer release uses the key "dtype"
    write_config(tmp_path, {"model_type": "gptj", "dtype": "float16"})
    assert GPTJConfig.from_pretrained(tmp_path).torch_dtype == "float16"
    with pytest.raises(ValueError, match="torch_dtype.*'float17'"):
        GPTJConfig(torch_dtype="float17")
    with pytest.raises(TypeError, match="torch_dtype"):
        GPTJConfig(torch_dtype=16)
    with pytest.raises(ValueError, match="disagree"):
        GPTJConfig(torch_dtype="float16", dtype="float32")


def test_use_return_dict_and_attn_implementation():
    assert ElectraConfig().use_return_dict is True
    assert ElectraConfig(torchscript=True).use_return_dict is False
    assert ElectraConfig()._attn_implementation == "eager"
    assert ElectraConfig(attn_implementation="sdpa")._attn_implementation == "sdpa"


# -- validation ------------------------------------------------------------------------------------


def test_wrong_type_names_field_expected_and_given():
    with pytest.raises(TypeError) as err:
        ElectraConfig(hidden_size="big")
    message = str(err.value)
    assert "hidden_size" in message and "int" in message and "'big'" in message


@pytest.mark.parametrize(
    "cls, field, value, error",
    [
        (ElectraConfig, "hidden_size", -1, ValueError),
        (ElectraConfig, "num_hidden_layers", -2, ValueError),
        (ElectraConfig, "hidden_size", 7.5, TypeError),
        (ElectraConfig, "hidden_size", True, TypeError),
        (ElectraConfig, "hidden_dropout_prob", 1.5, ValueError),
        (ElectraConfig, "position_embedding_type", "rotary", ValueError),
        (RobertaConfig, "vocab_size", 0, ValueError),
        (RobertaConfig, "use_cache", "yes", TypeError),
        (MPNetConfig, "relative_attention_num_buckets", -32, ValueError),
        (GPTJConfig, "n_head", 0, ValueError),
        (GPTJConfig, "n_inner", -4, ValueError),
        (GPTJConfig, "activation_function", 3, TypeError),
        (MptConfig, "d_model", "2048", TypeError),
        (MptConfig, "expansion_ratio", -4, ValueError),
        (MptConfig, "logit_scale", "big", TypeError),
        (PegasusConfig, "encoder_layers", -1, ValueError),
        (PegasusConfig, "dropout", float("nan"), ValueError),
        (PegasusConfig, "pad_token_id", "0", TypeError),
        (PegasusConfig, "return_dict", 1, TypeError),
    ],
)
def test_bad_values_raise_naming_the_field(cls, field, value, error):
    with pytest.raises(error, match=f"{cls.__name__} argument '{field}'.*given {value!r}".replace("(", r"\(")):
        cls(**{field: value})
    config = cls()
    with pytest.raises(error, match=field):
        setattr(config, field, value)


def test_bad_values_in_config_json_and_in_overrides(tmp_path):
    write_config(tmp_path, {"model_type": "roberta", "num_attention_heads": "twelve"})
    with pytest.raises(TypeError, match="num_attention_heads.*'twelve'"):
        RobertaConfig.from_pretrained(tmp_path)
    RobertaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="intermediate_size.*-5"):
        RobertaConfig.from_pretrained(tmp_path, intermediate_size=-5)


def test_valid_edge_values_are_accepted():
    import numpy as np

    assert ElectraConfig(num_hidden_layers=0, hidden_dropout_prob=0, type_vocab_size=0).num_hidden_layers == 0
    assert ElectraConfig(hidden_size=np.int64(64)).hidden_size == 64
    assert type(ElectraConfig(hidden_size=np.int64(64)).hidden_size) is int
    assert GPTJConfig(rotary_dim=None, eos_token_id=[1, 2]).eos_token_id == [1, 2]
    assert MptConfig(logit_scale=0.5).logit_scale == 0.5
    assert ElectraConfig(hidden_act=torch.nn.functional.gelu).hidden_act is torch.nn.functional.gelu


# -- MPT attention config --------------------------------------------------------------------------


def test_mpt_attn_config_forms(tmp_path):
    assert MptConfig().attn_config == MptAttentionConfig()
    from_dict = MptConfig(attn_config={"alibi": False, "clip_qkv": 8})
    assert isinstance(from_dict.attn_config, MptAttentionConfig)
    assert (from_dict.attn_config.alibi, from_dict.attn_config.clip_qkv) == (False, 8)
    given = MptAttentionConfig(qk_ln=True)
    assert MptConfig(attn_config=given).attn_config is given
    with pytest.raises(TypeError, match="attn_config.*expected a dict or an MptAttentionConfig"):
        MptConfig(attn_config=["alibi"])

    MptConfig(d_model=64, attn_config={"softmax_scale": 0.25}).save_pretrained(tmp_path)
    loaded = MptConfig.from_pretrained(tmp_path, attn_config={"alibi_bias_max": 4})
    assert loaded.attn_config.alibi_bias_max == 4 and loaded.d_model == 64
    attention = MptAttentionConfig.from_pretrained(tmp_path)
    assert attention.softmax_scale == 0.25


def test_mpt_attn_type_other_than_multihead_raises():
    # 4.37 accepts a multi-query config (and builds multi-head attention, as the model here does).
    assert MptAttentionConfig(attn_type="multiquery_attention").attn_type == "multiquery_attention"
    with pytest.raises(ValueError, match="attn_type.*'grouped'"):
        MptConfig(attn_config={"attn_type": "grouped"})
    with pytest.raises(ValueError, match="attn_impl.*'cuda'"):
        MptAttentionConfig(attn_impl="cuda")
    with pytest.raises(ValueError, match="alibi_bias_max"):
        MptAttentionConfig(alibi_bias_max=0)


def test_mpt_attention_ignores_unknown_keys(caplog):
    with caplog.at_level(logging.WARNING, logger="polyformers.configs.mpt"):
        config = MptAttentionConfig(rope=True, return_dict=False, model_type="")
    assert not hasattr(config, "rope") and config.return_dict is True
    assert "rope" in caplog.text and "return_dict" not in caplog.text


# -- saving ----------------------------------------------------------------------------------------


def test_save_pretrained_creates_folder_and_rejects_a_file(tmp_path):
    target = tmp_path / "a" / "b"
    ElectraConfig().save_pretrained(target)
    assert (target / "config.json").is_file()
    assert os.listdir(target) == ["config.json"]
    with pytest.raises(AssertionError, match="folder"):
        ElectraConfig().save_pretrained(target / "config.json")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch, failing):
    ElectraConfig(hidden_size=64).save_pretrained(tmp_path)
    before = (tmp_path / "config.json").read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(base_module.os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        ElectraConfig(hidden_size=128).save_pretrained(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "config.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json"]  # no temporary file left behind
    assert ElectraConfig.from_pretrained(tmp_path).hidden_size == 64

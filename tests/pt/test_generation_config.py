"""GenerationConfig: defaults, JSON files identical to the reference's 4.37 ones, loading, validation."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from polyformers import ElectraConfig
from polyformers.generation_config import GENERATION_CONFIG_NAME, GenerationConfig

# Each entry: keyword arguments of GenerationConfig; the reference writes the same JSON for them.
SETTINGS = [
    {},
    {"max_new_tokens": 5, "eos_token_id": [1, 2], "pad_token_id": 0, "custom_field": 3},
    {"do_sample": True, "temperature": 0.7, "top_k": 10, "top_p": 0.9, "typical_p": 0.5},
    {"num_beams": 4, "length_penalty": 0.5, "early_stopping": "never", "num_return_sequences": 2,
     "no_repeat_ngram_size": 3, "bad_words_ids": [[4], [5, 6]], "suppress_tokens": [7]},
    {"min_new_tokens": 2, "forced_bos_token_id": 0, "forced_eos_token_id": [1], "repetition_penalty": 1.2,
     "return_dict_in_generate": True, "output_scores": True, "use_cache": False},
]

_REFERENCE = """
import json, sys
from transformers import ElectraConfig, GenerationConfig
out = [GenerationConfig(**kw).to_json_string() for kw in json.loads(sys.argv[1])]
out.append(GenerationConfig.from_model_config(ElectraConfig(is_decoder=True, bos_token_id=2, max_length=33)).to_json_string())
out.append(GenerationConfig().to_json_string(use_diff=False))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference_json(legacy_python):
    result = subprocess.run([str(legacy_python), "-W", "ignore", "-c", _REFERENCE, json.dumps(SETTINGS)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_json_matches_reference(reference_json):
    ours = [GenerationConfig(**kw).to_json_string() for kw in SETTINGS]
    ours.append(GenerationConfig.from_model_config(ElectraConfig(is_decoder=True, bos_token_id=2, max_length=33))
                .to_json_string())
    ours.append(GenerationConfig().to_json_string(use_diff=False))
    assert ours == reference_json


def test_defaults():
    config = GenerationConfig()
    assert (config.max_length, config.max_new_tokens, config.num_beams, config.do_sample) == (20, None, 1, False)
    assert (config.top_k, config.top_p, config.temperature, config.early_stopping) == (50, 1.0, 1.0, False)
    assert config.eos_token_id is None and config.stop_strings is None and config.use_cache is True


def test_save_and_load_round_trip(tmp_path):
    config = GenerationConfig(**SETTINGS[3])
    config.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [GENERATION_CONFIG_NAME]  # no temporary file left
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert loaded == config and loaded.bad_words_ids == [[4], [5, 6]]
    assert GenerationConfig.from_pretrained(tmp_path / GENERATION_CONFIG_NAME) == config
    overridden = GenerationConfig.from_pretrained(tmp_path, num_beams=6)
    assert overridden.num_beams == 6
    # as in the reference, unknown keywords become attributes (and are written back)
    config, unused = GenerationConfig.from_dict({"num_beams": 2}, return_unused_kwargs=True, foo=1)
    assert config.num_beams == 2 and config.foo == 1 and unused == {}


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(OSError, match=GENERATION_CONFIG_NAME):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / GENERATION_CONFIG_NAME).write_text("{not json")
    with pytest.raises(OSError, match="not valid JSON"):
        GenerationConfig.from_pretrained(tmp_path)


def test_save_refuses_inconsistent_settings(tmp_path):
    with pytest.warns(UserWarning, match="temperature"):
        config = GenerationConfig(temperature=0.5)  # ignored without do_sample
    with pytest.raises(ValueError, match="temperature"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / GENERATION_CONFIG_NAME).exists()


def test_update_returns_unused_and_leaves_input_alone():
    config = GenerationConfig()
    kwargs = {"max_new_tokens": 4, "attention_mask": "mask"}
    assert config.update(**kwargs) == {"attention_mask": "mask"}
    assert config.max_new_tokens == 4 and kwargs == {"max_new_tokens": 4, "attention_mask": "mask"}


def test_from_model_config_keeps_only_generation_settings():
    config = GenerationConfig.from_model_config(ElectraConfig(is_decoder=True, pad_token_id=3, max_length=40))
    assert config.pad_token_id == 3 and config.max_length == 40 and config._from_model_config
    assert not hasattr(config, "vocab_size")


def test_equality_ignores_metadata():
    assert GenerationConfig(num_beams=2) == GenerationConfig(num_beams=2, transformers_version="4.30.0")
    assert GenerationConfig(num_beams=2) != GenerationConfig(num_beams=3)
    assert hash(GenerationConfig(num_beams=2)) == hash(GenerationConfig(num_beams=2))


@pytest.mark.parametrize("name, value, expected", [
    ("max_new_tokens", 0, "max_new_tokens"),
    ("max_new_tokens", -3, "max_new_tokens"),
    ("num_beams", 0, "num_beams"),
    ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("typical_p", -0.1, "typical_p"),
    ("top_k", -1, "top_k"),
    ("repetition_penalty", 0.0, "repetition_penalty"),
    ("early_stopping", "sometimes", "early_stopping"),
    ("eos_token_id", [1, "x"], "eos_token_id"),
    ("eos_token_id", -1, "eos_token_id"),
    ("bad_words_ids", [1, 2], "bad_words_ids"),
    ("do_sample", "yes", "do_sample"),
    ("stop_strings", "", "stop_strings"),
])
def test_bad_values_name_the_field(name, value, expected):
    with pytest.raises(ValueError, match=expected) as info:
        GenerationConfig(**{name: value})
    assert repr(value) in str(info.value)
    config = GenerationConfig()
    with pytest.raises(ValueError, match=expected):
        setattr(config, name, value)


def test_relations_between_fields():
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationConfig(num_return_sequences=2)  # greedy gives one sequence per prompt
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationConfig(num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="streamer"):
        GenerationConfig(streamer=object())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenerationConfig(do_sample=True, temperature=0.3, num_beams=2, length_penalty=0.1)


def test_import_is_framework_free():
    code = "import sys, polyformers.generation_config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

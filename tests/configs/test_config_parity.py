"""polyformers configs against the reference: the 4.37 release and the installed current release."""

from __future__ import annotations

import inspect
import json

import pytest

import polyformers
from tests.configs.config_cases import CASES, config_class, family_fields

VERSION_KEY = "transformers_version"


def normalized(d: dict) -> dict:
    """As JSON would store it (int keys become strings), without the writer's version."""
    d = json.loads(json.dumps(d))
    d.pop(VERSION_KEY, None)
    if isinstance(d.get("attn_config"), dict):
        d["attn_config"].pop(VERSION_KEY, None)
    return d


def build(name: str):
    cls_name, kwargs = CASES[name]
    return config_class(cls_name)(**json.loads(json.dumps(kwargs)))


@pytest.mark.parametrize("cls_name", sorted({c for c, _ in CASES.values()}))
def test_arguments_and_defaults_match_reference(cls_name, legacy_results):
    _, results = legacy_results
    expected = [tuple(p) for p in results["__signatures__"][cls_name]]
    if cls_name == "GPTJConfig":
        # The GPT-J page documents the newer signature, which also names pad_token_id (default None).
        expected.insert([name for name, _ in expected].index("tie_word_embeddings"), ("pad_token_id", None))
    params = inspect.signature(config_class(cls_name).__init__).parameters.values()
    ours = [(p.name, p.default) for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    assert ours == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_to_dict_matches_reference(name, legacy_results):
    _, results = legacy_results
    assert normalized(build(name).to_dict()) == normalized(results[name]["to_dict"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_diff_dict_matches_reference(name, legacy_results):
    _, results = legacy_results
    assert normalized(json.loads(build(name).to_json_string())) == normalized(results[name]["diff"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_file_text_matches_reference(name, legacy_results, ours_saved):
    """Same keys, order, indentation, trailing newline and recorded format version."""
    _, results = legacy_results
    ours = (ours_saved / name / "config.json").read_text(encoding="utf-8")
    assert f'"{VERSION_KEY}": "4.37.2"' in ours
    reference = results[name]["saved_text"]
    assert ours == reference


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_folder_loads(name, legacy_results):
    out, results = legacy_results
    cls_name, _ = CASES[name]
    loaded = config_class(cls_name).from_pretrained(out / name)
    assert normalized(loaded.to_dict()) == normalized(results[name]["reloaded"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_folder_loads_in_reference(name, legacy_results):
    _, results = legacy_results
    assert normalized(results[name]["from_ours"]) == normalized(build(name).to_dict())


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_folder_loads_in_current_release(name, current_results):
    ours = build(name)
    theirs = current_results[name]["from_ours_fields"]
    fields = family_fields(type(ours))
    assert fields and set(theirs) == set(fields)
    for field in fields:
        mine = getattr(ours, field)
        if field == "attn_config":
            mine = mine.to_dict()
            theirs_attn = theirs[field]
            for key in family_fields(type(ours.attn_config)):
                assert theirs_attn[key] == mine[key], (field, key)
            continue
        assert theirs[field] == mine, field

"""Fixtures of the config tests: polyformers' saved folders and one reference run per interpreter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.configs.config_cases import CASES, CURRENT_PYTHON, config_class, family_fields, run_oracle


@pytest.fixture(scope="session")
def ours_saved(tmp_path_factory) -> Path:
    """Every case built by polyformers and saved with save_pretrained, one folder per case."""
    root = tmp_path_factory.mktemp("ours")
    for name, (cls_name, kwargs) in CASES.items():
        config_class(cls_name)(**json.loads(json.dumps(kwargs))).save_pretrained(root / name)
    return root


@pytest.fixture(scope="session")
def legacy_results(legacy_python, ours_saved, tmp_path_factory) -> tuple[Path, dict]:
    """The 4.37 release builds, saves and reloads every case, and loads polyformers' folders."""
    out = tmp_path_factory.mktemp("legacy")
    job = {
        "out_dir": str(out),
        "cases": [
            {"name": n, "cls": c, "kwargs": k, "ours_dir": str(ours_saved / n)} for n, (c, k) in CASES.items()
        ],
    }
    return out, run_oracle(legacy_python, job)


@pytest.fixture(scope="session")
def current_results(ours_saved) -> dict:
    """The installed current release loads polyformers' folders."""
    job = {
        "out_dir": "",
        "cases": [
            {
                "name": n,
                "cls": c,
                "kwargs": k,
                "ours_dir": str(ours_saved / n),
                "build": False,
                "fields": family_fields(config_class(c)),
            }
            for n, (c, k) in CASES.items()
        ],
    }
    return run_oracle(CURRENT_PYTHON, job)

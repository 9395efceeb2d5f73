"""Importing polyformers loads no deep-learning framework until a class that needs one is touched."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("torch", "tensorflow", "jax", "flax", "keras")


def modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; report which frameworks ended up in sys.modules."""
    probe = code + "\nimport json, sys\nprint(json.dumps({m: m in sys.modules for m in %r}))" % (FRAMEWORKS,)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_polyformers_imports_no_framework():
    loaded = modules_after("import polyformers\nassert polyformers.__version__")
    assert not any(loaded.values()), loaded


def test_config_classes_import_no_torch():
    loaded = modules_after(
        "import polyformers\n"
        "c = polyformers.ElectraConfig(hidden_size=64)\n"
        "assert c.to_dict()['hidden_size'] == 64\n"
        "polyformers.AutoConfig\n"
        "polyformers.ModelOutput\n"
        "from polyformers.outputs import MaskedLMOutput\n"
        "assert MaskedLMOutput(logits=1).to_tuple() == (1,)\n"
        "import polyformers.checkpoints\n"
    )
    assert not any(loaded.values()), loaded


def test_model_class_imports_torch_only():
    loaded = modules_after("import polyformers\npolyformers.ElectraModel\npolyformers.AutoModel\n")
    assert loaded["torch"]
    assert not any(loaded[m] for m in ("tensorflow", "jax", "flax", "keras")), loaded


@pytest.mark.parametrize("name", ["NotAModel", "TFElectraModelX"])
def test_unknown_attribute(name):
    import polyformers

    with pytest.raises(AttributeError, match=name):
        getattr(polyformers, name)

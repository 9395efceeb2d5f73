from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

SCRIPT = r"""
import sys
import polyformers.checkpoints as checkpoints
loaded = lambda: sorted(m for m in ("torch", "tensorflow", "jax", "flax", "keras", "safetensors") if m in sys.modules)
assert loaded() == [], loaded()
reader = checkpoints.find_weights(sys.argv[1])
arrays = {key: reader.get(key, "np") for key in reader.keys()}
checkpoints.save_weights(arrays, sys.argv[2], framework="np", max_shard_size="20KB")
assert loaded() == [], loaded()
print(len(arrays))
"""


def test_numpy_path_never_imports_a_framework(tmp_path, reference_single, reference_model):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(reference_single), str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(len(reference_model.state_dict()))]
    assert len(os.listdir(tmp_path)) > 2

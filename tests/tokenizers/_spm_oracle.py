"""Runs one description of slow and fast tokenizer calls against a library; also the reference side's script.

Spec (JSON): {"slow": [{"cls", "vocab_file", "cases"}], "fast": <_fast_runner spec>}. The slow cases go
through ``_slow_runner.run_cases`` and the fast spec through ``_fast_runner.run``, so the reference (this
file run by the 4.37 venv's interpreter: spec on stdin, results written to the file named by argv[1]) and
polyformers (``run_spec`` in-process) answer exactly the same questions.

The 4.37 venv's slow SentencePiece tokenizers import ``sentencepiece``, which ``./run setup`` installs there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_spec(spec: dict, lib, sides) -> dict:
    # by path, not as package modules: the reference's interpreter has no `tests` package
    from _fast_runner import run
    from _slow_runner import run_cases

    slow = [
        run_cases(getattr(lib, group["cls"]), group["vocab_file"], group["cases"]) for group in spec.get("slow", [])
    ]
    return {"slow": slow, "fast": run(spec.get("fast", {}), lib, sides=sides)}


def run_ours(spec: dict) -> dict:
    """polyformers' answers to ``spec``."""
    import polyformers

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return run_spec(spec, polyformers, sides=("both", "ours"))


def run_reference(legacy_python, spec: dict, timeout: int = 600) -> dict:
    """The 4.37 reference's answers to ``spec`` (one subprocess)."""
    return run_script(legacy_python, Path(__file__).resolve(), spec, timeout)


def run_script(legacy_python, script: Path, job, timeout: int) -> object:
    """Runs ``script`` with the 4.37 venv's interpreter, ``job`` as JSON on stdin; returns the JSON it
    writes to the file named by its argv[1] (in a fresh temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("PYTHONPATH", None)  # the reference must not see polyformers
        proc = subprocess.run([str(legacy_python), str(script), out], input=json.dumps(job), capture_output=True,
                              text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"reference run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out, encoding="utf-8") as handle:
            return json.load(handle)


if __name__ == "__main__":
    import logging
    import warnings

    sys.path.insert(0, str(HERE))
    for name in ("USE_TF", "USE_TORCH", "USE_FLAX"):
        os.environ.setdefault(name, "0")
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    import transformers

    transformers.logging.set_verbosity_error()
    results = run_spec(json.load(sys.stdin), transformers, sides=("both", "oracle"))
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump(results, handle)

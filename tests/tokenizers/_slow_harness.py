"""Runs the same tokenizer cases in the 4.37 reference (subprocess) and in polyformers, and compares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ._slow_runner import run_cases

HERE = Path(__file__).resolve().parent


def run_oracle(legacy_python, vocab_file, cases, timeout=900):
    """Results of ``cases`` under the reference ElectraTokenizer (one subprocess for all of them)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("PYTHONPATH", None)  # the reference must not see polyformers
        proc = subprocess.run(
            [str(legacy_python), str(HERE / "_slow_oracle.py"), out],
            input=json.dumps({"vocab_file": str(vocab_file), "cases": cases}),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"reference run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out, encoding="utf-8") as handle:
            results = json.load(handle)
    assert len(results) == len(cases)
    return results


def run_ours(vocab_file, cases):
    from polyformers.tokenizers import ElectraTokenizer

    return run_cases(ElectraTokenizer, str(vocab_file), cases)


def _short(x, limit=400):
    text = json.dumps(x, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


def assert_same(cases, ours, theirs, compare_error_types=False):
    """Fail listing the first differing cases; errors match if both sides raised."""
    mismatches = []
    for case, a, b in zip(cases, ours, theirs):
        if "error" in a and "error" in b and not compare_error_types:
            continue
        if a != b:
            mismatches.append(f"case {_short(case)}\n  ours:      {_short(a)}\n  reference: {_short(b)}")
    assert not mismatches, f"{len(mismatches)} of {len(cases)} cases differ:\n" + "\n".join(mismatches[:8])

"""Runs the same tokenizer cases in the 4.37 reference (subprocess) and in polyformers, and compares."""

from __future__ import annotations

import json
from pathlib import Path

from ._slow_runner import run_cases
from ._spm_oracle import run_script

HERE = Path(__file__).resolve().parent


def run_oracle(legacy_python, vocab_file, cases, timeout=900):
    """Results of ``cases`` under the reference ElectraTokenizer (one subprocess for all of them)."""
    results = run_script(legacy_python, HERE / "_slow_oracle.py", {"vocab_file": str(vocab_file), "cases": cases},
                         timeout)
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

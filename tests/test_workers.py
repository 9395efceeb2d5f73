"""The suite's own layout under pytest-xdist: each test file runs whole on one worker (tests/conftest.py), so
that a module-scoped fixture, which many files use to batch their reference runs, is computed once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_file_runs_whole_on_one_worker():
    files = ["tests/pt/test_bad_input.py", "tests/test_hub.py"]  # quick to import and to run
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
                          "-p", "no:cacheprovider", *files], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    workers = {}
    for worker, path in re.findall(r"^\[(gw\d+)\] .*? (tests/\S+?\.py)::", run.stdout, re.M):
        workers.setdefault(path, set()).add(worker)
    assert set(workers) == set(files), run.stdout[-3000:]
    assert all(len(seen) == 1 for seen in workers.values()), workers

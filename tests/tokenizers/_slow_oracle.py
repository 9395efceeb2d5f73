"""Reference side of the slow-tokenizer tests: run with the 4.37 venv's interpreter.

Reads {"vocab_file": path, "cases": [...]} as JSON on stdin and writes the results of
``_slow_runner.run_cases`` with the reference ``ElectraTokenizer`` as JSON to the file named by argv[1].
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for name in ("USE_TF", "USE_TORCH", "USE_FLAX"):
    os.environ.setdefault(name, "0")
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)

from transformers import ElectraTokenizer  # noqa: E402

from _slow_runner import run_cases  # noqa: E402

if __name__ == "__main__":
    spec = json.load(sys.stdin)
    results = run_cases(ElectraTokenizer, spec["vocab_file"], spec["cases"])
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump(results, handle)

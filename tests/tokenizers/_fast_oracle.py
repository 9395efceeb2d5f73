"""Reference side of the fast-tokenizer tests: run in the 4.37 venv, JSON spec on stdin, results on stdout."""

from __future__ import annotations

import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

from _fast_runner import run  # noqa: E402

if __name__ == "__main__":
    spec = json.load(sys.stdin)
    json.dump(run(spec, transformers, sides=("both", "oracle")), sys.stdout)

"""Reference side of test_bpe.py: run in the 4.37 venv, JSON spec on stdin, results on stdout.

The same runner as _fast_oracle.py, without the deep-learning frameworks (no call asks for their tensors)
and with the answer written in one piece (large answers written piecewise to a pipe are slow).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for name in ("USE_TF", "USE_TORCH", "USE_FLAX"):
    os.environ[name] = "0"
warnings.filterwarnings("ignore")

import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

from _fast_runner import run  # noqa: E402

if __name__ == "__main__":
    spec = json.load(sys.stdin)
    sys.stdout.write(json.dumps(run(spec, transformers, sides=("both", "oracle"))))

"""The reference side of tests/tokenizers/test_hypothesis_tokenizers.py: runs in the 4.37 environment.

Reads {"tokenizers": {name: {"cls", "args", "kwargs"}}, "texts": [...], "pairs": [[a, b], ...]} as JSON on
stdin; for every tokenizer, encodes each text (special tokens added) and each pair, and prints
{name: {"texts": [ids or {"error": type}], "pairs": [...]}} as JSON on the last line of stdout.
"""

import json
import logging
import os
import sys
import warnings

for variable in ("USE_TF", "USE_TORCH", "USE_FLAX"):
    os.environ.setdefault(variable, "0")
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)

import transformers  # noqa: E402


def encode(tokenizer, *texts):
    try:
        return tokenizer(*texts)["input_ids"]
    except Exception as error:  # both sides must then fail
        return {"error": type(error).__name__}


def main():
    job = json.loads(sys.stdin.read())
    out = {}
    for name, spec in job["tokenizers"].items():
        tokenizer = getattr(transformers, spec["cls"])(*spec.get("args", []), **spec.get("kwargs", {}))
        out[name] = {
            "texts": [encode(tokenizer, text) for text in job["texts"]],
            "pairs": [encode(tokenizer, a, b) for a, b in job["pairs"]],
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

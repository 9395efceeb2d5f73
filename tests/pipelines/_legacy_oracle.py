"""Runs in the 4.37 reference environment: JSON job on stdin, JSON results on the last stdout line.
Not a test module: tests/pipelines/legacy.py drives it.

job = {"pipelines": [{"task", "folder", "framework", "cases": [{"args": [...], "kwargs": {...}}]}],
       "saves": [{"cls", "folder", "dest", "probe": {name: int list}}]}
A pipeline case's result is the pipeline's output, or {"error": "Type: message"}. A save loads ``cls``
from ``folder`` (PyTorch weights), writes it to ``dest`` in the class's own legacy format (TF: h5, Flax:
msgpack) and returns its first output on ``probe``.
"""

import json
import os
import runpy
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# By path: tests/ on sys.path would let tests/flax shadow the flax package.
flax_from_pt = runpy.run_path(str(Path(__file__).resolve().parents[1] / "_legacy_flax.py"))["flax_from_pt"]


def plain(x):
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if hasattr(x, "numpy"):
        x = x.numpy()
    return x.tolist() if hasattr(x, "tolist") else x


def run_pipeline(spec):
    from transformers import pipeline

    pipe = pipeline(spec["task"], model=spec["folder"], tokenizer=spec["folder"], framework=spec["framework"])
    out = []
    for case in spec["cases"]:
        try:
            out.append(plain(pipe(*case.get("args", []), **case.get("kwargs", {}))))
        except Exception as err:  # the error itself is the reference's answer
            out.append({"error": f"{type(err).__name__}: {err}"})
    return out


def run_save(spec):
    import numpy as np
    import transformers

    cls = getattr(transformers, spec["cls"])
    probe = {k: np.asarray(v, dtype=np.int32) for k, v in spec["probe"].items()}
    if spec["cls"].startswith("Flax"):
        model = flax_from_pt(cls, spec["folder"])
        out = model(**probe)
    else:
        model = cls.from_pretrained(spec["folder"], from_pt=True)
        out = model(**probe)
    model.save_pretrained(spec["dest"])
    first = out[0] if isinstance(out, tuple) else next(iter(out.values()))
    return np.asarray(first, dtype=np.float32).tolist()


def main():
    job = json.loads(sys.stdin.read())
    result = {"pipelines": [run_pipeline(s) for s in job.get("pipelines", [])],
              "saves": [run_save(s) for s in job.get("saves", [])]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Runs in the 4.37 reference environment (TensorFlow 2.15, tf.keras 2): JSON job on stdin, arrays in and
out through .npz files. Not a test module: tests/keras/test_roberta_keras.py drives it.

Job: {"inputs": npz, "out": npz, "runs": [{"name", "cls", "folder" or "config", "from_pt", "calls", "save_h5"}]}.
A call maps argument names to "@key" (an input array), "#i.field" (a field of call i's output), or a
plain JSON value. With "save_h5", the loaded model is saved there with the reference's own TF format.
"""

import json
import sys

import numpy as np


def flatten(value, prefix, out):
    if isinstance(value, np.ndarray):
        out[prefix] = value
    elif hasattr(value, "numpy"):
        out[prefix] = value.numpy()
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            flatten(item, f"{prefix}.{i}", out)


def resolve(args, arrays, outputs):
    resolved = {}
    for name, value in args.items():
        if isinstance(value, str) and value.startswith("@"):
            resolved[name] = arrays[value[1:]]
        elif isinstance(value, str) and value.startswith("#"):
            index, field = value[1:].split(".", 1)
            resolved[name] = outputs[int(index)][field]
        else:
            resolved[name] = value
    return resolved


def main():
    job = json.loads(sys.stdin.read())
    import transformers

    arrays = dict(np.load(job["inputs"]))
    out, kinds = {}, {}
    for run in job["runs"]:
        cls = getattr(transformers, run["cls"])
        if run.get("config"):  # a fresh model of that class, e.g. another architecture's weights file
            model = cls(cls.config_class(**run["config"]))
            model(model.dummy_inputs)
        else:
            model = cls.from_pretrained(run["folder"], **({"from_pt": True} if run.get("from_pt") else {}))
        outputs, run_kinds = [], []
        for i, call in enumerate(run["calls"]):
            args = resolve(call, arrays, outputs)
            if run["cls"].startswith("TF"):
                import tensorflow as tf

                args = {k: tf.constant(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
                args.setdefault("input_ids", None)  # tf.keras 2 wants the first argument named
                result = model(**args)
            else:
                import torch

                with torch.no_grad():
                    result = model(**{k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                                      for k, v in args.items()})
            outputs.append(result)
            items = list(enumerate(result)) if isinstance(result, tuple) else list(result.items())
            run_kinds.append([str(k) for k, _ in items])
            for key, value in items:
                flatten(_to_numpy(value), f"{run['name']}.{i}.{key}", out)
        kinds[run["name"]] = run_kinds
        if run.get("save_h5"):
            model.save_pretrained(run["save_h5"])
    np.savez(job["out"], **out)
    print(json.dumps(kinds))


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_to_numpy(v) for v in value)
    return value


if __name__ == "__main__":
    main()

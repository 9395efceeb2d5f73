"""The reference side of tests/pt/test_generation_constrained.py; runs in the reference's 4.37 environment.

Reads a job (JSON on stdin): tiny models to build (4.37 classes, weights perturbed at random, a few output
rows scaled), each saved to a folder, and the ``generate`` runs to make on them. Constraint objects cannot
travel as JSON: a run's ``constraints`` is a list of ``["phrasal", ids]`` / ``["disjunctive", [ids, ...]]``.
Writes the returned tensors to ``<workdir>/generate.out.safetensors`` and prints a JSON summary (output
class, keys, or the error raised) as the last line of stdout.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

# 4.37 asks whether torch is compiling on some forwards, which imports torch._dynamo (seconds); nothing
# here compiles.
if hasattr(transformers.modeling_utils, "is_torchdynamo_compiling"):
    transformers.modeling_utils.is_torchdynamo_compiling = lambda: False

CONSTRAINTS = {"phrasal": transformers.PhrasalConstraint, "disjunctive": transformers.DisjunctiveConstraint}


def build(spec, workdir):
    config = getattr(transformers, spec["config_cls"])(**spec["config"])
    torch.manual_seed(spec["seed"])
    model = getattr(transformers, spec["cls"])(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * spec["perturb"])
        head = model.get_output_embeddings().weight
        for token, factor in spec.get("boost", {}).items():
            head[int(token)] *= factor
    model.save_pretrained(os.path.join(workdir, spec["name"]))
    return model.eval()


def run(job):
    workdir = job["workdir"]
    tensors = load_file(job["tensors"])
    models = {spec["name"]: build(spec, workdir) for spec in job["models"]}
    flat, summary = {}, {}
    for case in job["runs"]:
        kwargs = {name: tensors[key] for name, key in case["inputs"].items()}
        kwargs.update(case["kwargs"])
        if "constraints" in kwargs:
            kwargs["constraints"] = [CONSTRAINTS[kind](ids) for kind, ids in kwargs["constraints"]]
        torch.manual_seed(0)
        try:
            result = models[case["model"]].generate(**kwargs)
        except Exception as err:  # the tests compare failures too
            summary[case["name"]] = {"error": f"{type(err).__name__}: {err}"}
            continue
        if isinstance(result, torch.Tensor):
            summary[case["name"]] = {"type": "Tensor"}
            result = {"sequences": result}
        else:
            summary[case["name"]] = {"type": type(result).__name__, "keys": list(result.keys())}
        for key in ("sequences", "sequences_scores", "beam_indices"):
            if result.get(key) is not None:
                flat[f"{case['name']}.{key}"] = result[key].contiguous()
        for i, step in enumerate(result.get("scores") or ()):
            flat[f"{case['name']}.scores.{i}"] = step.contiguous()
    save_file(flat, os.path.join(workdir, "generate.out.safetensors"))
    return summary


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))

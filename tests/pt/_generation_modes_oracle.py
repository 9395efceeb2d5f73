"""The reference side of the generate() tests in tests/pt/ (modes, constrained, Pegasus); runs in the
reference's 4.37 environment, driven by tests/pt/_generation_common.py.

Reads a job (JSON on stdin): tiny models to build, each saved to a folder, and the ``generate`` runs to make
on them. A model spec: ``cls`` and ``config_cls`` (4.37 class names), ``config``, ``seed``, ``perturb`` (the
scale of the random noise added to every weight), ``boost`` (token -> factor for its output row, so that
end-of-sequence tokens come up) and ``eos_bias`` (Pegasus: a random ``final_logits_bias`` with the end token
raised by that much, or, without that bias, the end token's output row scaled by it). Constraint objects
cannot travel as JSON: a run's ``constraints`` is a list of ``["phrasal", ids]`` / ``["disjunctive", [ids,
...]]``. Writes the returned tensors to ``<workdir>/generate.out.safetensors`` and prints a JSON summary
(output class, keys, errors) as the last line of stdout.
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
STATE_FIELDS = ("attentions", "decoder_attentions", "cross_attentions", "encoder_attentions", "hidden_states",
                "decoder_hidden_states", "encoder_hidden_states")


def shapes(value):
    """The nested structure of tuples of tensors, with each tensor's shape (and None kept)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    return [shapes(item) for item in value]


def leaves(value, path=()):
    if isinstance(value, torch.Tensor):
        yield path, value
    elif value is not None:
        for i, item in enumerate(value):
            yield from leaves(item, path + (i,))


def build(spec, workdir):
    config = getattr(transformers, spec["config_cls"])(**spec["config"])
    torch.manual_seed(spec.get("seed", 0))
    model = getattr(transformers, spec["cls"])(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * spec.get("perturb", 0.1))
        # The output head's weight rows of the chosen tokens are scaled (every family has such rows).
        head = model.get_output_embeddings().weight
        for token, factor in spec.get("boost", {}).items():
            head[int(token)] *= factor
        if "eos_bias" in spec:
            if hasattr(model, "final_logits_bias"):
                bias = torch.randn_like(model.final_logits_bias) * 0.5
                bias[0, config.eos_token_id] += spec["eos_bias"]
                model.final_logits_bias.copy_(bias)
            else:  # the causal model's head has no bias: make the end token's row more likely instead
                head[config.eos_token_id] *= spec["eos_bias"]
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
        if "sequence_bias" in kwargs:  # JSON has no tuple keys: [[token ids], bias] pairs
            kwargs["sequence_bias"] = {tuple(ids): bias for ids, bias in kwargs["sequence_bias"]}
        if "assistant_model" in kwargs:  # the name of one of the job's models
            kwargs["assistant_model"] = models[kwargs["assistant_model"]]
        if "constraints" in kwargs:
            kwargs["constraints"] = [CONSTRAINTS[kind](ids) for kind, ids in kwargs["constraints"]]
        torch.manual_seed(case.get("seed", 0))
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
        # Attentions and hidden states: the encoder's are a tuple per layer, the others a tuple per step of
        # a tuple per layer. The summary keeps their structure (shapes, None where an entry is None), the
        # tensors go under <case>.<field>.<step>.<layer> (<case>.<field>.<layer> for the encoder's).
        structure = {}
        for field in STATE_FIELDS:
            value = result.get(field)
            if value is None:
                continue
            structure[field] = shapes(value)
            for path, tensor in leaves(value):
                flat[".".join([case["name"], field, *map(str, path)])] = tensor.contiguous()
        if structure:
            summary[case["name"]]["states"] = structure
    save_file(flat, os.path.join(workdir, "generate.out.safetensors"))
    return summary


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))

"""The reference side of tests/pt/test_generation_assisted.py; runs in the reference's 4.37 environment.

Reads a job (JSON on stdin): tiny models to build, saved each to a folder. A model is either a 4.37 class
with perturbed random weights and a few tokens' output rows scaled (as in _generation_modes_oracle.py),
or a *draft* of another one: the same config with fewer layers, holding the first layers, the embeddings
and the head of that model (so that it often predicts the same tokens). Then the ``generate`` runs, each
with an optional ``assistant`` (a model name) and settings for the assistant's generation config.
Writes the returned tensors to ``<workdir>/generate.out.safetensors`` and prints a JSON summary (output
class, keys, errors) as the last line of stdout.
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


def build(spec, workdir, models):
    config = getattr(transformers, spec["config_cls"])(**spec["config"])
    torch.manual_seed(spec.get("seed", 0))
    model = getattr(transformers, spec["cls"])(config)
    with torch.no_grad():
        if "draft_of" in spec:
            # Every parameter the draft shares by name with its model (embeddings, first layers, head).
            source = models[spec["draft_of"]].state_dict()
            own = model.state_dict()
            missing = [k for k in own if k not in source]
            if missing:
                raise KeyError(f"draft {spec['name']}: no source for {missing[:3]}")
            model.load_state_dict({k: source[k] for k in own})
        else:
            for param in model.parameters():
                param.add_(torch.randn_like(param) * spec.get("perturb", 0.1))
            head = model.get_output_embeddings().weight
            for token, factor in spec.get("boost", {}).items():
                head[int(token)] *= factor
            # Layers a draft leaves out are made quieter (every weight scaled down), so that the draft
            # predicts the model's tokens often and rounds keep several candidates.
            for name, param in model.named_parameters():
                if any(part in name for part in spec.get("quiet", ())):
                    param.mul_(spec.get("quiet_factor", 0.3))
    model.save_pretrained(os.path.join(workdir, spec["name"]))
    return model.eval()


def run(job):
    workdir = job["workdir"]
    tensors = load_file(job["tensors"])
    models = {}
    for spec in job["models"]:
        models[spec["name"]] = build(spec, workdir, models)
    flat, summary = {}, {}
    for case in job["runs"]:
        kwargs = {name: tensors[key] for name, key in case["inputs"].items()}
        kwargs.update(case["kwargs"])
        assistant = models[case["assistant"]] if case.get("assistant") else None
        if assistant is not None:
            kwargs["assistant_model"] = assistant
            saved = {k: getattr(assistant.generation_config, k) for k in case.get("assistant_settings", {})}
            for key, value in case.get("assistant_settings", {}).items():
                setattr(assistant.generation_config, key, value)
        torch.manual_seed(case.get("seed", 0))
        try:
            result = models[case["model"]].generate(**kwargs)
        except Exception as err:  # the tests compare failures too
            summary[case["name"]] = {"error": f"{type(err).__name__}: {err}"}
            continue
        finally:
            if assistant is not None:
                for key, value in saved.items():
                    setattr(assistant.generation_config, key, value)
        if isinstance(result, torch.Tensor):
            summary[case["name"]] = {"type": "Tensor"}
            result = {"sequences": result}
        else:
            summary[case["name"]] = {"type": type(result).__name__, "keys": list(result.keys())}
        flat[f"{case['name']}.sequences"] = result["sequences"].contiguous()
        for i, step in enumerate(result.get("scores") or ()):
            flat[f"{case['name']}.scores.{i}"] = step.contiguous()
        for field in ("attentions", "hidden_states", "decoder_attentions", "cross_attentions",
                      "decoder_hidden_states"):
            for i, step in enumerate(result.get(field) or ()):
                for j, layer in enumerate(step):
                    flat[f"{case['name']}.{field}.{i}.{j}"] = layer.clone()  # slices may share storage
    save_file(flat, os.path.join(workdir, "generate.out.safetensors"))
    return summary


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))

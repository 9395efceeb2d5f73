"""The reference side of the parity harness.

Runs inside the reference's 4.37 environment as a subprocess; for families whose current reference
release is the one to match (GPT-J's spec page documents a newer release), the harness imports
:func:`run_job` and runs it in-process against the installed ``transformers`` instead.

Reads a job (JSON on stdin), and for each case either builds a reference model from a config with
every parameter perturbed and saves it ("build"), or loads a folder ("load"); then runs the case's
calls and writes every output tensor to ``<workdir>/<case>.out.safetensors`` under flattened names.
Prints a JSON summary (output class names and key order) on the last line of stdout.

With ``--serve`` it answers one job per line of stdin, each with one line of stdout (``{"summary": ...}`` or
``{"error": traceback}``), until stdin closes: the harness keeps one such process per test process, so the
reference's start-up (torch and transformers, a few seconds) is paid once, not per job.
"""

import contextlib
import json
import os
import sys
import traceback

import torch
import transformers
from safetensors.torch import load_file, save_file


def flatten(value, prefix, out):
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().clone().contiguous()
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            flatten(item, f"{prefix}.{i}", out)
    elif hasattr(value, "to_legacy_cache"):
        flatten(value.to_legacy_cache(), prefix, out)
    elif hasattr(value, "layers"):  # a Cache of the current release: per-layer keys and values
        flatten(tuple((layer.keys, layer.values) for layer in value.layers), prefix, out)


def resolve(args, tensors, outputs):
    call = {}
    for name, spec in args.items():
        if isinstance(spec, dict) and "tensor" in spec:
            call[name] = tensors[spec["tensor"]]
        elif isinstance(spec, dict) and "from_call" in spec:
            call[name] = outputs[spec["from_call"]][spec["field"]]
        else:
            call[name] = spec
    return call


def run_job(job):
    """Build or load every case of ``job``, run its calls, write the outputs; returns the summary."""
    tensors = load_file(job["tensors"]) if job.get("tensors") else {}
    summary = {}
    for case in job["cases"]:
        cls = getattr(transformers, case["cls"])
        folder = case["folder"]
        if job["mode"] == "build":
            config = transformers.AutoConfig.for_model(case["model_type"], **case["config"])
            torch.manual_seed(case.get("seed", 0))
            model = cls(config)
            with torch.no_grad():
                for param in model.parameters():
                    # Every parameter moves away from its initial value (LayerNorm weights off 1, biases
                    # off 0), so a wrongly mapped or ignored tensor cannot go unnoticed.
                    param.add_(torch.randn_like(param) * case.get("perturb", 0.1))
            model.save_pretrained(folder, **case.get("save_kwargs", {}))
        else:
            model = cls.from_pretrained(folder)
        model.eval()
        flat, outputs, kinds = {}, [], []
        for i, call in enumerate(case["calls"]):
            args = resolve(call["args"], tensors, outputs)
            with torch.no_grad():
                result = model(**args)
            outputs.append(result)
            if isinstance(result, tuple):
                kinds.append({"type": "tuple", "keys": [str(k) for k in range(len(result))]})
                flatten(result, f"call{i}", flat)
            else:
                kinds.append({"type": type(result).__name__, "keys": list(result.keys())})
                for key, value in result.items():
                    flatten(value, f"call{i}.{key}", flat)
        save_file(flat, os.path.join(job["workdir"], case["name"] + ".out.safetensors"))
        summary[case["name"]] = kinds
    return summary


def serve():
    answers = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the answer line is the only output on stdout
                answer = {"summary": run_job(json.loads(line))}
        except Exception:  # noqa: BLE001 - reported to the harness, which raises it in the test
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main():
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        print(json.dumps(run_job(json.load(sys.stdin))))


if __name__ == "__main__":
    main()

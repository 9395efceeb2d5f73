"""The reference side of the generation tests; runs in the reference's 4.37 environment as a subprocess.

Reads a job (JSON on stdin): models to build (a perturbed random ``ElectraForCausalLM``, saved to a folder)
and ``generate`` runs on them. Writes every returned tensor to ``<workdir>/generate.out.safetensors`` and
prints a JSON summary (output class, keys, streamed text, errors) as the last line of stdout.
"""

import contextlib
import io
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file


def allowed_tokens(batch_id, tokens):
    """The ``prefix_allowed_tokens_fn`` both sides use: a few tokens that depend on the sequence so far."""
    last = int(tokens[-1])
    return [(last * 7 + batch_id + k) % 60 + 5 for k in range(4)]


def build(spec, workdir):
    config = transformers.ElectraConfig(**spec["config"])
    torch.manual_seed(spec.get("seed", 0))
    model = transformers.ElectraForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * spec.get("perturb", 0.1))
        for token, bias in spec.get("logit_bias", {}).items():
            model.generator_lm_head.bias[int(token)] += bias  # makes chosen tokens (eos) likely enough to occur
    folder = os.path.join(workdir, spec["name"])
    model.save_pretrained(folder)
    return model.eval()


class Recording(transformers.TextStreamer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks = []

    def on_finalized_text(self, text, stream_end=False):
        self.chunks.append([text, stream_end])
        super().on_finalized_text(text, stream_end)


def make_streamer(spec):
    tokenizer = transformers.BertTokenizer(spec["vocab"])
    decode = spec.get("decode_kwargs", {})
    if spec["kind"] == "iterator":
        return transformers.TextIteratorStreamer(tokenizer, skip_prompt=spec.get("skip_prompt", False), **decode)
    return Recording(tokenizer, skip_prompt=spec.get("skip_prompt", False), **decode)


def run(job):
    workdir = job["workdir"]
    tensors = load_file(job["tensors"]) if job.get("tensors") else {}
    models = {spec["name"]: build(spec, workdir) for spec in job["models"]}
    flat, summary = {}, {}
    for case in job["runs"]:
        model = models[case["model"]]
        kwargs = {name: tensors[key] for name, key in case.get("inputs", {}).items()}
        kwargs.update(case.get("kwargs", {}))
        if case.get("prefix_fn"):
            kwargs["prefix_allowed_tokens_fn"] = allowed_tokens
        streamer = make_streamer(case["streamer"]) if case.get("streamer") else None
        if streamer is not None:
            kwargs["streamer"] = streamer
        if case.get("seed") is not None:
            torch.manual_seed(case["seed"])
        record = {}
        stdout = io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout):
                result = model.generate(**kwargs)
        except Exception as err:  # the test compares failures too
            summary[case["name"]] = {"error": f"{type(err).__name__}: {err}"}
            continue
        if isinstance(result, torch.Tensor):
            record["type"] = "Tensor"
            flat[f"{case['name']}.sequences"] = result.contiguous()
        else:
            record["type"] = type(result).__name__
            record["keys"] = list(result.keys())
            for key in ("sequences", "sequences_scores", "beam_indices"):
                if result.get(key) is not None:
                    flat[f"{case['name']}.{key}"] = result[key].contiguous()
            for i, step in enumerate(result.get("scores") or ()):
                flat[f"{case['name']}.scores.{i}"] = step.contiguous()
        if streamer is not None:
            record["stdout"] = stdout.getvalue()
            record["chunks"] = streamer.chunks if hasattr(streamer, "chunks") else list(streamer)
        summary[case["name"]] = record
    save_file(flat, os.path.join(workdir, "generate.out.safetensors"))
    return summary


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))

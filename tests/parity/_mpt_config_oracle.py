"""The reference side of tests/parity/test_mpt_config_audit.py; runs in the reference's 4.37 environment.

Reads a job (JSON on stdin): MPT configs to build (weights perturbed at random, then saved to a folder each)
and the inputs file. For each it records the evaluation logits, and the loss and every parameter's gradient
of one seeded training step (dropout included). Also records freshly initialised weights for a given seed.
Writes ``<workdir>/oracle.out.safetensors``; prints "ok" as the last line.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

if hasattr(transformers.modeling_utils, "is_torchdynamo_compiling"):
    transformers.modeling_utils.is_torchdynamo_compiling = lambda: False


def main():
    job = json.loads(sys.stdin.read())
    inputs = load_file(job["inputs"])
    out = {}
    for case in job["cases"]:
        name = case["name"]
        config = transformers.MptConfig(**case["config"])
        torch.manual_seed(case["seed"])
        model = transformers.MptForCausalLM(config)
        if case.get("init_only"):
            for key, value in model.state_dict().items():
                out[f"{name}/init/{key}"] = value.clone()
            continue
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.1)
        model.save_pretrained(os.path.join(job["workdir"], name))
        model.eval()
        with torch.no_grad():
            out[f"{name}/logits"] = model(input_ids=inputs["ids"], attention_mask=inputs["mask"]).logits
        model.train()
        torch.manual_seed(case["seed"] + 1)
        loss = model(input_ids=inputs["ids"], attention_mask=inputs["mask"], labels=inputs["labels"]).loss
        loss.backward()
        out[f"{name}/loss"] = loss.detach().reshape(1)
        for key, param in model.named_parameters():
            out[f"{name}/grad/{key}"] = param.grad.contiguous()
    save_file(out, os.path.join(job["workdir"], "oracle.out.safetensors"))
    print("ok")


if __name__ == "__main__":
    main()

"""Runs in the reference's 4.37 environment (never imported by the tests): loads checkpoint folders with
``output_loading_info=True`` and resizes token embeddings, then prints what it saw as JSON.

Job on stdin: {"workdir": ..., "loads": [[name, class, folder, kwargs]], "resizes": [[name, class, folder, args]]}.
Resized models' tensors go to ``<workdir>/<name>.resized.safetensors``.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file


def main():
    job = json.load(sys.stdin)
    report = {"loads": {}, "resizes": {}}
    for name, cls, folder, kwargs in job["loads"]:
        _, info = getattr(transformers, cls).from_pretrained(folder, output_loading_info=True, **kwargs)
        report["loads"][name] = {
            "missing_keys": sorted(info["missing_keys"]),
            "unexpected_keys": sorted(info["unexpected_keys"]),
            "mismatched_keys": sorted([k, list(a), list(b)] for k, a, b in info["mismatched_keys"]),
        }
    for name, cls, folder, args in job["resizes"]:
        torch.manual_seed(0)
        model = getattr(transformers, cls).from_pretrained(folder)
        returned = model.resize_token_embeddings(*args)
        head = model.get_output_embeddings()
        tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        report["resizes"][name] = {
            "returned_shape": list(returned.weight.shape),
            "vocab_size": model.config.vocab_size,
            "tied": head is not None and head.weight is model.get_input_embeddings().weight,
            "out_features": None if head is None else head.out_features,
        }
        save_file(tensors, os.path.join(job["workdir"], name + ".resized.safetensors"))
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Runs in the 4.37 reference environment: its Flax Pegasus (loading PyTorch weights) and its PyTorch
Pegasus (loading what polyformers' Flax saved). JSON job on stdin, arrays to an .npz file.

job = {"folder": checkpoint saved by PyTorch, "inputs": npz of input arrays, "out": npz to write,
       "msgpack_dir": where to save the reference's flax_model.msgpack,
       "generate": [{"name": ..., "kwargs": {...}}], "pt_folder": folder saved by polyformers' Flax}
"""

import json
import runpy
import sys
from pathlib import Path

import numpy as np

# By path: tests/ on sys.path would let tests/flax shadow the flax package.
flax_from_pt = runpy.run_path(str(Path(__file__).resolve().parents[1] / "_legacy_flax.py"))["flax_from_pt"]


def main() -> None:
    job = json.loads(sys.stdin.read())
    import jax.numpy as jnp
    import torch
    from transformers import FlaxPegasusForConditionalGeneration, PegasusForConditionalGeneration

    import functools

    import jax

    data = dict(np.load(job["inputs"]))
    out = {}
    # Eager Flax compiles op by op (minutes on two cores); compiled calls are the documented use anyway.
    model = flax_from_pt(FlaxPegasusForConditionalGeneration, job["folder"])
    params = model.params
    ids, mask, dec = data["input_ids"], data["attention_mask"], data["decoder_input_ids"]
    call = jax.jit(functools.partial(model.__call__, output_attentions=True, output_hidden_states=True))
    full = call(ids, attention_mask=mask, decoder_input_ids=dec, params=params)
    for key, value in full.items():
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                out[f"call.{key}.{i}"] = np.asarray(item)
        else:
            out[f"call.{key}"] = np.asarray(value)
    encoded = jax.jit(model.encode)(ids, attention_mask=mask, params=params)
    out["encode"] = np.asarray(encoded.last_hidden_state)
    decode = jax.jit(model.decode)
    out["decode"] = np.asarray(decode(dec, encoded, encoder_attention_mask=mask, params=params).logits)
    for spec in job["generate"]:
        generate = jax.jit(functools.partial(model.generate, **spec["kwargs"]))
        result = generate(jnp.asarray(ids), attention_mask=jnp.asarray(mask), params=params)
        out[f"generate.{spec['name']}"] = np.asarray(result.sequences)
    model.save_pretrained(job["msgpack_dir"], params=params)
    if job.get("pt_folder"):
        pt = PegasusForConditionalGeneration.from_pretrained(job["pt_folder"]).eval()
        with torch.no_grad():
            logits = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        decoder_input_ids=torch.tensor(dec)).logits
        out["pt_from_flax_save"] = logits.numpy()
    np.savez(job["out"], **out)
    print(json.dumps({"ok": True, "keys": sorted(out)}))


if __name__ == "__main__":
    main()

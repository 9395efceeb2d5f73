"""Peak memory of loading and running a 6B-parameter GPT-J in float16: polyformers vs the reference.

The checkpoint is GPT-J-6B's shape (28 layers of width 4096, vocabulary 50400) with random weights, about
12 GB in float16, written once as 2 GB safetensors shards with an index, one shard in memory at a time.
Each contender then runs alone in a fresh process (the two never overlap: together they would not fit
in 24 GB): it loads the folder with ``dtype=torch.float16``, records its peak RSS (VmHWM), greedily
generates a few tokens from a fixed prompt and records the peak again. The generation reads every weight,
so a loader that maps the file lazily is charged for the pages a forward pass touches. Peak RSS is
reported as is (imports included) and divided by the checkpoint's size; the goal is at most 1.1x the
checkpoint and no more than the reference. Medians over ``--repeat`` runs (each reads 12 GB).

    .venv/bin/python bench/gptj_6b_memory.py [--repeat 1] [--new-tokens 4] [--folder .cache/bench/gptj-6b-fp16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from proc_memory import status  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".complete"  # written last: a folder without it is an interrupted synthesis and is redone

# GPT-J-6B as published: every figure the architecture reads.
CONFIG = dict(
    architectures=["GPTJForCausalLM"], model_type="gptj", vocab_size=50400, n_positions=2048, n_embd=4096,
    n_layer=28, n_head=16, rotary_dim=64, n_inner=None, activation_function="gelu_new", resid_pdrop=0.0,
    embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02, use_cache=True,
    bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False, torch_dtype="float16",
)
SHARD_BYTES = 2 * 1024**3
MIN_FREE_BYTES = 14 * 1024**3
PROMPT = [464, 3290, 7586, 21831, 18045, 625, 262, 16931]  # 8 fixed ids; no tokenizer is needed


# -------------------------------------------------------------------------------------------------
# the checkpoint


def tensor_specs(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of the reference's GPTJForCausalLM checkpoint, in file order."""
    width, vocab = config["n_embd"], config["vocab_size"]
    inner = config["n_inner"] or 4 * width
    specs = [("transformer.wte.weight", (vocab, width))]
    for i in range(config["n_layer"]):
        p = f"transformer.h.{i}."
        specs += [
            (p + "ln_1.weight", (width,)), (p + "ln_1.bias", (width,)),
            (p + "attn.k_proj.weight", (width, width)), (p + "attn.v_proj.weight", (width, width)),
            (p + "attn.q_proj.weight", (width, width)), (p + "attn.out_proj.weight", (width, width)),
            (p + "mlp.fc_in.weight", (inner, width)), (p + "mlp.fc_in.bias", (inner,)),
            (p + "mlp.fc_out.weight", (width, inner)), (p + "mlp.fc_out.bias", (width,)),
        ]
    specs += [
        ("transformer.ln_f.weight", (width,)), ("transformer.ln_f.bias", (width,)),
        ("lm_head.weight", (vocab, width)), ("lm_head.bias", (vocab,)),
    ]
    return specs


def _random(key: str, shape: tuple[int, ...], generator):
    """A float16 tensor: layer-norm scales near 1, everything else small (std 0.02, biases 0.01), so
    activations stay finite in float16 through all 28 layers."""
    import torch

    std = 0.02 if key.endswith("weight") else 0.01
    tensor = torch.empty(shape, dtype=torch.float16)
    # Row blocks keep the float32 scratch small (~256 MB) for the 50400 x 4096 matrices.
    rows = max(1, (64 * 1024**2) // max(1, tensor[0].numel())) if tensor.dim() > 1 else tensor.shape[0]
    for start in range(0, tensor.shape[0], rows):
        block = torch.randn((min(rows, tensor.shape[0] - start),) + shape[1:], generator=generator) * std
        if ".ln_" in key and key.endswith("weight"):
            block += 1.0
        tensor[start:start + rows] = block
    return tensor


def synthesize(folder: Path) -> None:
    """Write the checkpoint shard by shard; only one shard's tensors are ever in memory."""
    import torch
    from safetensors.torch import save_file

    specs = tensor_specs(CONFIG)
    need = sum(2 * _numel(shape) for _, shape in specs)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # leftovers of an interrupted run count against the free space
        stale.unlink()
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise SystemExit(
            f"not enough disk space for the {need / 1e9:.1f} GB checkpoint in {folder}: {free / 1e9:.1f} GB free, "
            f"need at least {MIN_FREE_BYTES / 1e9:.1f} GB"
        )
    shards, current, size = [], [], 0
    for key, shape in specs:
        nbytes = 2 * _numel(shape)
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((key, shape))
        size += nbytes
    shards.append(current)

    print(f"synthesizing a {need / 1e9:.2f} GB GPT-J-6B checkpoint in {folder} ({len(shards)} shards, once)", flush=True)
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    started = time.perf_counter()
    for number, entries in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {key: _random(key, shape, generator) for key, shape in entries}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
        weight_map.update({key: name for key, _ in entries})
        print(f"  {name} ({time.perf_counter() - started:.0f} s)", flush=True)
    index = {"metadata": {"total_size": need}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (folder / MARKER).write_text("")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -------------------------------------------------------------------------------------------------
# one contender, in its own process


def child(library: str, folder: str, new_tokens: int, threads: int) -> None:
    import torch

    if library == "polyformers":
        from polyformers import GPTJForCausalLM
    else:
        from transformers import GPTJForCausalLM
    torch.set_num_threads(threads)
    baseline = status("VmRSS")
    started = time.perf_counter()
    model = GPTJForCausalLM.from_pretrained(folder, dtype=torch.float16)
    load_s = time.perf_counter() - started
    load_peak, load_rss = status("VmHWM"), status("VmRSS")
    dtypes = sorted({str(p.dtype) for p in model.parameters()})

    prompt = torch.tensor([PROMPT])
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, num_beams=1, pad_token_id=CONFIG["eos_token_id"],
        )
    generate_s = time.perf_counter() - started
    print(json.dumps({
        "baseline": baseline, "load_s": load_s, "load_peak": load_peak, "load_rss": load_rss,
        "generate_s": generate_s, "peak": status("VmHWM"), "rss": status("VmRSS"),
        "tokens": out[0, len(PROMPT):].tolist(), "dtypes": dtypes,
    }))


def run_child(library: str, args) -> dict:
    command = [sys.executable, __file__, "--child", library, "--folder", str(args.folder),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True,
                         env=dict(os.environ, TRANSFORMERS_VERBOSITY="error"))
    if out.returncode != 0:
        raise SystemExit(f"{library} run failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=ROOT / ".cache" / "bench" / "gptj-6b-fp16")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["polyformers", "reference"], help="run one contender (for profiling)")
    parser.add_argument("--child", choices=["polyformers", "reference"])
    args = parser.parse_args()
    if args.child:
        return child(args.child, str(args.folder), args.new_tokens, args.threads)
    if not (args.folder / MARKER).exists():
        synthesize(args.folder)
    size = sum(p.stat().st_size for p in args.folder.glob("*.safetensors"))
    print(f"checkpoint: {size / 1e9:.2f} GB float16 ({args.folder}); prompt {len(PROMPT)} tokens, "
          f"{args.new_tokens} new, {args.threads} threads, median of {args.repeat}")

    libraries = [args.only] if args.only else ["polyformers", "reference"]
    runs: dict[str, list[dict]] = {lib: [] for lib in libraries}
    for _ in range(args.repeat):
        for library in libraries:  # one at a time: two 12 GB processes do not fit
            runs[library].append(run_child(library, args))

    def median(library, field):
        return statistics.median(run[field] for run in runs[library])

    gb = 1e9
    header = (f"{'':12s} {'load s':>7s} {'gen s':>6s} {'import RSS':>10s} {'peak load':>10s} {'RSS load':>9s} "
              f"{'peak gen':>9s} {'peak/size':>9s} {'(peak-import)/size':>18s}  tokens")
    print(header)
    for library in libraries:
        peak = median(library, "peak")
        print(
            f"{library:12s} {median(library, 'load_s'):7.1f} {median(library, 'generate_s'):6.1f} "
            f"{median(library, 'baseline') / gb:9.2f}G {median(library, 'load_peak') / gb:9.2f}G "
            f"{median(library, 'load_rss') / gb:8.2f}G {peak / gb:8.2f}G {peak / size:9.3f} "
            f"{(peak - median(library, 'baseline')) / size:18.3f}  {runs[library][0]['tokens']}"
        )
    if len(libraries) == 2:
        ours, ref = (median(lib, "peak") for lib in libraries)
        ours_load, ref_load = (median(lib, "load_peak") for lib in libraries)
        same = all(a["tokens"] == b["tokens"] for a, b in zip(*runs.values()))
        print(f"ratio polyformers/reference: peak after load {ours_load / ref_load:.3f}, "
              f"peak after generate {ours / ref:.3f}; greedy tokens equal: {same}")
    for library in libraries:
        print(f"{library} parameter dtypes: {runs[library][0]['dtypes']}")


if __name__ == "__main__":
    main()

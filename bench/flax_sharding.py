"""Flax Pegasus training on a device mesh: throughput of data parallelism and memory of full sharding.

One worker process (this script's ``--worker`` mode) holds ``--devices`` (4) devices: on CPU they are made
with ``XLA_FLAGS=--xla_force_host_platform_device_count``, so they share this machine's cores; on an
accelerator host the real devices are used. The model is a reduced Pegasus with random weights (d_model
256, 4 + 4 layers, 8 heads, FFN 1024, vocab 8192, float32), trained with ``polyformers.flax.training``
(AdamW, dropout on) on random ids: ``--batch`` (16) sequences of ``--source`` (64) tokens and
``--target`` (32) label tokens.

Printed:
1. steps/s of one device against a ``data=N`` x ``model=1`` mesh (``N = --devices``, layout
   ``data_parallel``), the same global batch; each figure is the median over ``--repeat`` (3) rounds of
   ``--steps`` (10) timed steps, after ``WARMUP`` untimed ones (the first compiles); the ratio mesh / one.
2. Memory per device under ``fully_sharded`` against ``data_parallel`` (replicated parameters) on the
   same mesh: the bytes of the training state (parameters + AdamW moments) held by device 0 (summed
   over its shards), and the compiled step's peak per device from XLA's memory analysis (arguments +
   outputs + temporaries - donated aliases); the ratios fully sharded / replicated (target <= 0.6).
3. The load average before and after, the cores this process may use and the worker's thread count.

    .venv/bin/python bench/flax_sharding.py [--devices 4] [--batch 16] [--steps 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2
CONFIG = dict(vocab_size=8192, d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=8,
              decoder_attention_heads=8, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=256,
              dropout=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def threads() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


# -------------------------------------------------------------------------------------------------
# worker


def worker(args) -> dict:
    import jax
    import numpy as np

    from polyformers import FlaxPegasusForConditionalGeneration, PegasusConfig
    from polyformers.flax import sharding as S
    from polyformers.flax import training as T

    devices = jax.devices()
    if len(devices) < args.devices:
        raise SystemExit(f"--devices {args.devices} asked, {len(devices)} available")
    model = FlaxPegasusForConditionalGeneration(PegasusConfig(**CONFIG), _do_init=False)
    params = jax.jit(lambda key: model.init_weights(key, (1, 1)))(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(np.asarray, params)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, CONFIG["vocab_size"], (args.batch, args.source)).astype(np.int32)
    labels = rng.integers(2, CONFIG["vocab_size"], (args.batch, args.target)).astype(np.int32)
    data = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}
    optimizer = T.adamw(1e-4, weight_decay=0.01)
    result = {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "devices": args.devices,
              "params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))}

    def setup(shape, layout):
        """State and batch on a mesh, and the step compiled ahead of time (its memory analysis comes free)."""
        mesh = S.make_mesh(shape, devices)
        shardings = T.state_shardings(model, optimizer, mesh, layout, params=params)
        state = T.create_state(params, optimizer, shardings=shardings)
        batch = S.shard_batch(data, mesh)
        step = T.make_train_step(model, optimizer, mesh, shardings=shardings).compiled.lower(state, batch).compile()
        return {"state": state, "step": step, "batch": batch}

    def time_steps(c):
        state, step, batch = c["state"], c["step"], c["batch"]
        for _ in range(WARMUP):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        started = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, batch)
        jax.block_until_ready((state.params, metrics["loss"]))
        c["state"], c["loss"] = state, float(metrics["loss"])
        return args.steps / (time.perf_counter() - started)

    # 1. throughput: one device against data=N (replicated parameters), rounds alternating.
    contenders = {"one": setup((1, 1), "data_parallel"), "mesh": setup((args.devices, 1), "data_parallel")}
    rates = {name: [] for name in contenders}
    for round_ in range(args.repeat):
        names = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
        for name in names:
            rates[name].append(time_steps(contenders[name]))
    result["steps_per_s"] = {name: statistics.median(r) for name, r in rates.items()}
    result["ratio_per_round"] = statistics.median(m / o for m, o in zip(rates["mesh"], rates["one"]))

    # 2. memory per device: fully sharded against replicated on the data=N mesh.
    runs = {"data_parallel": contenders["mesh"], "fully_sharded": setup((args.devices, 1), "fully_sharded")}
    del contenders["one"]
    memory = {}
    first = devices[0]
    for layout, c in runs.items():
        if layout == "fully_sharded":
            time_steps(c)  # it trains too (its loss is printed next to the replicated run's)
        held = sum(shard.data.nbytes for leaf in jax.tree_util.tree_leaves((c["state"].params, c["state"].opt_state))
                   for shard in leaf.addressable_shards if shard.device == first)
        analysis = c["step"].memory_analysis()
        peak = None
        if analysis is not None:
            peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                    - analysis.alias_size_in_bytes)
        memory[layout] = {"state_bytes_device0": int(held), "compiled_peak_bytes": None if peak is None else int(peak),
                          "loss_after": c["loss"], "steps": int(c["state"].step)}
        stats = first.memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            memory[layout]["runtime_peak_bytes"] = int(stats["peak_bytes_in_use"])
    result["memory"] = memory
    result["threads"] = threads()
    return result


# -------------------------------------------------------------------------------------------------
# driver


def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:9.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--source", type=int, default=64)
    parser.add_argument("--target", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch % args.devices:
        raise SystemExit(f"--batch ({args.batch}) must be a multiple of --devices ({args.devices})")
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args)))
        return 0

    before = load_average()
    print(f"load average before: {before}; cores usable: {len(os.sched_getaffinity(0))}", flush=True)
    env = dict(os.environ)
    if env.get("JAX_PLATFORMS", "cpu") == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    out = Path(f"/tmp/flax_sharding_bench_{os.getpid()}.json")
    command = [sys.executable, __file__, "--worker", "--out", str(out)] + [
        f"--{k}={getattr(args, k)}" for k in ("devices", "batch", "source", "target", "steps", "repeat")]
    done = subprocess.run(command, env=env)
    if done.returncode:
        return done.returncode
    r = json.loads(out.read_text())
    out.unlink()
    n = r["devices"]
    print(f"Pegasus d_model 256, 4+4 layers, vocab 8192: {r['params'] / 1e6:.1f}M parameters, float32, "
          f"{r['platform']} ({r['device_kind']}); global batch {args.batch} x {args.source} -> {args.target} tokens; "
          f"{args.steps} timed steps x {args.repeat} rounds")
    print(f"worker threads: {r['threads']}")
    print()
    print(f"{'':24s}{'one device':>14s}{f'data={n} mesh':>16s}{'ratio':>10s}")
    one, mesh = r["steps_per_s"]["one"], r["steps_per_s"]["mesh"]
    print(f"{'steps/s':24s}{one:14.3f}{mesh:16.3f}{r['ratio_per_round']:9.2f}x")
    print()
    dp, fs = r["memory"]["data_parallel"], r["memory"]["fully_sharded"]
    print(f"{f'per device (data={n})':24s}{'replicated':>14s}{'fully sharded':>16s}{'ratio':>10s}")
    for key, label in (("state_bytes_device0", "params+AdamW state"), ("compiled_peak_bytes", "compiled step peak"),
                       ("runtime_peak_bytes", "runtime peak")):
        a, b = dp.get(key), fs.get(key)
        if a is None or b is None:
            continue
        print(f"{label:24s}{mib(a):>14s}{mib(b):>16s}{b / a:9.2f}x")
    print(f"loss after {dp['steps']} / {fs['steps']} steps: replicated {dp['loss_after']:.6f}, "
          f"fully sharded {fs['loss_after']:.6f}")
    print()
    print(f"load average after: {load_average()} (before: {before})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

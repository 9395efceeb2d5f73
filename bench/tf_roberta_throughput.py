"""TFRobertaModel inference throughput: polyformers (Keras 3) vs the reference's 4.37 TF class, CPU fp32.

Workload: one batch of 8 x 128 random token ids (no padding), RoBERTa-base sized (12 layers, 768 wide,
vocabulary 50265), random weights built once with polyformers and saved to .cache/bench/roberta-base.
Both sides load that folder (the reference with ``from_pt=True``) and run ``training=False`` forwards in
two ways: a traced ``tf.function`` ("graph") and ``tf.function(jit_compile=True)`` ("xla"). Each way is
warmed up (tracing, compilation) before timing.

The reference runs in its own environment (TensorFlow 2.15, tf.keras 2), in a subprocess that stays up
and times one forward per request; polyformers runs here. Requests alternate with our own runs, one
forward of each runner per round in a rotating order, so that load from other processes on the machine
hits every runner alike; each runner's time is the median over the rounds. A side's throughput is its
faster way's; the ratio is also given as the median of the per-round ratios, which cancels slow drifts
in the machine's load. polyformers' PyTorch RobertaModel on the same folder is timed in the same rounds too.

    .venv/bin/python bench/tf_roberta_throughput.py [--rounds 9] [--threads 2]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
LEGACY_PYTHON = Path(os.environ.get("POLYFORMERS_LEGACY_VENV", ROOT / ".cache" / "legacy-oracle")) / "bin" / "python"
BATCH, LENGTH = 8, 128
CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
              vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
              pad_token_id=1, bos_token_id=0, eos_token_id=2)

# Runs in the reference's environment: loads the folder, warms both ways up, then answers "<way>" lines
# on stdin with the seconds one forward took, and "check" with the first values of its output.
REFERENCE_WORKER = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
from transformers import TFRobertaModel

folder, inputs, threads = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
model = TFRobertaModel.from_pretrained(folder, from_pt=True)
ids, mask = tf.constant(inputs["input_ids"]), tf.constant(inputs["attention_mask"])
ways = {
    "graph": tf.function(lambda: model(input_ids=ids, attention_mask=mask, training=False).last_hidden_state),
    "xla": tf.function(lambda: model(input_ids=ids, attention_mask=mask, training=False).last_hidden_state,
                       jit_compile=True),
}
for way in ways.values():
    for _ in range(2):
        way().numpy()
print(json.dumps({"ready": tf.__version__}), flush=True)
for line in sys.stdin:
    way = line.strip()
    if way == "check":
        print(json.dumps(ways["graph"]().numpy()[:, :4, :4].tolist()), flush=True)
        continue
    start = time.perf_counter()
    ways[way]().numpy()
    print(json.dumps(time.perf_counter() - start), flush=True)
"""


def checkpoint() -> Path:
    """Random RoBERTa-base weights, built once (the same folder and recipe as bench/encoder_throughput.py)."""
    folder = CACHE / "roberta-base"
    if not (folder / "model.safetensors").exists():
        import torch

        import polyformers

        print(f"building random roberta-base weights in {folder} (once)", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = polyformers.RobertaModel(polyformers.RobertaConfig(**CONFIG))
        with torch.no_grad():  # non-zero biases and norms, so that no term is trivially skipped
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        model.save_pretrained(folder)
    return folder


class Reference:
    """The 4.37 TFRobertaModel in its own environment, one forward per request."""

    def __init__(self, folder: Path, inputs: Path, threads: int):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [str(LEGACY_PYTHON), "-c", REFERENCE_WORKER, str(folder), str(inputs), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.version = self._answer()["ready"]

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference worker ({LEGACY_PYTHON}) exited with {self.proc.wait()}")
        return json.loads(line)

    def ask(self, request: str):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed forwards per runner (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every runner")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import torch

    import polyformers

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.set_num_threads(args.threads)

    folder = checkpoint()
    rng = np.random.RandomState(0)
    ids = rng.randint(3, CONFIG["vocab_size"], (BATCH, LENGTH)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = np.ones_like(ids)
    inputs_file = CACHE / "tf_roberta_inputs.npz"
    np.savez(inputs_file, input_ids=ids, attention_mask=mask)

    reference = Reference(folder, inputs_file, args.threads)
    model = polyformers.TFRobertaModel.from_pretrained(folder)
    t_ids, t_mask = tf.constant(ids), tf.constant(mask)

    def forward():
        return model(input_ids=t_ids, attention_mask=t_mask, training=False).last_hidden_state

    ours = {"graph": tf.function(forward), "xla": tf.function(forward, jit_compile=True)}
    for way in ours.values():
        for _ in range(2):
            way().numpy()
    pt_model = polyformers.RobertaModel.from_pretrained(folder).eval()
    pt_inputs = dict(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask))
    with torch.inference_mode():
        for _ in range(2):
            pt_model(**pt_inputs)

    # The same numbers on both sides before any timing.
    theirs = np.asarray(reference.ask("check"))
    diff = float(np.abs(ours["graph"]().numpy()[:, :4, :4] - theirs).max())
    print(f"TensorFlow here {tf.__version__}, reference's {reference.version}; {args.threads} threads; "
          f"max |ours - reference| on a slice of the output: {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit("polyformers and the reference disagree: the timings would compare different work")

    def ours_run(way):
        def run():
            start = time.perf_counter()
            ours[way]().numpy()
            return time.perf_counter() - start
        return run

    def torch_run():
        start = time.perf_counter()
        with torch.inference_mode():
            pt_model(**pt_inputs)
        return time.perf_counter() - start

    runners = {
        "polyformers graph": ours_run("graph"),
        "polyformers xla": ours_run("xla"),
        "reference graph": lambda: reference.ask("graph"),
        "reference xla": lambda: reference.ask("xla"),
        "polyformers torch": torch_run,
    }
    times = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(runners[name]())
    reference.close()

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nbatch {BATCH} x {LENGTH}, median of {args.rounds} forwards each (interleaved):")
    for name, value in medians.items():
        spread = f"{min(times[name]) * 1e3:.0f}-{max(times[name]) * 1e3:.0f}"
        print(f"  {name:<20} {value * 1e3:8.1f} ms   ({spread} ms)   {BATCH / value:6.2f} sequences/s")
    best_ours = min(("polyformers graph", "polyformers xla"), key=medians.get)
    best_ref = min(("reference graph", "reference xla"), key=medians.get)
    ratio = medians[best_ref] / medians[best_ours]
    print(f"\nthroughput ratio polyformers / reference (each side's faster way: {best_ours.split()[1]} vs "
          f"{best_ref.split()[1]}): {ratio:.2f}x   (target >= 1.0x)")
    for way in ("graph", "xla"):
        print(f"  same way, {way}: {medians['reference ' + way] / medians['polyformers ' + way]:.2f}x")
    # Load from elsewhere drifts between rounds; the ratio within each round cancels most of it.
    paired = statistics.median(a / b for a, b in zip(times[best_ref], times[best_ours]))
    print(f"  median of the per-round ratios (same ways): {paired:.2f}x")
    torch_ratio = medians[best_ours] / medians["polyformers torch"]
    print(f"polyformers TF time / polyformers PyTorch time: {torch_ratio:.2f}x   (target <= 1.5x)")


if __name__ == "__main__":
    sys.exit(main())

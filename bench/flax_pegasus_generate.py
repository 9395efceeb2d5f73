"""Jitted greedy generation of a reduced Pegasus: polyformers Flax vs the reference's 4.37 Flax class,
and vs polyformers' own PyTorch ``generate``, on one checkpoint.

Reduced Pegasus (d_model 512, 6+6 layers, 8 heads, vocab 96103), batch 1, a 256-token source, 64 new
tokens (the end token is held off by ``min_length`` so every run does the same work). The Flax sides are
timed after compilation (compile time printed separately), median of ``--repeat`` runs. The reference
runs in its own environment (the 4.37 venv) as a subprocess loading the same folder with ``from_pt``.

    .venv/bin/python bench/flax_pegasus_generate.py [--repeat 5]
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
LEGACY = ROOT / ".cache" / "legacy-oracle" / "bin" / "python"
CONFIG = dict(
    vocab_size=96103, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
SOURCE, NEW = 256, 64

# Runs in either environment: times jitted greedy generation of the Flax class it is given.
FLAX_TIMER = r'''
import json, statistics, sys, time
import jax, numpy as np
folder, repeat, source, new, library = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if library == "reference":
    from transformers import FlaxPegasusForConditionalGeneration
    model = FlaxPegasusForConditionalGeneration.from_pretrained(folder, from_pt=True)
else:
    from polyformers import FlaxPegasusForConditionalGeneration
    model = FlaxPegasusForConditionalGeneration.from_pretrained(folder)
ids = np.random.default_rng(0).integers(2, 96103, size=(1, source)).astype("int32")
mask = np.ones_like(ids)
run = jax.jit(lambda i, m: model.generate(i, attention_mask=m, max_new_tokens=new, min_length=new + 1).sequences)
start = time.perf_counter(); first = np.asarray(run(ids, mask)); compile_s = time.perf_counter() - start
times = []
for _ in range(repeat):
    start = time.perf_counter(); out = np.asarray(run(ids, mask)); times.append(time.perf_counter() - start)
print(json.dumps({"compile": compile_s, "median": statistics.median(times), "tokens": out[0].tolist()}))
'''


def _flax(python: Path, library: str, folder: Path, repeat: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    if library == "reference":
        env.pop("PYTHONPATH", None)
    out = subprocess.run([str(python), "-c", FLAX_TIMER, str(folder), str(repeat), str(SOURCE), str(NEW), library],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{library} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch(folder: Path, repeat: int) -> dict:
    import numpy as np
    import torch

    from polyformers import PegasusForConditionalGeneration

    torch.set_num_threads(2)
    model = PegasusForConditionalGeneration.from_pretrained(folder)
    ids = torch.from_numpy(np.random.default_rng(0).integers(2, 96103, size=(1, SOURCE)).astype("int64"))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW, min_length=NEW + 1, num_beams=1, do_sample=False)
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "tokens": out[0].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=ROOT / ".cache" / "bench" / "pegasus-reduced")
    args = parser.parse_args()
    if not (args.folder / "model.safetensors").exists():
        import torch

        from polyformers import PegasusConfig, PegasusForConditionalGeneration

        torch.manual_seed(0)
        PegasusForConditionalGeneration(PegasusConfig(**CONFIG)).save_pretrained(args.folder)
    ours = _flax(Path(sys.executable), "polyformers", args.folder, args.repeat)
    reference = _flax(LEGACY, "reference", args.folder, args.repeat)
    torch_run = _torch(args.folder, args.repeat)
    print(f"reduced Pegasus, {SOURCE}-token source, {NEW} new greedy tokens, median of {args.repeat}")
    print(f"polyformers Flax (jit)   {ours['median']:.3f} s   compile {ours['compile']:.1f} s")
    print(f"reference 4.37 Flax (jit) {reference['median']:.3f} s   compile {reference['compile']:.1f} s")
    print(f"polyformers PyTorch       {torch_run['median']:.3f} s")
    print(f"speed-up vs reference Flax: {reference['median'] / ours['median']:.2f}x   "
          f"vs polyformers PyTorch: {torch_run['median'] / ours['median']:.2f}x")
    same = ours["tokens"] == reference["tokens"] and ours["tokens"][: len(torch_run["tokens"])] == torch_run["tokens"]
    print(f"same tokens on all three: {same}")


if __name__ == "__main__":
    main()

"""Peak memory of loading a ~2 GB checkpoint: polyformers vs the reference, same file, same machine.

Each load runs in a fresh process. The figure is (peak RSS during load - RSS after imports) divided by
the checkpoint's size, so framework import costs do not count for either side; 1.0 means the load held
exactly one copy of the weights. Every weight is read once after loading, so a loader that maps the
file lazily is charged for the pages a forward pass would touch; then one forward pass runs, so that what
a first forward builds (polyformers fuses the attention projections) is charged as well. The median of ``--repeat`` runs per library is printed, and the ratio.

    .venv/bin/python bench/load_memory.py [--repeat 3] [--folder .cache/bench/electra-2g]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from proc_memory import status  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]

# ~500M parameters, ~2.0 GB in float32: big enough that the weights dominate every other allocation.
CONFIG = dict(
    vocab_size=30522, embedding_size=1536, hidden_size=1536, num_hidden_layers=16, num_attention_heads=16,
    intermediate_size=6144, max_position_embeddings=512,
)


def child(library: str, folder: str) -> None:
    import torch

    if library == "polyformers":
        from polyformers import ElectraModel
    else:
        from transformers import ElectraModel
    torch.set_num_threads(1)
    baseline = status("VmRSS")
    model = ElectraModel.from_pretrained(folder, dtype=torch.float32)
    # Loaders may map the file and read lazily; touching every weight makes both sides pay for a model
    # that is actually in memory, which is what a forward pass needs.
    with torch.no_grad():
        touched = sum(float(p.double().sum()) if p.numel() < 2**22 else float(p.sum()) for p in model.parameters())
        # And a forward pass, so that whatever the first forward builds (fused projections) is charged too.
        model(torch.arange(16).view(1, 16))
    peak = status("VmHWM")
    after = status("VmRSS")
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"baseline": baseline, "peak": peak, "after": after, "params": params, "touched": touched}))


def make_checkpoint(folder: Path) -> None:
    import torch

    from polyformers import ElectraConfig, ElectraModel

    print(f"building the benchmark checkpoint in {folder} (once)", flush=True)
    torch.manual_seed(0)
    model = ElectraModel(ElectraConfig(**CONFIG))
    model.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=ROOT / ".cache" / "bench" / "electra-2g")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=["polyformers", "reference"])
    args = parser.parse_args()
    if args.child:
        return child(args.child, str(args.folder))
    if not (args.folder / "model.safetensors").exists():
        make_checkpoint(args.folder)
    size = sum(p.stat().st_size for p in args.folder.glob("*.safetensors"))
    print(f"checkpoint: {size / 1e9:.2f} GB ({args.folder})")
    results = {}
    for library in ("polyformers", "reference"):
        ratios = []
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, __file__, "--child", library, "--folder", str(args.folder)],
                capture_output=True, text=True, check=True, env=dict(os.environ, TRANSFORMERS_VERBOSITY="error"),
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            ratios.append((figures["peak"] - figures["baseline"]) / size)
        results[library] = statistics.median(ratios)
        runs = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"{library:12s} peak RSS during load / checkpoint bytes: median {results[library]:.3f}  (runs: {runs})")
    print(f"ratio polyformers/reference: {results['polyformers'] / results['reference']:.3f}")


if __name__ == "__main__":
    main()

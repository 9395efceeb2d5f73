"""The search's first run: embedding all of Macbeth with all-mpnet-base-v2, each precision against float32.

The passages are the search's (``polyformers.search.split_passages``, 1086 of them); each runner embeds all of
them (mean pooling over the real tokens), in batches of ``search.FAST_BATCH_SIZE`` sorted by length:
  reference fp32        transformers' MPNetModel (eager attention, its only one), padded batches: the peer;
  polyformers fp32      padding skipped (``polyformers.pt.unpad.skip_padding``);
  polyformers bf16      and bfloat16 weights (``quantize(model, bits=16)``), the search without int8;
  polyformers int8+bf16 what the search runs (``polyformers.pt.mixed.int8_with_bf16``);
  polyformers int8      int8 in every linear layer (``quantize_int8``, outlier columns), not used.
The runners take turns, in an order that rotates every round; medians of ``--repeat`` rounds. Each runner's
embeddings are compared with polyformers fp32's (cosine: worst, mean, how many passages under 0.995).
The bound: the linear layers' work over the real tokens (2 x tokens x weights; attention and the rest left
out) at the machine's measured GEMM rate in each precision (oneDNN, 2048-cubed and the encoder's shapes, the
best of several runs; int8 through torch._int_mm), printed as the fraction each runner reaches.

    .venv/bin/python bench/search_embedding.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from encoder_throughput import product_rate  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".cache" / "assets"


def gemm_rates(runs: int = 3) -> dict[str, float]:
    """FLOP/s of the best products this machine runs in float32, bfloat16 and int8 (2 threads)."""
    shapes = [(2048, 2048, 2048), (512, 768, 3072), (512, 3072, 768)]
    best = {"fp32": 0.0, "bf16": 0.0, "int8": 0.0}
    with torch.inference_mode():
        for rows, inner, cols in shapes:
            x, w = torch.randn(rows, inner), torch.randn(cols, inner)
            xi, wi = torch.randint(-100, 100, (rows, inner), dtype=torch.int8), \
                torch.randint(-100, 100, (inner, cols), dtype=torch.int8)
            xb, wb = x.bfloat16(), w.bfloat16()
            products = {
                "fp32": lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
                "bf16": lambda: torch.ops.mkldnn._linear_pointwise(xb, wb, None, "none", [], ""),
                "int8": lambda: torch._int_mm(xi, wi),
            }
            for name, product in products.items():
                best[name] = max(best[name], product_rate(product, rows, inner, cols, runs, work=4e9))
    return best


def passages() -> list[str]:
    from polyformers import search

    text = (ASSETS / "corpora" / "macbeth.txt").read_text("utf-8")
    return [t for _, t in search.split_passages(text)]


def polyformers_runners() -> dict:
    """name -> a function embedding a list of texts, each built as the search builds its pipeline."""
    from polyformers import pipeline, search
    from polyformers.pt.mixed import int8_with_bf16
    from polyformers.pt.quantize import OUTLIER_THRESHOLD, quantize, quantize_int8
    from polyformers.pt.unpad import skip_padding

    base = pipeline("sentence-similarity", model=str(ASSETS / "mpnet"), batch_size=search.FAST_BATCH_SIZE)
    base.progress = False
    skip_padding(base.model)
    builds = {
        "polyformers fp32": lambda m: m,
        "polyformers bf16": lambda m: quantize(m, bits=16),
        "polyformers int8+bf16": lambda m: int8_with_bf16(m, search.SHORT_TOKENS),
        "polyformers int8": lambda m: quantize_int8(m, outlier_threshold=OUTLIER_THRESHOLD),
    }
    runners = {}
    for name, build in builds.items():
        pipe = copy.copy(base)
        pipe.model = build(copy.deepcopy(base.model))
        runners[name] = pipe.encode
    return runners


def reference_runner():
    """transformers' MPNetModel in float32 with mean pooling, length-sorted padded batches."""
    import transformers

    from polyformers import search

    tok = transformers.AutoTokenizer.from_pretrained(str(ASSETS / "mpnet"))
    model = transformers.AutoModel.from_pretrained(str(ASSETS / "mpnet")).eval()
    size = search.FAST_BATCH_SIZE

    def encode(texts):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), size):
                rows = order[start:start + size]
                batch = tok([texts[i] for i in rows], padding=True, truncation=True, max_length=384,
                            return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                weights = batch["attention_mask"][..., None].float()
                out[rows] = ((hidden * weights).sum(1) / weights.sum(1)).numpy()
        return out

    return encode


def linear_flops(texts: list[str]) -> tuple[float, int]:
    """2 x (real tokens) x (weights of the linear layers) of all-mpnet-base-v2 over ``texts``, and the tokens."""
    from polyformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ASSETS / "mpnet"))
    tokens = sum(len(ids) for ids in tok(texts, truncation=True, max_length=384)["input_ids"])
    hidden, inner, layers = 768, 3072, 12
    return 2.0 * tokens * layers * (4 * hidden * hidden + 2 * hidden * inner), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{' '.join(f'{x:.2f}' for x in before)} on {os.cpu_count()} cores", flush=True)
    rates = gemm_rates()
    print("GEMM rates (the bound): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()), flush=True)
    texts = passages()
    flops, tokens = linear_flops(texts)
    print(f"Macbeth: {len(texts)} passages, {tokens} tokens, {flops / 1e12:.2f} TFLOP in the linear layers",
          flush=True)
    runners = {"reference fp32": reference_runner(), **polyformers_runners()}
    names = list(runners)
    times = {name: [] for name in names}
    vectors = {}
    for r in range(args.repeat):
        turn = r % len(names)
        for name in names[turn:] + names[:turn]:
            start = time.perf_counter()
            vectors[name] = np.asarray(runners[name](texts))
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.1f} s" for n in names), flush=True)
    ref = vectors["polyformers fp32"]
    bound_of = {"reference fp32": "fp32", "polyformers fp32": "fp32", "polyformers bf16": "bf16",
                "polyformers int8+bf16": "bf16", "polyformers int8": "int8"}
    peer = statistics.median(times["reference fp32"])
    print(f"\n{'runner':24s} {'median s':>8s} {'x peer':>7s} {'GFLOP/s':>8s} {'of bound':>9s}   "
          "cosine to polyformers fp32 (worst, mean, under 0.995)")
    for name in names:
        seconds = statistics.median(times[name])
        v = vectors[name]
        cos = (ref * v).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(v, axis=1)
        rate = rates[bound_of[name]]
        print(f"{name:24s} {seconds:8.1f} {peer / seconds:6.2f}x {flops / seconds / 1e9:8.0f} "
              f"{flops / seconds / rate:8.0%} {bound_of[name]:>5s}   {cos.min():.4f} {cos.mean():.5f} "
              f"{int((cos < 0.995).sum()):3d}  (worst: {texts[int(cos.argmin())][:30]!r})")
    after = os.getloadavg()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in after)}")
    # This run alone brings the load to about its thread count; more than that, or a busy start, means
    # other work shared the cores.
    if before[0] > 1.0 or after[0] > args.threads + 0.5:
        print("the load average says other work shared the cores: these figures are low")
    print("(int8+bf16's bound is bf16's: its bfloat16 layers and short passages run at that rate, its int8 ones "
          "faster)")


if __name__ == "__main__":
    main()

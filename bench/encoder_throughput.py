"""Encoder inference throughput: polyformers vs the reference, RoBERTa-, MPNet- and ELECTRA-base, CPU fp32.

Workloads (2 threads, float32, no gradients):
  mixed   batches of 8 real texts (the first entries of corpora/fortunes.txt, one entry = one text),
          tokenised by polyformers' tokenizers, truncated to 128 tokens, padded to each batch's longest;
  1x128   one text of exactly 128 tokens, no padding.
Runners, timed in the same process, taking turns batch by batch in a rotating order; median of the repeats:
  polyformers       fp32, padding skipped (``polyformers.pt.unpad.skip_padding``);
  reference sdpa / reference eager   transformers with each attention implementation; the faster one is
                    "the reference" in the ratios;
  polyformers int8  a copy of it through ``polyformers.pt.quantize.quantize_int8`` with
                    ``outlier_threshold=OUTLIER_THRESHOLD``.
The bound: the machine's fp32 GEMM rate, measured first (the best of several runs of square and
encoder-shaped products, through torch's matmul and oneDNN's, ``--threads`` threads); the 1x128 forward's
floating-point work (its linear layers and attention products, counted from the config) over its median time
is printed as a fraction of that rate.
Random base-size weights are built once with polyformers and saved to .cache/bench/<family>-base; both
libraries load that folder. Finally the int8 path is checked on the real all-mpnet-base-v2 checkpoint:
cosine similarity of its mean-pooled embeddings to the fp32 ones.

    .venv/bin/python bench/encoder_throughput.py [--families roberta mpnet electra] [--repeat 7] [--batches 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".cache" / "assets"
CACHE = ROOT / ".cache" / "bench"
MAX_LENGTH = 128

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
CONFIGS = {
    "roberta": dict(BASE, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "mpnet": dict(BASE, vocab_size=30527, max_position_embeddings=514, layer_norm_eps=1e-5),
    "electra": dict(BASE, vocab_size=30522, embedding_size=768, max_position_embeddings=512),
}
CLASSES = {"roberta": "Roberta", "mpnet": "MPNet", "electra": "Electra"}


def texts(count: int) -> list[str]:
    raw = (ASSETS / "corpora" / "fortunes.txt").read_text(encoding="utf-8")
    entries = [" ".join(entry.split()) for entry in raw.split("\n%\n")]
    return [e for e in entries if e][:count]


def roberta_vocab(folder: Path) -> None:
    """RoBERTa's vocabulary is GPT-2's byte-level BPE with fairseq's specials first; the real GPT-2 files
    with the specials moved to the front give the real RoBERTa token counts."""
    gpt2 = json.loads((ASSETS / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for token, index in sorted(gpt2.items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_bytes((ASSETS / "gpt2" / "merges.txt").read_bytes())


def tokenizer(family: str, folder: Path):
    import polyformers

    if family == "roberta":
        return polyformers.RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"),
                                                merges_file=str(folder / "merges.txt"))
    if family == "mpnet":
        return polyformers.MPNetTokenizerFast.from_pretrained(str(ASSETS / "mpnet"))
    return polyformers.ElectraTokenizerFast(vocab_file=str(ASSETS / "minilm" / "vocab.txt"))


def checkpoint(family: str) -> Path:
    import polyformers

    folder = CACHE / f"{family}-base"
    if not (folder / "model.safetensors").exists():
        print(f"building random {family}-base weights in {folder} (once)", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        config = getattr(polyformers, f"{CLASSES[family]}Config")(**CONFIGS[family])
        model = getattr(polyformers, f"{CLASSES[family]}Model")(config)
        with torch.no_grad():  # non-zero biases and norms, so that no term is trivially skipped
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        model.save_pretrained(folder)
    if family == "roberta" and not (folder / "vocab.json").exists():
        roberta_vocab(folder)
    return folder


def workloads(tok, batches: int) -> dict[str, list[dict]]:
    mixed = [tok(texts(8 * batches)[i:i + 8], padding=True, truncation=True, max_length=MAX_LENGTH,
                 return_tensors="pt") for i in range(0, 8 * batches, 8)]
    single = tok([" ".join(texts(200))], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    assert single["input_ids"].shape == (1, MAX_LENGTH)
    return {"mixed": [dict(b) for b in mixed], "1x128": [dict(single)]}


def product_rate(product, rows: int, inner: int, cols: int, runs: int, work: float = 2e9) -> float:
    """The best FLOP/s of ``product()``, a (rows x inner) by (inner x cols) product, over ``runs`` timings of
    about ``work`` FLOP each, after one untimed call."""
    product()
    flops = 2 * rows * inner * cols
    repeats = max(1, int(work / flops))
    best = 0.0
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeats):
            product()
        best = max(best, flops * repeats / (time.perf_counter() - start))
    return best


def gemm_rate(runs: int = 5) -> tuple[float, str]:
    """The best fp32 multiply-add rate (FLOP/s) this machine reaches with the current thread count: square
    products of 1024 and 2048 and the encoder's own shapes (128 x 768 x 3072 both ways), through torch's
    matmul and through oneDNN's linear, best of ``runs`` each."""
    onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    best, how = 0.0, ""
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (128, 768, 3072), (128, 3072, 768)]
    with torch.inference_mode():
        for rows, inner, cols in shapes:
            x, w = torch.randn(rows, inner), torch.randn(cols, inner)
            kernels = {"torch.matmul": lambda: torch.matmul(x, w.t())}
            if onednn:
                kernels["oneDNN linear"] = lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            for name, kernel in kernels.items():
                rate = product_rate(kernel, rows, inner, cols, runs)
                if rate > best:
                    best, how = rate, f"{name}, {rows}x{inner}x{cols}"
    return best, how


def forward_flops(family: str, tokens: int) -> float:
    """Multiply-adds x 2 of one forward over ``tokens`` tokens of one sequence: the linear layers (attention
    projections, output, feed-forward) and the two attention products; embeddings and norms are left out."""
    c = CONFIGS[family]
    hidden, inner, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    per_layer = 2 * tokens * hidden * (4 * hidden + 2 * inner) + 2 * 2 * tokens * tokens * hidden
    return layers * per_layer


def interleaved(runners: dict, inputs: list[dict], repeat: int) -> dict[str, list[float]]:
    """Seconds per pass over ``inputs`` for each runner, ``repeat`` times. The runners take turns batch by
    batch, in an order that rotates, so that a change in the machine's load hits all of them alike."""
    names = list(runners)
    for batch in inputs:  # warm-up
        for name in names:
            runners[name](**batch)
    times = {name: [] for name in names}
    for r in range(repeat):
        spent = dict.fromkeys(names, 0.0)
        for b, batch in enumerate(inputs):
            turn = (r + b) % len(names)
            for name in names[turn:] + names[:turn]:
                start = time.perf_counter()
                runners[name](**batch)
                spent[name] += time.perf_counter() - start
        for name in names:
            times[name].append(spent[name])
    return times


def bench_family(family: str, repeat: int, batches: int, bound: float) -> dict:
    import polyformers
    import transformers
    from polyformers.pt.quantize import OUTLIER_THRESHOLD, quantize_int8
    from polyformers.pt.unpad import skip_padding

    folder = checkpoint(family)
    tok = tokenizer(family, folder)
    loads = workloads(tok, batches)
    ours = getattr(polyformers, f"{CLASSES[family]}Model").from_pretrained(folder, dtype=torch.float32).eval()
    skip_padding(ours)
    int8 = quantize_int8(copy.deepcopy(ours), outlier_threshold=OUTLIER_THRESHOLD)
    runners = {"polyformers": ours, "polyformers int8": int8}
    reference_class = getattr(transformers, f"{CLASSES[family]}Model")
    for implementation in ("sdpa", "eager"):
        try:
            runners[f"reference {implementation}"] = reference_class.from_pretrained(
                folder, dtype=torch.float32, attn_implementation=implementation
            ).eval()
        except ValueError as error:  # MPNet has no SDPA attention in the reference
            print(f"   reference {implementation}: not available ({str(error).split('.')[0]})")
    references = [name for name in runners if name.startswith("reference")]

    real = sum(int(b["attention_mask"].sum()) for b in loads["mixed"])
    padded = sum(b["attention_mask"].numel() for b in loads["mixed"])
    print(f"\n== {family}-base: mixed = {batches} batches of 8, {real} real tokens padded to {padded} "
          f"({padded / real:.2f}x); 1x128 = one row of 128 tokens", flush=True)
    results = {}
    with torch.inference_mode():
        for batch in loads["mixed"]:
            keep = batch["attention_mask"].bool()
            a = runners["polyformers"](**batch).last_hidden_state[keep]
            b = runners[references[0]](**batch).last_hidden_state[keep]
            c = runners["polyformers int8"](**batch).last_hidden_state[keep]
            cosine = torch.nn.functional.cosine_similarity(a, c, dim=-1).min()
            print(f"   check: real tokens max |polyformers - reference| = {float((a - b).abs().max()):.2e}, "
                  f"int8 vs fp32 min token cosine = {float(cosine):.4f}")
        for name, inputs in loads.items():
            times = interleaved(runners, inputs, repeat)
            medians = {runner: statistics.median(t) for runner, t in times.items()}
            fastest = min(references, key=medians.get)
            sequences = sum(b["input_ids"].shape[0] for b in inputs)
            print(f"-- {family} {name}: median of {repeat} (seconds per pass over {sequences} sequences)")
            for runner, median in medians.items():
                spread = f"{min(times[runner]):.3f}..{max(times[runner]):.3f}"
                print(f"   {runner:18s} {median:8.3f} s  {sequences / median:7.2f} seq/s  (range {spread})")
            for runner in ("polyformers", "polyformers int8"):
                ratio = medians[fastest] / medians[runner]
                print(f"   {runner} vs {fastest} (fp32): {ratio:.2f}x")
                results[(family, name, runner)] = ratio
            if name == "1x128":
                flops = forward_flops(family, MAX_LENGTH)
                for runner in ["polyformers", *references]:
                    rate = flops / medians[runner]
                    print(f"   {runner:18s} {rate / 1e9:6.1f} GFLOP/s = {rate / bound:4.0%} of the fp32 GEMM bound "
                          f"({flops / 1e9:.1f} GFLOP a forward)")
                    results[(family, name, f"{runner} / GEMM bound")] = rate / bound
    return results


def int8_cosine(count: int) -> None:
    """Mean-pooled all-mpnet-base-v2 embeddings (the sentence-transformers recipe without its final
    normalisation, which does not change a cosine): int8 vs fp32, per text."""
    from polyformers import MPNetModel, MPNetTokenizerFast
    from polyformers.pt.quantize import OUTLIER_THRESHOLD, quantize_int8
    from polyformers.pt.unpad import skip_padding

    folder = ASSETS / "mpnet"
    tok = MPNetTokenizerFast.from_pretrained(str(folder))
    fp32 = skip_padding(MPNetModel.from_pretrained(folder, dtype=torch.float32).eval())
    int8 = quantize_int8(copy.deepcopy(fp32), outlier_threshold=OUTLIER_THRESHOLD)
    sentences = texts(count)
    cosines = []
    with torch.inference_mode():
        for i in range(0, count, 8):
            batch = tok(sentences[i:i + 8], padding=True, truncation=True, max_length=MAX_LENGTH,
                        return_tensors="pt")
            weights = batch["attention_mask"][..., None].float()
            pooled = [(m(**batch).last_hidden_state * weights).sum(1) / weights.sum(1) for m in (fp32, int8)]
            cosines += torch.nn.functional.cosine_similarity(*pooled, dim=-1).tolist()
    print(f"\n== int8 vs fp32 on the real all-mpnet-base-v2, {len(cosines)} texts: mean-pooled embedding cosine "
          f"min {min(cosines):.4f}, mean {statistics.mean(cosines):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batches", type=int, default=4, help="batches of 8 texts in the mixed workload")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cosine-texts", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    bound, how = gemm_rate()
    print(f"fp32 GEMM bound: {bound / 1e9:.1f} GFLOP/s ({how}, best of 5)", flush=True)
    results = {}
    for family in args.families:
        results.update(bench_family(family, args.repeat, args.batches, bound))
    if args.cosine_texts:
        int8_cosine(args.cosine_texts)
    after = os.getloadavg()[0]
    print(f"\n== summary (load average {load:.1f} before, {after:.1f} now): speed-up over the reference's faster "
          "attention implementation (fp32), and fraction of the GEMM bound")
    for (family, name, runner), ratio in results.items():
        value = f"{ratio:5.0%}" if runner.endswith("GEMM bound") else f"{ratio:5.2f}x"
        print(f"   {family:8s} {name:6s} {runner:30s} {value}")
    if max(load, after) > args.threads:
        print(f"   the load average exceeded the {args.threads} threads: other work shared the cores, so these "
              "figures are low")


if __name__ == "__main__":
    main()

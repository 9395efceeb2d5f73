"""Decoding speed of GPT-J and MPT: polyformers' ``generate`` against the reference's, in one process.

Reduced models (GPT-J: n_embd 1024, 12 layers, 16 heads, rotary_dim 64, vocab 50400; MPT: d_model 1024,
12 layers, 16 heads) with random weights, built once into ``.cache/bench/``; float32, batch 1, a 32-token
prompt, 128 new greedy tokens. The machine is shared, so every figure is the median of ``--repeat``
rounds in which the contenders run one after another, in alternating order. Printed:

- decode tokens/s (new tokens / wall time of ``generate``) of polyformers and the reference, and the ratio;
- prefill of a 512-token prompt (prompt tokens / time of ``generate`` with one new token);
- batch 8 decode throughput (new tokens over the batch / time) against batch 1;
- the memory bandwidth of this run (a float32 ``torch.mv`` on a matrix far bigger than the caches) and the
  fraction of it a decoded token reaches (weight bytes read per token / time per token);
- ``quantize_int8``: tokens/s, and whether its greedy tokens equal float32's on a prompt written with the
  real GPT-2 vocabulary;
- CTranslate2 (float32 and int8, converted from the same checkpoint) when it is installed.

    .venv/bin/python bench/decode_speed.py [--repeat 5] [--family gptj mpt] [--skip ...]

``--skip fp32 prefill batch ct2 kernels`` leaves the int8 decode against the reference (and the int8
token check).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
GPT2_VOCAB = ROOT / ".cache" / "assets" / "gpt2"
THREADS = 2
PROMPT, NEW, PREFILL, BATCH = 32, 128, 512, 8
# Prompts for the int8-vs-float32 check, tokenized with the real GPT-2 vocabulary. Random weights give
# nearly flat next-token distributions, so near-ties decide where int8 first differs: every prompt is
# reported, with float32's margin between its two best tokens where they part.
REAL_PROMPTS = [
    "The history of the city begins with a small settlement on the river, where merchants",
    "Once upon a time",
    "import numpy as np\n",
    "In 1905, Albert Einstein published four papers",
    "She opened the door and saw",
]

CONFIGS = {
    "gptj": dict(vocab_size=50400, n_positions=2048, n_embd=1024, n_layer=12, n_head=16, rotary_dim=64),
    "mpt": dict(d_model=1024, n_heads=16, n_layers=12, max_seq_len=2048),
}


def build(family: str) -> Path:
    """The reference model with random weights, saved once with a GPT-2 tokenizer (CTranslate2's
    converter loads one); no end-of-sequence token, so every run decodes exactly ``NEW`` tokens."""
    import torch
    import transformers

    folder = CACHE / f"{family}-reduced"
    if (folder / "model.safetensors").exists():
        return folder
    print(f"building {folder} (once)", flush=True)
    config_class, model_class = {
        "gptj": (transformers.GPTJConfig, transformers.GPTJForCausalLM),
        "mpt": (transformers.MptConfig, transformers.MptForCausalLM),
    }[family]
    # MPT's configs default to use_cache=False; decoding is measured with the cache, for both libraries.
    config = config_class(**CONFIGS[family], bos_token_id=None, eos_token_id=None, pad_token_id=None, use_cache=True)
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(folder)
    tokenizer = transformers.GPT2TokenizerFast(
        vocab_file=str(GPT2_VOCAB / "vocab.json"), merges_file=str(GPT2_VOCAB / "merges.txt")
    )
    tokenizer.save_pretrained(folder)
    return folder


def median_time(fn, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth() -> tuple[float, float]:
    """Bytes per second of a float32 matrix-vector product over 256 MB (8x the last-level cache): by
    ``torch.mv`` (torch's BLAS), and by the ``layers.linear`` polyformers decodes with."""
    import torch

    from polyformers.pt.layers import linear

    matrix = torch.randn(8192, 8192)
    vector = torch.randn(8192)
    rates = []
    for product in (lambda: torch.mv(matrix, vector), lambda: linear(vector[None], matrix)):
        with torch.inference_mode():
            product()
            rates.append(matrix.numel() * matrix.element_size() / median_time(product, repeat=7))
    return rates[0], rates[1]


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a decoded token reads: every matrix but the input embedding (one row of it)."""
    embedding = model.get_input_embeddings().weight
    total = 0
    seen = set()
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.data_ptr() in seen or tensor.dim() < 2:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    head = model.get_output_embeddings().weight
    if head.data_ptr() != embedding.data_ptr():
        total -= embedding.numel() * embedding.element_size()
    return total


class Contender:
    """One library's model, with what the benchmark asks of it."""

    def __init__(self, name: str, generate):
        self.name = name
        self.generate = generate  # (input_ids tensor, new tokens) -> output ids


def torch_contender(name: str, model) -> Contender:
    import torch

    def generate(ids, new):
        with torch.inference_mode():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                  do_sample=False)

    return Contender(name, generate)


def ct2_contender(name: str, generator) -> Contender:
    import torch

    def generate(ids, new):
        prompts = [[str(t) for t in row] for row in ids.tolist()]
        out = generator.generate_batch(
            prompts, max_length=new, min_length=new, sampling_topk=1, beam_size=1,
            include_prompt_in_result=False, return_scores=False,
        )
        return torch.tensor([r.sequences_ids[0] for r in out])

    return Contender(name, generate)


def ct2_generators(family: str, folder: Path):
    """CTranslate2 generators (float32, int8) converted from the reference checkpoint, or {} when the
    package is missing."""
    try:
        import ctranslate2
        from ctranslate2.converters import transformers as ct2_transformers
    except ImportError:
        return {}
    # CTranslate2 registers MPT under the original code's config name; the reference's is MptConfig.
    ct2_transformers._MODEL_LOADERS.setdefault("MptConfig", ct2_transformers._MODEL_LOADERS["MPTConfig"])
    # Its vocabulary is the token ids written out, so that it is fed the very ids the others are; "0"
    # as the end token is harmless, as every run asks for exactly its number of tokens.
    for name in ("GPTJConfig", "MptConfig"):
        loader = ct2_transformers._MODEL_LOADERS[name]
        loader.get_vocabulary = lambda model, tokenizer: [str(i) for i in range(model.config.vocab_size)]
        loader.set_config = lambda config, model, tokenizer: setattr(config, "bos_token", "0") or setattr(
            config, "eos_token", "0") or setattr(config, "unk_token", "0")
    generators = {}
    for quantization in ("float32", "int8"):
        out = CACHE / f"{family}-reduced-ct2-{quantization}"
        if not (out / "model.bin").exists():
            print(f"converting {folder.name} for CTranslate2 ({quantization}, once)", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            ct2_transformers.TransformersConverter(str(folder)).convert(str(out), quantization=quantization)
        generators[quantization] = ctranslate2.Generator(str(out), device="cpu", compute_type=quantization,
                                                         intra_threads=THREADS, inter_threads=1)
    return generators


def rounds(contenders, fn, repeat: int, after_round=None) -> dict[str, float]:
    """Median over ``repeat`` rounds of ``fn(contender)`` seconds, the order alternating each round;
    ``after_round()``, untimed, after each round."""
    times = {c.name: [] for c in contenders}
    for r in range(repeat):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            start = time.perf_counter()
            fn(c)
            times[c.name].append(time.perf_counter() - start)
        if after_round is not None:
            after_round()
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_family(family: str, args, bw_samples: list) -> None:
    import torch
    import transformers

    import polyformers
    from polyformers.pt.quantize import quantize_int8

    folder = build(family)
    ref_class = {"gptj": transformers.GPTJForCausalLM, "mpt": transformers.MptForCausalLM}[family]
    pf_class = {"gptj": polyformers.GPTJForCausalLM, "mpt": polyformers.MptForCausalLM}[family]
    reference = ref_class.from_pretrained(folder, dtype=torch.float32).eval()
    ours = pf_class.from_pretrained(folder, dtype=torch.float32).eval()
    contenders = [torch_contender("reference", reference)]
    if "fp32" not in args.skip:
        contenders.insert(0, torch_contender("polyformers", ours))
    if "int8" not in args.skip:
        ours_int8 = quantize_int8(pf_class.from_pretrained(folder, dtype=torch.float32).eval())
        contenders.append(torch_contender("polyformers-int8", ours_int8))
    if "ct2" not in args.skip:
        for quantization, generator in ct2_generators(family, folder).items():
            contenders.append(ct2_contender(f"ctranslate2-{quantization}", generator))
    names = [c.name for c in contenders]
    by_name = dict(zip(names, contenders))

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50257, (1, PROMPT), generator=generator)
    long_prompt = torch.randint(0, 50257, (1, PREFILL), generator=generator)
    batch_prompt = torch.randint(0, 50257, (BATCH, PROMPT), generator=generator)

    for c in contenders:  # warm-up: allocators, kernels' first-call costs
        c.generate(prompt, 4)

    print(f"\n== {family}: {type(ours).__name__}, {sum(p.numel() for p in ours.parameters()) / 1e6:.0f}M "
          f"parameters, {THREADS} threads, medians of {args.repeat} rounds", flush=True)
    per_token_bytes = weight_bytes_per_token(ours)

    # The bandwidth is sampled between rounds, outside the timed decoding: its 256 MB matrix takes
    # longer to fill than an int8 model takes to decode.
    decode_s = rounds(contenders, lambda c: c.generate(prompt, NEW), args.repeat,
                      after_round=lambda: bw_samples.append(bandwidth()))
    bw = statistics.median(mv for mv, _ in bw_samples)
    bw_linear = statistics.median(ours for _, ours in bw_samples)
    ref_tps = NEW / decode_s["reference"]
    print(f"decode, batch 1, {PROMPT}-token prompt, {NEW} new tokens (tokens/s):")
    for name in names:
        tps = NEW / decode_s[name]
        print(f"  {name:20s} {tps:7.2f}   x{tps / ref_tps:4.2f} of the reference")
    if "polyformers" in decode_s:
        pf_tps = NEW / decode_s["polyformers"]
        print(f"bandwidth (torch.mv, float32, 256 MB): {bw / 1e9:.1f} GB/s -> bound {bw / per_token_bytes:.1f} "
              f"tokens/s for {per_token_bytes / 1e6:.0f} MB of weights per token; polyformers reaches "
              f"{per_token_bytes * pf_tps / bw:.0%} of it")
        print(f"  (the same product through polyformers' oneDNN linear: {bw_linear / 1e9:.1f} GB/s -> "
              f"{per_token_bytes * pf_tps / bw_linear:.0%} of that)")

    if "prefill" not in args.skip:
        prefill_s = rounds(contenders, lambda c: c.generate(long_prompt, 1), args.repeat)
        print(f"prefill of a {PREFILL}-token prompt (prompt tokens/s):")
        for name, seconds in prefill_s.items():
            print(f"  {name:20s} {PREFILL / seconds:7.1f}   x{prefill_s['reference'] / seconds:4.2f} of the reference")

    if "batch" not in args.skip:
        batch_s = rounds([by_name[n] for n in ("polyformers", "polyformers-int8", "reference") if n in by_name
                          and (n != "reference" or "batch-reference" in args.extra)],
                         lambda c: c.generate(batch_prompt, NEW), args.repeat)
        print(f"batch {BATCH} decode throughput (new tokens over the batch / s):")
        for name, seconds in batch_s.items():
            single = NEW / decode_s[name]
            print(f"  {name:20s} {BATCH * NEW / seconds:7.1f}   x{BATCH * NEW / seconds / single:4.2f} of its batch 1")

    if "int8" not in args.skip:
        tokenizer = polyformers.GPT2TokenizerFast(
            vocab_file=str(GPT2_VOCAB / "vocab.json"), merges_file=str(GPT2_VOCAB / "merges.txt")
        )
        print("int8 greedy tokens equal to float32's (of 16 new; float32's top-2 margin where they part):")
        for text in REAL_PROMPTS:
            real = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.inference_mode():
                fp32 = ours.generate(real, max_new_tokens=16, do_sample=False, return_dict_in_generate=True,
                                     output_scores=True)
                int8 = ours_int8.generate(real, max_new_tokens=16, do_sample=False)
            new_fp32, new_int8 = fp32.sequences[0, real.shape[1]:], int8[0, real.shape[1]:]
            same = int((new_fp32 == new_int8).cumprod(0).sum())
            where = ""
            if same < 16:
                top2 = fp32.scores[same][0].topk(2).values
                where = f" (margin {float(top2[0] - top2[1]):.3f})"
            print(f"  {same:2d}/16{where}  {text!r}")
    del contenders, by_name, reference, ours
    if "int8" not in args.skip:
        del ours_int8
    gc.collect()


def int8_kernels(repeat: int) -> None:
    """The candidates for an int8 matrix times one float32 token, on the reduced GPT-J's matrices (four
    layers' worth, far bigger than the caches): milliseconds for one decoded token's layer weights."""
    import torch
    import torch.nn.functional as F

    from polyformers.pt.quantize import Int8Linear

    shapes = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)] * 4
    weights = [torch.randn(out, inp) * 0.02 for out, inp in shapes]
    int8 = [_quantized(w) for w in weights]
    layers = [Int8Linear(q, s) for q, s in int8]
    x = {inp: torch.randn(1, 1, inp) for _, inp in shapes}  # (batch, token, features), as in decoding
    candidates = {
        "float32 F.linear (reference point)": lambda: [F.linear(x[w.shape[1]], w) for w in weights],
        "fbgemm dynamic int8 (Int8Linear)": lambda: [layer(x[layer.in_features]) for layer in layers],
        "torch._weight_int8pack_mm, float32 in": lambda: [
            torch.ops.aten._weight_int8pack_mm(x[q.shape[1]][0], q, s) for q, s in int8],
        "dequantise per layer, then F.linear": lambda: [
            F.linear(x[q.shape[1]], q.float() * s[:, None]) for q, s in int8],
    }
    times = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            fn()
            for _ in range(5):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 3)  # 4 layers timed, 12 in the model
    print("int8 kernels, one token through the reduced GPT-J's 12 layers (ms):")
    for name, ts in times.items():
        print(f"  {name:40s} {statistics.median(ts) * 1e3:7.2f}")


def _quantized(weight):
    import torch

    scales = weight.abs().amax(dim=1) / 127
    return torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--family", nargs="*", default=["gptj", "mpt"], choices=sorted(CONFIGS))
    parser.add_argument("--skip", nargs="*", default=[], choices=["fp32", "prefill", "batch", "int8", "ct2", "kernels"],
                        help="fp32: polyformers' float32 decode (the reference stays, as the base of the ratios)")
    parser.add_argument("--extra", nargs="*", default=[], choices=["batch-reference"],
                        help="also time the reference at batch 8 (slow)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    if "kernels" not in args.skip:
        int8_kernels(args.repeat)
    bw_samples: list[tuple[float, float]] = []
    for family in args.family:
        bench_family(family, args, bw_samples)


if __name__ == "__main__":
    main()

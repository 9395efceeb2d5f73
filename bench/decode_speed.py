"""Decoding speed of GPT-J and MPT: polyformers' ``generate`` against the reference's, in one process.

Reduced models (GPT-J: n_embd 1024, 12 layers, 16 heads, rotary_dim 64, vocab 50400; MPT: d_model 1024,
12 layers, 16 heads) with random weights, built once into ``.cache/bench/``; float32, batch 1, a 32-token
prompt, 128 new greedy tokens. ``--family mpt-wide`` (not run by default) is an MPT of d_model 2048 (707M
parameters): its int8 weights no longer fit in a large last-level cache, so they come from memory. The
machine is shared, so every figure is the median of ``--repeat`` rounds in which the contenders run one after
another, in alternating order. Printed:

- decode tokens/s (new tokens / wall time of ``generate``) of polyformers and the reference, and the ratio;
- prefill of a 512-token prompt (prompt tokens / time of ``generate`` with one new token);
- batch 8 decode throughput (new tokens over the batch / time) against batch 1, and the ceiling of that ratio
  if a step's time followed the bytes it reads (:func:`batch_ceiling`);
- the machine's read bandwidth, the bound of decoding: a streaming read of the bench's own (a small C
  program with OpenMP, compiled into ``.cache/bench/`` when a C compiler is present, else numpy; arrays of
  256 MB to 1 GB, far bigger than the caches, best of 5 runs each, ``THREADS`` threads), and each
  contender's fraction of it: bytes of weights read per token (as that contender stores them) x tokens/s /
  bound. A float32 ``torch.mv`` is printed beside it: it does not reach the machine's limit;
- ``quantize(bits=8)`` (``quantize_int8``), ``quantize(bits=4, group_size=--group-size)`` and
  ``quantize(bits=16)`` (bfloat16 weights, 2 bytes each): tokens/s, and whether their greedy tokens equal
  float32's on prompts written with the real GPT-2 vocabulary; the 4-bit and 16-bit models again as
  "torch's kernels", decoding with polyformers' compiled kernels switched off (``kernels.switched_off``:
  fbgemm's int8, torch's int4 and bfloat16 products, and torch's attention, GELU and argmax, which every
  other row takes from polyformers' kernels when they are built);
- "int8, bf16 cache": the int8 model decoding through a bfloat16 ``StaticCache`` (its keys and values
  rounded as they are stored: half the bytes a step reads of them, the most of what a batch adds);
- CTranslate2 (float32 and int8, converted from the same checkpoint) when it is installed, in a process of its
  own (``bench/_ct2_worker.py``), timed there;
- llama.cpp (MPT only: it has no GPT-J) at f32, f16, Q8_0 and Q4_0, when ``llama-bench`` has been built
  by ``../shared/llamacpp/build.sh`` into ``.cache/llamacpp`` (or ``--llamacpp DIR``): the folder is
  converted by its ``convert_hf_to_gguf.py`` and quantized by its ``llama-quantize`` (once, cached), and
  ``llama-bench -t THREADS -p 0 -n NEW`` decodes, in the same rounds as the others;
- the time between decoding steps outside the blocks, polyformers against the reference: from the end of
  one step's LM head to the start of the next step's first block (hooks; for polyformers, the entry of its
  compiled step, ``polyformers.pt.fused``), the loop's own work and the forward's set-up; and, for the
  low-bit models, a step's time outside the weights' products with the blocks compiled and in Python;
- the kernels for one token (``kernels``): int8 weights, and 16-bit weights (oneDNN as torch calls it, oneDNN
  with pre-packed weights, torch's own matrix-vector kernel that :class:`Bf16Linear` uses for one row,
  float16 weights), on the reduced GPT-J's matrices, against float32's oneDNN and the read bound.

    .venv/bin/python bench/decode_speed.py [--repeat 5] [--family gptj mpt mpt-wide] [--skip ...] [--group-size 32]

``--skip fp32 prefill batch ct2 kernels int4 bf16 llamacpp overhead`` leaves the int8 decode against the reference (and
the int8 token check). The load average is printed before and after; a run whose load average exceeds
the thread count says so.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import time
from pathlib import Path

from _ct2_worker import Ct2Process

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
    # twice as wide: 707M parameters, whose int8 weights (708 MB) no longer fit in a large L3 (4-bit: 442 MB)
    "mpt-wide": dict(d_model=2048, n_heads=16, n_layers=12, max_seq_len=2048),
}
FOLDERS = {"gptj": "gptj-reduced", "mpt": "mpt-reduced", "mpt-wide": "mpt-wide"}


def architecture(family: str) -> str:
    """The model family a bench family is built from ("mpt-wide" is an MPT)."""
    return family.split("-")[0]


def build(family: str) -> Path:
    """The reference model with random weights, saved once with a GPT-2 tokenizer (CTranslate2's
    converter loads one); no end-of-sequence token, so every run decodes exactly ``NEW`` tokens."""
    import torch
    import transformers

    folder = CACHE / FOLDERS[family]
    if (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists():
        return folder
    print(f"building {folder} (once)", flush=True)
    config_class, model_class = {
        "gptj": (transformers.GPTJConfig, transformers.GPTJForCausalLM),
        "mpt": (transformers.MptConfig, transformers.MptForCausalLM),
    }[architecture(family)]
    # MPT's configs default to use_cache=False; decoding is measured with the cache, for both libraries.
    config = config_class(**CONFIGS[family], bos_token_id=None, eos_token_id=None, pad_token_id=None, use_cache=True)
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(folder)
    # polyformers' tokenizer: the reference's (transformers 5) writes a tokenizer.json with an empty
    # vocabulary from these files, which llama.cpp's converter rejects.
    import polyformers

    tokenizer = polyformers.GPT2TokenizerFast(
        vocab_file=str(GPT2_VOCAB / "vocab.json"), merges_file=str(GPT2_VOCAB / "merges.txt")
    )
    tokenizer.save_pretrained(folder)
    return folder


LLAMACPP_TYPES = ("f32", "f16", "Q8_0", "Q4_0")


def llamacpp_contenders(folder: Path, llamacpp: Path) -> list:
    """llama.cpp's decode of the MPT ``folder`` at each of ``LLAMACPP_TYPES``, timed by its llama-bench
    (tokens/s over ``NEW`` new tokens after an empty prompt, which it reports itself): contenders whose
    ``generate`` runs llama-bench once, or [] when llama-bench is not built."""
    import json
    import subprocess
    import sys

    bench, quantizer = llamacpp / "bin" / "llama-bench", llamacpp / "bin" / "llama-quantize"
    if not bench.exists() or not quantizer.exists():
        print(f"(llama.cpp not built in {llamacpp}: run ../shared/llamacpp/build.sh {llamacpp})")
        return []
    out = CACHE / f"{folder.name}-gguf"
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"model-{kind}.gguf" for kind in LLAMACPP_TYPES}
    if not all(f.exists() for f in files.values()):
        # the converter knows MPT by the original code's architecture name
        source = out / "hf"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(folder, source)
        config = json.loads((source / "config.json").read_text())
        config["architectures"] = ["MPTForCausalLM"]
        (source / "config.json").write_text(json.dumps(config))
        env = dict(os.environ, PYTHONPATH=str(llamacpp / "src" / "gguf-py"))
        for kind in ("f32", "f16"):
            print(f"converting {folder.name} for llama.cpp ({kind}, once)", flush=True)
            subprocess.run([sys.executable, str(llamacpp / "src" / "convert_hf_to_gguf.py"), str(source),
                            "--outtype", kind, "--outfile", str(files[kind])], env=env, check=True,
                           capture_output=True)
        for kind in ("Q8_0", "Q4_0"):
            subprocess.run([str(quantizer), str(files["f32"]), str(files[kind]), kind], check=True,
                           capture_output=True)

    contenders = []
    for kind, path in files.items():
        def generate(ids, new, path=path):
            # llama-bench decodes `new` tokens after an empty prompt; the wall time of this call includes
            # loading the file, so the rounds use the tokens/s it reports (see rounds_llamacpp)
            result = subprocess.run([str(bench), "-m", str(path), "-t", str(THREADS), "-p", "0", "-n", str(new),
                                     "-r", "1", "-o", "json"], check=True, capture_output=True, text=True)
            return json.loads(result.stdout)[0]["avg_ts"]

        contender = Contender(f"llama.cpp-{kind}", generate)
        contender.reported = True  # its tokens/s come from llama-bench, not from the wall time
        # bytes read per token: the file's size, an upper bound (it also holds the token embedding, of
        # which one row is read, beside the output matrix where quantizing stores that on its own)
        contender.bytes_per_token = path.stat().st_size
        contenders.append(contender)
    return contenders


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


def cache_bytes(config, itemsize: int) -> float:
    """Bytes of cached keys and values one sequence's decoding step reads, on average over the bench's run
    (``PROMPT + NEW / 2`` positions; every layer's keys and values, the model's width each)."""
    layers = getattr(config, "n_layers", None) or config.n_layer
    width = getattr(config, "d_model", None) or config.n_embd
    return layers * 2 * (PROMPT + NEW / 2) * width * itemsize


def batch_ceiling(weights: float, cache: float) -> float:
    """The batch-``BATCH`` throughput over batch 1's if a step's time followed the bytes it reads: the weights
    once, and each sequence's cache (``cache`` bytes). Batching shares the weights' reads and nothing else, so
    the more of a step's bytes the caches are, the lower this ceiling: with int8 weights 203 MB a step and a
    float32 cache of 9.4 MB a sequence, 8 x 212.6 / (203.2 + 75.5) = 6.1. It bounds only a contender whose batch 1
    runs at its bytes' rate: one slower than that alone (torch's bfloat16 kernels, at a third of the bound) can
    pass it."""
    return BATCH * (weights + cache) / (weights + BATCH * cache)


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a decoded token reads, as the model stores them: every matrix but the input
    embedding (one row of it); a quantized layer counts its packed weight and its scales."""
    from torch import nn

    from polyformers.pt.quantize import Int4Linear, Int8Linear

    embedding = model.get_input_embeddings()
    total = 0
    seen = set()
    for module in model.modules():
        if isinstance(module, Int4Linear):
            groups = module.in_features // module.group_size
            # the kernel's packed nibbles, and a bfloat16 scale and offset per group
            total += module.out_features * (module.in_features // 2 + 4 * groups)
        elif isinstance(module, Int8Linear):
            total += module.out_features * (module.in_features + 4)
        elif isinstance(module, nn.Embedding) and module is embedding:
            continue
        else:
            for tensor in module.parameters(recurse=False):
                if tensor.dim() < 2 or tensor.data_ptr() in seen:
                    continue
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


STREAM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include <sys/mman.h>
/* Reads an array of n floats, threads sharing it, and prints the best bytes/s of `runs` passes; with a
   third argument 1, the array lies in transparent huge pages (2 MiB), as polyformers' weights do. */
int main(int argc, char **argv) {
    long n = atol(argv[1]); int runs = atoi(argv[2]); int huge = argc > 3 && atoi(argv[3]);
    size_t bytes = (n * sizeof(float) + (1 << 21) - 1) & ~(size_t)((1 << 21) - 1);
    float *a = aligned_alloc(huge ? 1 << 21 : 64, bytes);
    if (huge) madvise(a, bytes, MADV_HUGEPAGE);
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) a[i] = (float)(i & 1023);
    double best = 0; float sink = 0;
    for (int r = 0; r < runs; r++) {
        double start = omp_get_wtime(); float total = 0;
        #pragma omp parallel for simd schedule(static) reduction(+:total)
        for (long i = 0; i < n; i++) total += a[i];
        double rate = n * sizeof(float) / (omp_get_wtime() - start);
        if (rate > best) best = rate;
        sink += total;
    }
    printf("%.6e %g\n", best, sink);
    free(a);
    return 0;
}
"""

STREAM_SIZES_MB = (256, 512, 1024)  # 8x the last-level cache and more


def stream_bandwidth(runs: int = 5) -> tuple[float, str]:
    """The machine's read bandwidth in bytes/s with ``THREADS`` threads: the best, over several array
    sizes far bigger than the caches, of the best of ``runs`` streaming reads; and how it was measured."""
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler:
        binary = CACHE / "stream_read"
        source = CACHE / "stream_read.c"
        CACHE.mkdir(parents=True, exist_ok=True)
        if not binary.exists() or not source.exists() or source.read_text() != STREAM_C:
            source.write_text(STREAM_C)
            subprocess.run([compiler, "-O3", "-march=native", "-fopenmp", "-o", str(binary), str(source)],
                           check=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OMP_PROC_BIND="spread")
        # in 4 KiB pages and in huge pages (where polyformers keeps its weights; llama.cpp's mapped files
        # get large pages from the page cache): the bound is the better of the two
        rates, huge = ([float(subprocess.run([str(binary), str(mb * 2**20 // 4), str(runs), flag], env=env,
                                             check=True, capture_output=True, text=True).stdout.split()[0])
                        for mb in STREAM_SIZES_MB] for flag in ("0", "1"))
        sizes = ", ".join(f"{mb} MB {small / 1e9:.1f} / {big / 1e9:.1f}"
                          for mb, small, big in zip(STREAM_SIZES_MB, rates, huge))
        return max(rates + huge), (f"C/OpenMP streaming read, {THREADS} threads; best of {runs} per size, "
                                   f"GB/s in 4 KiB / huge pages: {sizes}")
    else:
        import numpy as np
        from concurrent.futures import ThreadPoolExecutor

        rates = []
        with ThreadPoolExecutor(THREADS) as pool:
            for mb in STREAM_SIZES_MB:
                array = np.ones(mb * 2**20 // 4, dtype=np.float32)
                parts = np.array_split(array, THREADS)
                best = 0.0
                for _ in range(runs):
                    start = time.perf_counter()
                    list(pool.map(np.sum, parts))
                    best = max(best, array.nbytes / (time.perf_counter() - start))
                rates.append(best)
                del array, parts
        how = f"numpy streaming read (np.sum), {THREADS} threads"
    sizes = ", ".join(f"{mb} MB {rate / 1e9:.1f}" for mb, rate in zip(STREAM_SIZES_MB, rates))
    return max(rates), f"{how}; best of {runs} per size, GB/s: {sizes}"


class Contender:
    """One library's model, with what the benchmark asks of it."""

    def __init__(self, name: str, generate):
        self.name = name
        self.generate = generate  # (input_ids tensor, new tokens) -> output ids


def torch_contender(name: str, model, kernels_off: bool = False, cache_dtype=None) -> Contender:
    """``model.generate``; with ``kernels_off``, inside ``polyformers.pt.kernels.switched_off()``: torch's
    kernels where polyformers' compiled ones would run; with ``cache_dtype``, through a StaticCache of that
    dtype made for each call (as ``generate`` makes its own float32 one)."""
    import contextlib

    import torch

    from polyformers.pt import kernels
    from polyformers.pt.cache import StaticCache

    def generate(ids, new):
        cache = {} if cache_dtype is None else {"past_key_values": StaticCache(
            model.config, max_batch_size=ids.shape[0], max_cache_len=ids.shape[1] + new, dtype=cache_dtype)}
        with torch.inference_mode(), kernels.switched_off() if kernels_off else contextlib.nullcontext():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                  do_sample=False, **cache)

    return Contender(name, generate)


class SelfTimed(float):
    """The seconds a contender measured itself (CTranslate2, in its own process), returned by its ``generate``."""


def ct2_contender(name: str, worker, path: Path, quantization: str) -> Contender:
    """CTranslate2's generator of the converted folder ``path``, run by ``worker`` (``bench/_ct2_worker.py``:
    in this process it would slow the torch contenders after it by a third), timed there."""

    def generate(ids, new):
        prompts = [[str(t) for t in row] for row in ids.tolist()]
        seconds, _ = worker.call("Generator", path, quantization, THREADS, "generate_batch", prompts,
                                 max_length=new, min_length=new, sampling_topk=1, beam_size=1,
                                 include_prompt_in_result=False, return_scores=False)
        return SelfTimed(seconds)

    return Contender(name, generate)


def ct2_models(family: str, folder: Path) -> dict:
    """The folders of CTranslate2's float32 and int8 conversions of the reference checkpoint (converted once),
    or {} when the package is missing."""
    try:
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
    models = {}
    for quantization in ("float32", "int8"):
        out = CACHE / f"{folder.name}-ct2-{quantization}"
        if not (out / "model.bin").exists():
            print(f"converting {folder.name} for CTranslate2 ({quantization}, once)", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            ct2_transformers.TransformersConverter(str(folder)).convert(str(out), quantization=quantization)
        models[quantization] = out
    return models


def rounds(contenders, fn, repeat: int, after_round=None) -> dict[str, float]:
    """Median over ``repeat`` rounds of ``fn(contender)`` seconds, the order alternating each round;
    ``after_round()``, untimed, after each round. A contender that times itself gets its own figure:
    llama-bench (``fn`` returns its tokens/s) the seconds of ``NEW`` tokens at that rate, CTranslate2 the
    seconds it returns (:class:`SelfTimed`)."""
    times = {c.name: [] for c in contenders}
    for r in range(repeat):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            start = time.perf_counter()
            result = fn(c)
            seconds = time.perf_counter() - start
            if getattr(c, "reported", False):
                seconds = NEW / result
            elif isinstance(result, SelfTimed):
                seconds = float(result)
            times[c.name].append(seconds)
        if after_round is not None:
            after_round()
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_family(family: str, args, bw_samples: list) -> None:
    import torch
    import transformers

    import polyformers
    from polyformers.pt import kernels
    from polyformers.pt.quantize import quantize, quantize_int8

    folder = build(family)
    print(f"polyformers' compiled kernels: {'in use' if kernels.available() else kernels.why_not()}")
    ref_class = {"gptj": transformers.GPTJForCausalLM, "mpt": transformers.MptForCausalLM}[architecture(family)]
    pf_class = {"gptj": polyformers.GPTJForCausalLM, "mpt": polyformers.MptForCausalLM}[architecture(family)]
    reference = ref_class.from_pretrained(folder, dtype=torch.float32).eval()
    ours = pf_class.from_pretrained(folder, dtype=torch.float32).eval()
    contenders = [torch_contender("reference", reference)]
    ours_int8 = ours_int4 = ours_bf16 = None
    if "fp32" not in args.skip:
        contenders.insert(0, torch_contender("polyformers", ours))
    if "int8" not in args.skip:
        ours_int8 = quantize_int8(pf_class.from_pretrained(folder, dtype=torch.float32).eval())
        contenders.append(torch_contender("polyformers-int8", ours_int8))
        # the same model with its keys and values stored in bfloat16: half the bytes a step reads of them
        contenders.append(torch_contender("int8, bf16 cache", ours_int8, cache_dtype=torch.bfloat16))
        if kernels.available():  # the same int8 weights through fbgemm
            with kernels.switched_off():
                int8_torch = quantize_int8(pf_class.from_pretrained(folder, dtype=torch.float32).eval())
            contenders.append(torch_contender("int8 torch's kernels", int8_torch, True))
    if "int4" not in args.skip:
        ours_int4 = quantize(pf_class.from_pretrained(folder, dtype=torch.float32).eval(), bits=4,
                             group_size=args.group_size)
        contenders.append(torch_contender(f"polyformers-int4-g{args.group_size}", ours_int4))
        if kernels.available():  # the same layers packed for torch's int4 kernel
            with kernels.switched_off():
                int4_torch = quantize(pf_class.from_pretrained(folder, dtype=torch.float32).eval(), bits=4,
                                      group_size=args.group_size)
            contenders.append(torch_contender(f"int4-g{args.group_size} torch's kernel", int4_torch, True))
    if "bf16" not in args.skip:
        ours_bf16 = quantize(pf_class.from_pretrained(folder, dtype=torch.float32).eval(), bits=16)
        contenders.append(torch_contender("polyformers-bf16", ours_bf16))
        if kernels.available():
            contenders.append(torch_contender("bf16 torch's kernels", ours_bf16, True))
    worker = None
    if "ct2" not in args.skip:
        models = ct2_models(family, folder)
        worker = Ct2Process() if models else None
        for quantization, path in models.items():
            contenders.append(ct2_contender(f"ctranslate2-{quantization}", worker, path, quantization))
    if "llamacpp" not in args.skip and architecture(family) == "mpt":
        contenders += llamacpp_contenders(folder, args.llamacpp)
    names = [c.name for c in contenders]
    by_name = dict(zip(names, contenders))

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50257, (1, PROMPT), generator=generator)
    long_prompt = torch.randint(0, 50257, (1, PREFILL), generator=generator)
    batch_prompt = torch.randint(0, 50257, (BATCH, PROMPT), generator=generator)

    for c in contenders:  # warm-up: allocators, kernels' first-call costs
        c.generate(prompt, 4)
    timed = [c for c in contenders if not getattr(c, "reported", False)]

    print(f"\n== {family}: {type(ours).__name__}, {sum(p.numel() for p in ours.parameters()) / 1e6:.0f}M "
          f"parameters, {THREADS} threads, medians of {args.repeat} rounds", flush=True)
    per_token_bytes = weight_bytes_per_token(ours)
    bytes_per_token = {"polyformers": per_token_bytes, "reference": per_token_bytes,
                       "ctranslate2-float32": per_token_bytes}
    if "int8" not in args.skip:
        bytes_per_token["polyformers-int8"] = weight_bytes_per_token(ours_int8)
        bytes_per_token["ctranslate2-int8"] = bytes_per_token["polyformers-int8"]
        bytes_per_token["int8 torch's kernels"] = bytes_per_token["polyformers-int8"]
        bytes_per_token["int8, bf16 cache"] = bytes_per_token["polyformers-int8"]
    if "int4" not in args.skip:
        bytes_per_token[f"polyformers-int4-g{args.group_size}"] = weight_bytes_per_token(ours_int4)
        bytes_per_token[f"int4-g{args.group_size} torch's kernel"] = weight_bytes_per_token(ours_int4)
    if "bf16" not in args.skip:
        bytes_per_token["polyformers-bf16"] = bytes_per_token["bf16 torch's kernels"] = weight_bytes_per_token(ours_bf16)
    for c in contenders:
        if hasattr(c, "bytes_per_token"):
            bytes_per_token[c.name] = c.bytes_per_token

    # The bandwidth is sampled between rounds, outside the timed decoding: its 256 MB matrix takes
    # longer to fill than an int8 model takes to decode.
    decode_s = rounds(contenders, lambda c: c.generate(prompt, NEW), args.repeat,
                      after_round=lambda: bw_samples.append(bandwidth()))
    bw = statistics.median(mv for mv, _ in bw_samples)
    bw_linear = statistics.median(ours for _, ours in bw_samples)
    ref_tps = NEW / decode_s["reference"]
    stream = args.stream_bandwidth
    from polyformers.pt import kernels

    cache = kernels.last_level_cache_bytes()
    print(f"decode, batch 1, {PROMPT}-token prompt, {NEW} new tokens (tokens/s; MB of weights read per token; "
          f"fraction of the read bound {stream / 1e9:.1f} GB/s; * weights within the last-level cache, "
          f"{cache / 2 ** 20:.0f} MiB, so read from it rather than from memory):")
    for name in names:
        tps = NEW / decode_s[name]
        read = bytes_per_token.get(name)
        fits = "*" if read is not None and read <= cache else ""
        bound = "" if read is None else f"   {read / 1e6:6.1f} MB{fits:1s} {read * tps / stream:4.0%} of the bound"
        print(f"  {name:24s} {tps:7.2f}   x{tps / ref_tps:4.2f} of the reference{bound}")
    if "polyformers" in decode_s:
        pf_tps = NEW / decode_s["polyformers"]
        print(f"not the bound: torch.mv, float32, 256 MB: {bw / 1e9:.1f} GB/s -> {bw / per_token_bytes:.1f} "
              f"tokens/s for {per_token_bytes / 1e6:.0f} MB of weights per token; polyformers reaches "
              f"{per_token_bytes * pf_tps / bw:.0%} of it")
        print(f"  (the same product through polyformers' oneDNN linear: {bw_linear / 1e9:.1f} GB/s -> "
              f"{per_token_bytes * pf_tps / bw_linear:.0%} of that)")

    if "overhead" not in args.skip:
        print(f"time between decoding steps outside the blocks (microseconds from the head's end to the first "
              f"block's start: the decoding loop's own work, then the forward's set-up; median of {NEW - 1} steps, "
              f"best of {args.repeat} generate calls):")
        for name, model in (("polyformers", ours), ("reference", reference)):
            gaps = [step_gap(model, family, prompt, NEW) for _ in range(args.repeat)]
            print(f"  {name:20s} {min(gaps) * 1e6:7.0f}")
        print("a decoding step's time outside the weights' products (ms: a step's time minus the model's linear "
              "layers called alone on one row, medians of the rounds), the blocks in one compiled call (polyformers' "
              "decoding steps) against the blocks' Python forward (fused.ENABLED off); the low-bit models only, "
              "where the products are short enough for the difference to stand out of the bandwidth's drift:")
        variants = [(n, m) for n, m in (("polyformers-int8", ours_int8),
                                        (f"polyformers-int4-g{args.group_size}", ours_int4),
                                        ("polyformers-bf16", ours_bf16)) if m is not None]
        for name, model in variants:
            compiled, python = outside_products(model, prompt, 64, args.repeat)
            ratio = f"x{python / compiled:4.2f}" if compiled > 0 else "(compiled: within the drift, no ratio)"
            print(f"  {name:24s} compiled {compiled * 1e3:5.2f}   python {python * 1e3:5.2f}   {ratio}")

    if "prefill" not in args.skip:
        prefill_s = rounds(timed, lambda c: c.generate(long_prompt, 1), args.repeat)
        print(f"prefill of a {PREFILL}-token prompt (prompt tokens/s):")
        for name, seconds in prefill_s.items():
            print(f"  {name:20s} {PREFILL / seconds:7.1f}   x{prefill_s['reference'] / seconds:4.2f} of the reference")

    if "batch" not in args.skip:
        # (torch's int4 kernel takes one row: its layers dequantize the whole weight for a batch, minutes here)
        batched = ("polyformers", "polyformers-int8", "int8, bf16 cache", "int8 torch's kernels", "polyformers-bf16",
                   "bf16 torch's kernels", f"polyformers-int4-g{args.group_size}", "reference")
        batch_s = rounds([by_name[n] for n in batched if n in by_name
                          and (n != "reference" or "batch-reference" in args.extra)],
                         lambda c: c.generate(batch_prompt, NEW), args.repeat)
        print(f"batch {BATCH} decode throughput (new tokens over the batch / s), and the ceiling of its ratio to batch "
              f"1 where a step's time follows its bytes (weights once, and each sequence's cached keys and values, "
              f"{PROMPT + NEW // 2} positions on average):")
        for name, seconds in batch_s.items():
            single = NEW / decode_s[name]
            ceiling = batch_ceiling(bytes_per_token[name], cache_bytes(ours.config, 2 if "bf16 cache" in name else 4))
            print(f"  {name:20s} {BATCH * NEW / seconds:7.1f}   x{BATCH * NEW / seconds / single:4.2f} of its batch 1 "
                  f"(ceiling x{ceiling:4.2f})")

    checked = []
    if "int8" not in args.skip:
        checked.append(("int8", ours_int8))
    if "int4" not in args.skip:
        checked.append((f"int4 (group {args.group_size})", ours_int4))
    if "bf16" not in args.skip:
        checked.append(("bf16", ours_bf16))
    if checked:
        tokenizer = polyformers.GPT2TokenizerFast(
            vocab_file=str(GPT2_VOCAB / "vocab.json"), merges_file=str(GPT2_VOCAB / "merges.txt")
        )
    for label, quantized in checked:
        print(f"{label} greedy tokens equal to float32's (of 16 new; float32's top-2 margin where they part):")
        for text in REAL_PROMPTS:
            real = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.inference_mode():
                fp32 = ours.generate(real, max_new_tokens=16, do_sample=False, return_dict_in_generate=True,
                                     output_scores=True)
                low = quantized.generate(real, max_new_tokens=16, do_sample=False)
            new_fp32, new_low = fp32.sequences[0, real.shape[1]:], low[0, real.shape[1]:]
            same = int((new_fp32 == new_low).cumprod(0).sum())
            where = ""
            if same < 16:
                top2 = fp32.scores[same][0].topk(2).values
                where = f" (margin {float(top2[0] - top2[1]):.3f})"
            print(f"  {same:2d}/16{where}  {text!r}")
    if worker is not None:
        worker.close()
    del contenders, by_name, reference, ours, checked
    gc.collect()


def step_gap(model, family: str, prompt, new: int) -> float:
    """Median seconds, over one greedy ``generate`` of ``new`` tokens, from the end of the LM head of a step
    to the start of the first block of the next one (the prefill's gap is not counted). A hook on the head
    marks its end; the blocks' start is a pre-hook on the first block, or, for polyformers, whose decoding
    steps run the blocks in one compiled call that a hook on a block would switch off, the entry of
    ``fused.alibi_blocks`` or ``fused.rotary_blocks`` (its check that the step qualifies is then counted
    with the blocks)."""
    import torch

    from polyformers.pt import fused

    head_end, gaps = [None], []

    def after_head(module, args, output):
        head_end[0] = time.perf_counter()

    def before_first(*args):
        if head_end[0] is not None:
            gaps.append(time.perf_counter() - head_end[0])

    hooks = [model.lm_head.register_forward_hook(after_head)]
    name = "rotary_blocks" if architecture(family) == "gptj" else "alibi_blocks"
    compiled = getattr(fused, name)
    if type(model).__module__.startswith("polyformers"):
        def entry(*args):
            before_first()
            return compiled(*args)

        setattr(fused, name, entry)
    else:
        first = (model.transformer.h if architecture(family) == "gptj" else model.transformer.blocks)[0]
        hooks.append(first.register_forward_pre_hook(before_first))
    try:
        with torch.inference_mode():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False)
    finally:
        setattr(fused, name, compiled)
        for hook in hooks:
            hook.remove()
    return statistics.median(gaps)


def outside_products(model, prompt, new: int, repeat: int) -> tuple[float, float]:
    """Seconds of a greedy decoding step outside the products with the weights, with the blocks' compiled
    step and without it: the median over ``repeat`` rounds of (a step's time, from a ``generate`` of ``new``
    tokens) minus (the model's linear layers, every module with in and out features and no children, called
    one after another on one row). GPT-J's q, k and v are multiplied as its step does, in one stacked
    product (``layers.stacked_linear``)."""
    import torch

    from polyformers.pt import fused
    from polyformers.pt import layers as L
    from polyformers.pt.quantize import decoding_weights

    groups = [(m.q_proj, m.k_proj, m.v_proj) for m in model.modules() if hasattr(m, "q_proj")]
    grouped = {id(layer) for group in groups for layer in group}
    calls = [(m, torch.randn(1, m.in_features)) for m in model.modules() if hasattr(m, "in_features")
             and hasattr(m, "out_features") and not list(m.children()) and id(m) not in grouped]
    calls += [(lambda row, group=group: L.stacked_linear(row, *group), torch.randn(1, group[0].in_features))
              for group in groups]
    outside = {True: [], False: []}
    with torch.inference_mode():
        for _ in range(repeat):
            with decoding_weights(model):  # (as within generate: see polyformers.pt.kernels.begin_reading)
                start = time.perf_counter()
                for _ in range(5):
                    for call, row in calls:
                        call(row)
                products_s = (time.perf_counter() - start) / 5
            for compiled in (True, False):
                fused.ENABLED = compiled
                try:
                    start = time.perf_counter()
                    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                   min_new_tokens=new, do_sample=False)
                    outside[compiled].append((time.perf_counter() - start) / new - products_s)
                finally:
                    fused.ENABLED = True
    return statistics.median(outside[True]), statistics.median(outside[False])


def int8_kernels(repeat: int) -> None:
    """The candidates for an int8 matrix times one float32 token, on the reduced GPT-J's matrices (four
    layers' worth, far bigger than the caches): milliseconds for one decoded token's layer weights."""
    import torch
    import torch.nn.functional as F

    from polyformers.pt.quantize import Int8Linear

    from polyformers.pt import kernels

    shapes = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)] * 4
    weights = [torch.randn(out, inp) * 0.02 for out, inp in shapes]
    int8 = [_quantized(w) for w in weights]
    layers = [Int8Linear(q, s) for q, s in int8]
    with kernels.switched_off():
        fbgemm = [Int8Linear(q, s) for q, s in int8]
    x = {inp: torch.randn(1, 1, inp) for _, inp in shapes}  # (batch, token, features), as in decoding
    candidates = {
        "float32 F.linear (reference point)": lambda: [F.linear(x[w.shape[1]], w) for w in weights],
        "polyformers linear_i8 (Int8Linear)": lambda: [layer(x[layer.in_features]) for layer in layers],
        "fbgemm dynamic int8 (without kernels)": lambda: [layer(x[layer.in_features]) for layer in fbgemm],
        "torch._weight_int8pack_mm, float32 in": lambda: [
            torch.ops.aten._weight_int8pack_mm(x[q.shape[1]][0], q, s) for q, s in int8],
        "dequantise per layer, then F.linear": lambda: [
            F.linear(x[q.shape[1]], q.float() * s[:, None]) for q, s in int8],
    }
    # Eight rows (a batch of 8 decoding sequences) through polyformers' kernel, on the tile unit and on VNNI.
    tiles = kernels.int8_tiles()
    x8 = {inp: torch.randn(8, 1, inp) for _, inp in shapes}
    for unit, on in (("tile unit (AMX)", True), ("VNNI", False)) if tiles else ():
        candidates[f"8 rows, linear_i8 on {unit}"] = lambda on=on: (
            kernels.int8_tiles(on), [layer(x8[layer.in_features]) for layer in layers])
    times = {name: [] for name in candidates}
    try:
        for _ in range(repeat):
            for name, fn in candidates.items():
                fn()
                for _ in range(5):
                    start = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - start) * 3)  # 4 layers timed, 12 in the model
    finally:
        kernels.int8_tiles(tiles)
    print("int8 kernels, one token through the reduced GPT-J's 12 layers (ms):")
    for name, ts in times.items():
        print(f"  {name:40s} {statistics.median(ts) * 1e3:7.2f}")
    if not tiles:
        print("  8 rows: this CPU (or Linux) gives no tile unit (AMX), so VNNI takes them")


def bf16_kernels(repeat: int, stream: float) -> None:
    """The candidates for a 16-bit matrix times one float32 token, per matrix shape of the reduced GPT-J
    (MPT's are the same), each shape as copies filling 256 MB of float32: GB/s of weights read (as each
    candidate stores them), and the time of one token's 12 layers and LM head against the read bound;
    medians of ``3 * repeat`` rounds alternating the candidates. With ``THREADS`` threads (wall time), then
    with one, timed by the thread's CPU time, which other processes on the machine disturb less."""
    import torch

    for threads in (THREADS, 1):
        torch.set_num_threads(threads)
        try:
            _bf16_kernels(3 * repeat, stream, threads)
        finally:
            torch.set_num_threads(THREADS)


def _bf16_kernels(rounds: int, stream: float, threads: int) -> None:
    import torch
    import torch.nn.functional as F

    from polyformers.pt.layers import linear
    from polyformers.pt.quantize import Bf16Linear

    shapes = {(3072, 1024): 12, (1024, 1024): 12, (4096, 1024): 12, (1024, 4096): 12, (50400, 1024): 1}
    names = ["float32, oneDNN (layers.linear)", "bfloat16, oneDNN (F.linear)", "bfloat16, oneDNN pre-packed",
             "bfloat16, torch's mat-vec (Bf16Linear)", "float16, F.linear"]
    rates: dict[str, list] = {name: [] for name in names}
    token_s = dict.fromkeys(names, 0.0)
    token_bytes = dict.fromkeys(names, 0)
    for (out, inp), per_token in shapes.items():
        torch.manual_seed(0)
        weights = [torch.randn(out, inp) * 0.02 for _ in range(max(1, 2**26 // (out * inp)))]
        layers = [Bf16Linear(w) for w in weights]
        halves = [w.half() for w in weights]
        try:
            packed = [torch.ops.mkldnn._reorder_linear_weight(layer.weight, 1) for layer in layers]
        except RuntimeError:  # oneDNN without bfloat16 on this CPU
            packed = None
        x = torch.randn(1, 1, inp)  # each 16-bit candidate rounds it and returns float32, as the layer does
        candidates = {
            names[0]: (4, lambda: [linear(x, w) for w in weights]),
            names[1]: (2, lambda: [F.linear(x.bfloat16(), layer.weight).float() for layer in layers]),
            names[2]: (2, None if packed is None else lambda: [
                torch.ops.mkldnn._linear_pointwise(x.bfloat16(), p, None, "none", [], "").float() for p in packed]),
            names[3]: (2, lambda: [layer(x) for layer in layers]),
            names[4]: (2, lambda: [F.linear(x.half(), h).float() for h in halves]),
        }
        times: dict[str, list] = {name: [] for name, (_, fn) in candidates.items() if fn is not None}
        with torch.inference_mode():
            clock = time.perf_counter if threads > 1 else time.thread_time
            for r in range(rounds):
                order = list(times) if r % 2 == 0 else list(times)[::-1]
                for name in order:
                    fn = candidates[name][1]
                    fn()  # first pass: the copies leave the caches of the previous candidate's
                    start = clock()
                    fn()
                    times[name].append((clock() - start) / len(weights))
        for name in names:
            if name not in times:
                rates[name].append(None)
                continue
            seconds, size = statistics.median(times[name]), out * inp * candidates[name][0]
            rates[name].append(size / seconds)
            token_s[name] += per_token * seconds
            token_bytes[name] += per_token * size
        del weights, layers, halves, packed
    columns = "  ".join(f"{inp}->{out}".rjust(10) for out, inp in shapes)
    bound = f"fraction of the read bound {stream / 1e9:.1f} GB/s" if threads == THREADS else "no bound measured"
    timing = "wall time" if threads > 1 else "CPU time"
    print(f"16-bit kernels, one token, {threads} thread{'s' * (threads > 1)} ({timing}; {load_average()}): GB/s "
          f"of weights read per matrix shape; one token's 12 layers and head (ms, {bound}):")
    print(f"  {'':40s} {columns}")
    for name in names:
        if not token_s[name]:
            print(f"  {name:40s} (not available on this CPU)")
            continue
        cells = "  ".join("-".rjust(10) if r is None else f"{r / 1e9:10.1f}" for r in rates[name])
        fraction = f"  {token_bytes[name] / token_s[name] / stream:4.0%}" if threads == THREADS else ""
        print(f"  {name:40s} {cells}  {token_s[name] * 1e3:7.2f} ms{fraction}")


def _quantized(weight):
    import torch

    scales = weight.abs().amax(dim=1) / 127
    return torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--family", nargs="*", default=["gptj", "mpt"], choices=sorted(CONFIGS))
    parser.add_argument("--group-size", type=int, default=32, help="group size of the 4-bit rows (32, 64, 128)")
    parser.add_argument("--llamacpp", type=Path, default=ROOT / ".cache" / "llamacpp",
                        help="where ../shared/llamacpp/build.sh built llama-bench")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["fp32", "prefill", "batch", "int8", "int4", "bf16", "ct2", "kernels",
                                 "llamacpp", "overhead"],
                        help="fp32: polyformers' float32 decode (the reference stays, as the base of the ratios)")
    parser.add_argument("--extra", nargs="*", default=[], choices=["batch-reference"],
                        help="also time the reference at batch 8 (slow)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads; {load_average()}", flush=True)
    args.stream_bandwidth, how = stream_bandwidth()
    print(f"read bound: {args.stream_bandwidth / 1e9:.1f} GB/s ({how})", flush=True)
    if "kernels" not in args.skip:
        int8_kernels(args.repeat)
        bf16_kernels(args.repeat, args.stream_bandwidth)
    bw_samples: list[tuple[float, float]] = []
    for family in args.family:
        bench_family(family, args, bw_samples)
    print(f"\nafter: {load_average()}")


def load_average() -> str:
    one, five, _ = os.getloadavg()
    note = (f" -- above the {THREADS} threads: the machine is shared and busy, ratios between rows are "
            "noisier than usual" if one > THREADS else "")
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores{note}"


if __name__ == "__main__":
    main()

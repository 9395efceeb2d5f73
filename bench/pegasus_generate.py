"""Greedy summarisation speed of Pegasus in PyTorch: polyformers' ``generate`` against the reference's.

Reduced Pegasus (d_model 512, 6+6 layers, 8 heads, vocab 96103) with random weights, built once into
``.cache/bench/pegasus-reduced`` (the folder ``bench/flax_pegasus_generate.py`` uses too); float32, batch
1, a 256-token source, 64 new greedy tokens (the end token is held off with ``min_length`` so that every
run does the same work). Contenders:

- polyformers, polyformers with int8 layers (``quantize(bits=8)``) and the reference (transformers, installed
  here) in this process, alternating in order each round; the figure is the median of ``--repeat`` rounds;
- the reference's 4.37 release (the legacy-oracle venv), timed the same way in a subprocess;
- CTranslate2 (float32 and int8), converted from the same folder, when the package is installed: run in a
  process of its own (``bench/_ct2_worker.py``: in this one it would slow the torch contenders after it by a
  third), taking its turns like the others.

Printed: seconds per generate, new tokens per second, polyformers' ratio to each, and whether the greedy
tokens are the same (all but the last, the end token that the config forces and CTranslate2 does not).

    .venv/bin/python bench/pegasus_generate.py [--repeat 7] [--skip legacy ctranslate2]
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

from _ct2_worker import Ct2Process

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
LEGACY = ROOT / ".cache" / "legacy-oracle" / "bin" / "python"
THREADS = 2
SOURCE, NEW = 256, 64
CONFIG = dict(
    vocab_size=96103, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)

# Runs in the 4.37 venv: the same generate call, timed after one warm-up.
LEGACY_TIMER = r'''
import json, statistics, sys, time
import numpy as np, torch
from transformers import PegasusForConditionalGeneration
folder, repeat, source, new, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = PegasusForConditionalGeneration.from_pretrained(folder).eval()
ids = torch.from_numpy(np.random.default_rng(0).integers(2, 96103, size=(1, source)).astype("int64"))
times = []
with torch.no_grad():
    for _ in range(repeat + 1):
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_length=new + 1, num_beams=1, do_sample=False)
        times.append(time.perf_counter() - start)
print(json.dumps({"median": statistics.median(times[1:]), "tokens": out[0].tolist()}))
'''


def build(folder: Path) -> Path:
    if not (folder / "model.safetensors").exists():
        import torch

        from polyformers import PegasusConfig, PegasusForConditionalGeneration

        torch.manual_seed(0)
        PegasusForConditionalGeneration(PegasusConfig(**CONFIG)).save_pretrained(folder)
    return folder


def source_ids():
    import numpy as np
    import torch

    return torch.from_numpy(np.random.default_rng(0).integers(2, CONFIG["vocab_size"], size=(1, SOURCE)).astype("int64"))


def torch_generate(model):
    """``run(ids) -> (seconds, tokens)`` of one greedy ``generate``."""
    import torch

    def run(ids):
        with torch.no_grad():
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=NEW, min_length=NEW + 1, num_beams=1, do_sample=False)
            return time.perf_counter() - start, out[0].tolist()

    return run


def ct2_generate(folder: Path, quantization: str, worker: Ct2Process):
    """A CTranslate2 translator over the same weights, run by ``worker`` (see ``bench/_ct2_worker.py`` for why
    not in this process); ``run(ids) -> (seconds, tokens)`` as the worker timed it. Its vocabulary is the token
    ids written out, so that it reads the very ids the others do."""
    from ctranslate2.converters import transformers as ct2_transformers

    out = CACHE / f"{folder.name}-ct2-{quantization}"
    if not (out / "model.bin").exists():
        print(f"converting {folder.name} for CTranslate2 ({quantization}, once)", flush=True)
        loader = ct2_transformers._MODEL_LOADERS["PegasusConfig"]
        loader.get_vocabulary = lambda model, tokenizer: [str(i) for i in range(model.config.vocab_size)]
        loader.set_config = lambda config, model, tokenizer: (
            setattr(config, "bos_token", "0"), setattr(config, "eos_token", "1"), setattr(config, "unk_token", "2"),
            setattr(config, "decoder_start_token", "0"))
        # The loader reads BART's pre-norm flags, which the Pegasus config no longer has: Pegasus is pre-norm
        # and has no layer norm on its embeddings.
        spec_of = type(loader).get_model_spec
        loader.get_model_spec = lambda model: spec_of(loader, model) if model.config.update(
            {"normalize_before": True, "normalize_embedding": False}) is None else None
        shutil.rmtree(out, ignore_errors=True)
        converter = ct2_transformers.TransformersConverter(str(folder))
        converter.load_tokenizer = lambda *args, **kwargs: None  # the folder has none; ids stand in
        converter.convert(str(out), quantization=quantization)

    def run(ids):
        seconds, hypotheses = worker.call(
            "Translator", out, quantization, THREADS, "translate_batch", [[str(t) for t in ids[0].tolist()]],
            beam_size=1, max_decoding_length=NEW, min_decoding_length=NEW, return_scores=False)
        return seconds, [CONFIG["decoder_start_token_id"]] + [int(t) for t in hypotheses[0]]

    return run


def legacy(folder: Path, repeat: int) -> dict:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(LEGACY), "-c", LEGACY_TIMER, str(folder), str(repeat), str(SOURCE), str(NEW),
                          str(THREADS)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the 4.37 run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--folder", type=Path, default=CACHE / "pegasus-reduced")
    parser.add_argument("--skip", nargs="*", default=[], choices=["legacy", "ctranslate2"])
    args = parser.parse_args()

    import torch
    import transformers

    import polyformers
    from polyformers.pt.quantize import quantize

    torch.set_num_threads(THREADS)
    folder = build(args.folder)
    ids = source_ids()
    contenders = {
        "polyformers": torch_generate(polyformers.PegasusForConditionalGeneration.from_pretrained(folder).eval()),
        "transformers": torch_generate(transformers.PegasusForConditionalGeneration.from_pretrained(folder).eval()),
        "polyformers-int8": torch_generate(quantize(polyformers.PegasusForConditionalGeneration.from_pretrained(folder)
                                                    .eval(), bits=8)),
    }
    worker = None
    if "ctranslate2" not in args.skip:
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            print("ctranslate2 is not installed: skipped")
        else:
            worker = Ct2Process()
            for quantization in ("float32", "int8"):
                contenders[f"ctranslate2-{quantization}"] = ct2_generate(folder, quantization, worker)

    tokens = {name: run(ids)[1] for name, run in contenders.items()}  # warm-up, and the tokens compared
    times = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(contenders[name](ids)[0])
    if worker is not None:
        worker.close()
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    if "legacy" not in args.skip:
        result = legacy(folder, args.repeat)
        medians["transformers 4.37"], tokens["transformers 4.37"] = result["median"], result["tokens"]

    ours = medians["polyformers"]
    print(f"reduced Pegasus, {SOURCE}-token source, {NEW} new greedy tokens, float32, {THREADS} threads, "
          f"median of {args.repeat} (load {os.getloadavg()[0]:.1f})")
    print(f"{'contender':<22}{'s/generate':>12}{'tokens/s':>10}{'polyformers x':>15}  same tokens")
    for name, seconds in medians.items():
        # The last token is the config's forced end token, which CTranslate2 does not force.
        same = tokens[name][:NEW] == tokens["polyformers"][:NEW]
        print(f"{name:<22}{seconds:>12.3f}{NEW / seconds:>10.1f}{seconds / ours:>15.2f}  {same}")


if __name__ == "__main__":
    main()

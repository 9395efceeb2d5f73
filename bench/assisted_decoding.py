"""Assisted decoding and prompt lookup decoding against plain greedy decoding, on the reduced GPT-J.

The model is the reduced GPT-J of bench/decode_speed.py (n_embd 1024, 12 layers, 16 heads, vocab 50400,
random weights, built once into ``.cache/bench/gptj-reduced``), float32, batch 1, on the CPU. Every
figure is the median of ``--repeat`` rounds in which plain greedy ``generate`` and the assisted variant
run one after the other, in alternating order; the tokens of every assisted run are checked against
greedy's. Printed per measurement: tokens/s of both, their ratio, and how many new tokens one forward
of the model yielded on average (1.0 means no candidate was ever kept).

1. ``assistant_model=``: a 2-layer draft made of the model's own first 2 layers, embeddings, final norm
   and head (shared, not copied). With random weights the 10 other layers each move the residual stream
   as much as the first two, so the draft almost never predicts the model's token; the bench measures
   that as is, and again after scaling the output projections of layers 3-12 (attention ``out_proj``
   and MLP ``fc_out``) by ``--quiet`` in place, which leaves the compute unchanged and makes the draft
   agree as it would with a model whose later layers refine rather than rewrite (trained models behave
   in between; the acceptance rate printed says where a run stands). Last, the same quieted model with
   the draft's own int8 copy (``quantize_int8`` of a deep copy of its layers and head): the draft's cost
   is mostly the 50,400-wide head, which int8 reads in a quarter of the bytes, while the model that
   decides every token stays float32.
2. ``prompt_lookup_num_tokens=10`` and ``3`` on a summarising prompt: a document (the model's own greedy
   continuation of a random seed) followed by the seed again, so that the continuation copies spans of
   the prompt as a summary copies phrases of its source. Fewer candidates keep the verifying forward
   nearer the cost of a one-token step (its matrix products read the same weights for a few more rows).

Each variant runs once untimed first (its first call builds kernels for shapes greedy never used).

The machine may be shared: the load average before and after is printed with the thread count.

    .venv/bin/python bench/assisted_decoding.py [--repeat 3] [--new 32] [--threads 2] [--quiet 0.05]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import build  # noqa: E402  (the reduced GPT-J, built once)

import polyformers  # noqa: E402
from polyformers.pt.quantize import quantize_int8  # noqa: E402

SEED, DOCUMENT, PROMPT = 16, 64, 32


def draft_of(model, layers: int = 2):
    """A GPT-J of the model's first ``layers`` layers, sharing its embeddings, final norm and head."""
    config = copy.deepcopy(model.config)
    config.n_layer = layers
    with torch.device("meta"):
        draft = type(model)(config)
    draft.transformer.wte = model.transformer.wte
    draft.transformer.h = torch.nn.ModuleList(list(model.transformer.h)[:layers])
    draft.transformer.ln_f = model.transformer.ln_f
    draft.lm_head = model.lm_head
    for name, tensor in [*draft.named_parameters(), *draft.named_buffers()]:
        if tensor.is_meta:
            raise RuntimeError(f"draft tensor {name} was not taken from the model")
    return draft.eval()


class Counter:
    """Counts the forwards of a module (the model's, not the draft's: the hook sits on the model)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1


def compare(model, counter, prompt, new: int, repeat: int, **assisted) -> dict:
    """Median seconds of greedy and assisted ``generate`` over alternating rounds; tokens checked."""
    def greedy():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False)

    def helped():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False,
                              **assisted)

    with torch.inference_mode():
        expected = greedy()
        helped()  # untimed: the first call of a variant builds kernels for shapes greedy never used
        times = {"greedy": [], "assisted": []}
        equal, forwards = True, []
        for r in range(repeat):
            order = [("greedy", greedy), ("assisted", helped)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                counter.calls = 0
                start = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - start)
                if name == "assisted":
                    forwards.append(counter.calls)
                    equal = equal and torch.equal(out, expected)
    produced = expected.shape[1] - prompt.shape[1]
    greedy_s, assisted_s = statistics.median(times["greedy"]), statistics.median(times["assisted"])
    return dict(greedy=produced / greedy_s, assisted=produced / assisted_s, ratio=greedy_s / assisted_s,
                equal=equal, per_forward=produced / statistics.median(forwards), tokens=produced)


def report(title: str, result: dict) -> None:
    print(f"{title}: greedy {result['greedy']:.2f} tokens/s, assisted {result['assisted']:.2f} tokens/s, "
          f"speed-up {result['ratio']:.2f}x; {result['per_forward']:.2f} new tokens per model forward; "
          f"tokens equal to greedy: {result['equal']} ({result['tokens']} new tokens)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--new", type=int, default=32, help="new tokens per generate call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=0.05,
                        help="scale of layers 3-12's output projections for the second assisted measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch threads: "
          f"{torch.get_num_threads()}; cores: {os.cpu_count()}", flush=True)

    folder = build("gptj")
    model = polyformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    draft = draft_of(model)
    counter = Counter(model)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50257, (1, PROMPT), generator=generator)

    # 2. prompt lookup first, on the model as built.
    seed = torch.randint(0, 50257, (1, SEED), generator=generator)
    with torch.inference_mode():
        document = model.generate(seed, attention_mask=torch.ones_like(seed), max_new_tokens=DOCUMENT,
                                  do_sample=False)
    summarising = torch.cat([document, seed], dim=1)
    for tokens in (10, 3):
        lookup = compare(model, counter, summarising, args.new, args.repeat, prompt_lookup_num_tokens=tokens)
        report(f"prompt lookup ({tokens} tokens), {summarising.shape[1]}-token summarising prompt", lookup)

    # 1. assisted, as built and with the later layers quieted.
    plain = compare(model, counter, prompt, args.new, args.repeat, assistant_model=draft)
    report(f"assisted, 2-layer draft, random weights as built, {PROMPT}-token prompt", plain)
    with torch.no_grad():
        for block in list(model.transformer.h)[2:]:
            block.attn.out_proj.weight.mul_(args.quiet)
            block.mlp.fc_out.weight.mul_(args.quiet)
            if block.mlp.fc_out.bias is not None:
                block.mlp.fc_out.bias.mul_(args.quiet)
    quiet = compare(model, counter, prompt, args.new, args.repeat, assistant_model=draft)
    report(f"assisted, 2-layer draft, layers 3-12 output projections x{args.quiet}, {PROMPT}-token prompt", quiet)
    small = quantize_int8(copy.deepcopy(draft))
    quantized = compare(model, counter, prompt, args.new, args.repeat, assistant_model=small)
    report(f"assisted, 2-layer int8 draft, layers 3-12 output projections x{args.quiet}, {PROMPT}-token prompt",
           quantized)

    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()

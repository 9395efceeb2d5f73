"""Training throughput: polyformers' Trainer + model against the reference's, and DDP / FSDP2 on 2 processes, CPU fp32.

Reduced models with random weights, built once with the reference into ``.cache/bench/train-<family>`` and
loaded from there by both libraries (GPT-J: n_embd 256, 4 layers, 8 heads, rotary_dim 32, vocab 50400;
RoBERTa: hidden 256, 4 layers, 4 heads, intermediate 1024, vocab 50265), float32. Every contender gets the
same data: ``--batch`` (8) sequences a step, lengths drawn in [3/4, 1] x ``--seq`` (128), padded by one shared
collator to each batch's longest (GPT-J: causal LM on every token; RoBERTa: 15% of the tokens masked), and
the same TrainingArguments: max_steps ``--steps``, no logging / saving / evaluation, ``report_to="none"``,
``disable_tqdm``, ``dataloader_num_workers=0``, ``optim=--optim`` (named explicitly, since the reference's
default became fused AdamW while 4.37's is ``adamw_torch``), the rest at their defaults (dropout and gradient
clipping on, as in a real fine-tune).

Contenders, each a fresh process (or two) running this script's ``--worker`` mode:
  polyformers   polyformers' Trainer + model, 1 process, ``--threads`` (2) threads;
  reference     ``transformers.Trainer`` + the reference model class, 1 process, 2 threads;
  ddp           polyformers' Trainer under ``torchrun --nproc-per-node 2``, 1 thread each, batch / 2 each;
  fsdp          the same with ``fsdp="full_shard"`` (FSDP2).
The machine is shared, so the contenders of a family run at the same time but take turns step by step: a
token passed through FIFOs lets one of them run an optimisation step while the others wait (blocked on a read,
not spinning; the processes of a torchrun job wait together in a barrier). Set-up happens before the first
turn. A step's time runs from getting the token to the end of the step, so it holds everything the Trainer
does for a step (data loading, forward, backward, clipping, AdamW, scheduler, callbacks). The first ``WARMUP``
steps and the last one (which overlaps the others' shutdown) are not timed. tokens/s = non-padding tokens of
the timed steps / their time; each figure is the median of ``--repeat`` rounds, and ratios are the median of
the rounds' ratios (the first contender changes every round).

Printed:
1. polyformers vs reference tokens/s, ratio ours / reference (target >= 1.0x); the physical bound: the peak
   float32 matmul rate of this CPU (best of timed 2048^3 ``torch.mm``) / the model's training FLOPs per token
   (6 x every matmul weight, the LM head included, + 3 x the attention's QK^T and AV products, causal ones
   halved), and each contender's share of it;
2. DDP on 2 processes vs polyformers in 1 process on the same global batch (<= 2x on 2 cores);
3. FSDP vs DDP: per process, the peak bytes of parameters + gradients + AdamW state
   (``polyformers.training.fsdp.local_state_bytes``, taken just before every optimizer step, when the gradients
   exist), peak RSS, and the ratios FSDP / DDP (target <= 0.6 for the state).

    .venv/bin/python bench/train_throughput.py [--repeat 3] [--family gptj|roberta|all] [--steps 10]
                                               [--skip compare bound ddp fsdp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
WARMUP = 2  # untimed first steps: the first allocates the AdamW state and warms the allocator
MASK_SHARE = 0.15
EXIT_GRACE = 60  # seconds a worker may take to exit once its result is written

CONFIGS = {
    "gptj": dict(vocab_size=50400, n_positions=2048, n_embd=256, n_layer=4, n_head=8, rotary_dim=32,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "roberta": dict(vocab_size=50265, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=1024, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2),
}
CLASSES = {"gptj": ("GPTJConfig", "GPTJForCausalLM"), "roberta": ("RobertaConfig", "RobertaForMaskedLM")}
# contender -> (library, processes, fsdp)
CONTENDERS = {
    "polyformers": ("polyformers", 1, False),
    "reference": ("transformers", 1, False),
    "ddp": ("polyformers", 2, False),
    "fsdp": ("polyformers", 2, True),
}


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


# -------------------------------------------------------------------------------------------------
# model and data


def build(family: str) -> Path:
    import torch
    import transformers

    folder = CACHE / f"train-{family}"
    if (folder / "model.safetensors").exists():
        return folder
    print(f"building {folder} (once)", flush=True)
    config_name, model_name = CLASSES[family]
    config = getattr(transformers, config_name)(**CONFIGS[family])
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config)
    model.save_pretrained(folder)
    return folder


def load(library: str, family: str, folder: Path):
    import torch

    module = __import__(library)
    return getattr(module, CLASSES[family][1]).from_pretrained(folder, dtype=torch.float32)


def dataset(family: str, count: int, seq: int) -> list[dict]:
    import torch

    config = CONFIGS[family]
    vocab = config["vocab_size"]
    g = torch.Generator().manual_seed(1234)
    lengths = torch.randint(seq * 3 // 4, seq + 1, (count,), generator=g).tolist()
    out = []
    for length in lengths:
        if family == "gptj":
            ids = torch.randint(3, vocab, (length,), generator=g)
            out.append({"input_ids": ids, "labels": ids.clone()})
        else:  # <s> body </s>, 15% of the body replaced by <mask> (the last id) and predicted
            mask_id = vocab - 1
            body = torch.randint(3, vocab - 1, (length - 2,), generator=g)
            ids = torch.cat([torch.tensor([config["bos_token_id"]]), body, torch.tensor([config["eos_token_id"]])])
            chosen = torch.zeros(length, dtype=torch.bool)
            chosen[1:-1] = torch.rand(length - 2, generator=g) < MASK_SHARE
            labels = torch.where(chosen, ids, torch.full_like(ids, -100))
            out.append({"input_ids": torch.where(chosen, torch.full_like(ids, mask_id), ids), "labels": labels})
    return out


class Collate:
    """Pads a batch to its longest sequence and counts its real tokens and its padded slots."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.real: list[int] = []
        self.slots: list[int] = []

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n], mask[i, :n], labels[i, :n] = f["input_ids"], 1, f["labels"]
        self.real.append(int(mask.sum()))
        self.slots.append(mask.numel())
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -------------------------------------------------------------------------------------------------
# the worker: one contender's training run, taking turns with the others


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def turn_taker(base, take: str, give: str, ready: str):
    """A callback of the library's own ``TrainerCallback`` class: waits for the token before the first step
    and after every step but the last, passes it on after every step, and records each step's
    (got the token, step ended) times. Process 0 holds the token; the others wait in a barrier."""

    class TurnTaker(base):
        def __init__(self):
            self.steps: list[tuple[float, float]] = []
            self.start = 0.0
            self.fds = None

        def _wait(self):
            if _rank() == 0:
                if os.read(self.fds[0], 1) != b"t":
                    raise RuntimeError("the benchmark's token pipe closed")
            _barrier()
            self.start = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            if _rank() == 0:  # O_RDWR: opening a FIFO so never blocks, and writing to it never meets EPIPE
                self.fds = (os.open(take, os.O_RDWR), os.open(give, os.O_RDWR))
                fd = os.open(ready, os.O_RDWR)
                os.write(fd, b"r")
                os.close(fd)
            self._wait()

        def on_step_end(self, args, state, control, **kwargs):
            _barrier()
            self.steps.append((self.start, time.perf_counter()))
            if _rank() == 0:
                os.write(self.fds[1], b"t")
            if state.global_step < state.max_steps:
                self._wait()

    return TurnTaker()


def state_meter(base):
    """Records ``local_state_bytes(model, optimizer)`` just before every optimizer step (a step pre-hook on the
    torch optimizer): the gradients exist then, and from the second step on the AdamW state too."""
    from polyformers.training.fsdp import local_state_bytes

    class StateMeter(base):
        def __init__(self):
            self.peak = 0

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper around torch's

            def before_step(opt, *_):
                self.peak = max(self.peak, local_state_bytes(model, opt))

            inner.register_step_pre_hook(before_step)

    return StateMeter()


def worker_run(args) -> dict:
    import torch

    library, _, fsdp = CONTENDERS[args.worker]
    module = __import__(library)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} does not split over {world} processes")
    data = dataset(args.family, args.steps * args.batch, args.seq)
    model = load(library, args.family, CACHE / f"train-{args.family}")
    collate = Collate(CONFIGS[args.family]["pad_token_id"])
    turns = turn_taker(module.TrainerCallback, args.take, args.give, args.ready)
    meter = state_meter(module.TrainerCallback)
    with tempfile.TemporaryDirectory() as out:
        training_args = module.TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch // world,
            logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, optim=args.optim, seed=0, use_cpu=True,
            **({"fsdp": "full_shard"} if fsdp else {}),
        )
        trainer = module.Trainer(model=model, args=training_args, train_dataset=data, data_collator=collate,
                                 callbacks=[turns, meter])
        result = trainer.train()
    if len(turns.steps) != args.steps:
        raise RuntimeError(f"expected {args.steps} steps, the callback saw {len(turns.steps)}")
    return {"steps": turns.steps, "real": collate.real[:args.steps], "slots": collate.slots[:args.steps],
            "loss": float(result.training_loss), "state_bytes": meter.peak,
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "threads": torch.get_num_threads()}


def worker(args) -> None:
    """One contender in this process (alone or as one torchrun rank); process 0 writes the gathered figures
    to ``--result``."""
    import gc

    import torch
    import torch.distributed as dist

    def rss_kib() -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    torch.set_num_threads(args.threads)
    baseline = rss_kib()
    mine = worker_run(args)
    mine["baseline_rss_kib"] = baseline
    # The trainer is freed by now. Destroying the process group while DDP's reducer (which holds it) is
    # alive, and freeing the reducer afterwards, deadlocks in ProcessGroupGloo's destructor (torch 2.13).
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        rank = dist.get_rank()
        dist.destroy_process_group()
    else:
        every, rank = [mine], 0
    if rank == 0:  # written whole, then renamed: a result file that exists is complete
        partial = Path(args.result + ".partial")
        partial.write_text(json.dumps(every), encoding="utf-8")
        os.replace(partial, args.result)


# -------------------------------------------------------------------------------------------------
# running a round: every contender started, then the token passed round


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process under it (torchrun starts its workers in sessions of their own, so
    killing its process group would leave them waiting in a collective)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


class Round:
    """The contenders of one round, started as subprocesses, in turn order."""

    def __init__(self, family: str, names: list[str], args, tmp: Path):
        self.family, self.names, self.tmp, self.args = family, names, tmp, args
        self.procs: dict[str, subprocess.Popen] = {}
        self.files = []
        self.ready = None

    def start(self) -> None:
        family, names, tmp, args = self.family, self.names, self.tmp, self.args
        for name in names:
            os.mkfifo(tmp / f"{name}.take")
        os.mkfifo(tmp / "ready")
        self.ready = os.open(tmp / "ready", os.O_RDWR)
        for i, name in enumerate(names):
            library, processes, _ = CONTENDERS[name]
            threads = args.threads if processes == 1 else max(args.threads // processes, 1)
            script = [str(Path(__file__).resolve()), "--worker", name, "--family", family,
                      "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                      "--optim", args.optim, "--threads", str(threads), "--result", str(tmp / f"{name}.json"),
                      "--take", str(tmp / f"{name}.take"), "--give", str(tmp / f"{names[(i + 1) % len(names)]}.take"),
                      "--ready", str(tmp / "ready")]
            if processes == 1:
                command = [sys.executable, *script]
            else:
                command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
                           str(processes), "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *script]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
            env.pop("CUDA_VISIBLE_DEVICES", None)
            # Output to files, not pipes (a stray process holding a pipe cannot block us); a session of its own.
            out = open(tmp / f"{name}.stdout", "w", encoding="utf-8")
            err = open(tmp / f"{name}.stderr", "w", encoding="utf-8")
            self.files += [out, err]
            self.procs[name] = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ROOT,
                                                start_new_session=True)

    def _check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None and not (self.tmp / f"{name}.json").exists():
                raise RuntimeError(f"{name} worker failed with exit status {proc.returncode}: {' '.join(proc.args)}"
                                   f"\nstderr ends:\n{tail(self.tmp / f'{name}.stderr', 4000)}")

    def run(self) -> dict:
        deadline = time.monotonic() + self.args.timeout
        ready = 0
        while ready < len(self.names):  # every contender set up and waiting for its first turn
            self._check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the contenders were not all set up within --timeout {self.args.timeout} s")
            if select.select([self.ready], [], [], 0.5)[0]:
                ready += len(os.read(self.ready, 16))
        first = os.open(self.tmp / f"{self.names[0]}.take", os.O_RDWR)
        os.write(first, b"t")
        os.close(first)
        results, written = {}, {}
        while len(results) < len(self.names):
            self._check()
            now = time.monotonic()
            for name, proc in self.procs.items():
                path = self.tmp / f"{name}.json"
                if name in results or not path.exists():
                    continue
                written.setdefault(name, now)
                if proc.poll() is not None or now - written[name] > EXIT_GRACE:
                    if proc.poll() is None:  # its figures are in; a process hanging on its way out is ended
                        print(f"   ({name} still running {EXIT_GRACE} s after writing its result: killed)")
                        kill_tree(proc.pid)
                    results[name] = json.loads(path.read_text(encoding="utf-8"))
            if now > deadline:
                missing = [n for n in self.names if n not in results]
                raise RuntimeError(f"{', '.join(missing)} ran past --timeout {self.args.timeout} s; stderr ends:\n"
                                   + "\n".join(tail(self.tmp / f"{n}.stderr", 2000) for n in missing))
            time.sleep(0.2)
        return results

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                kill_tree(proc.pid)
        for f in self.files:
            f.close()
        if self.ready is not None:
            os.close(self.ready)


def summarise(every: list[dict]) -> dict:
    """A contender's figures from its processes' records (tokens summed over processes, the slowest time)."""
    steps = len(every[0]["steps"])
    timed = range(WARMUP, steps - 1)
    seconds = [max(x["steps"][k][1] - x["steps"][k][0] for x in every) for k in timed]
    real = sum(x["real"][k] for x in every for k in timed)
    slots = sum(x["slots"][k] for x in every for k in timed)
    return {"tokens_s": real / sum(seconds), "seconds": sum(seconds), "padding": 1 - real / slots,
            "loss": every[0]["loss"], "state_bytes": max(x["state_bytes"] for x in every),
            "peak_rss_mib": max(x["peak_rss_kib"] for x in every) / 1024,
            "baseline_rss_mib": max(x["baseline_rss_kib"] for x in every) / 1024,
            "processes": len(every), "threads": every[0]["threads"]}


def bench_family(family: str, names: list[str], args) -> dict:
    rounds = []
    for r in range(args.repeat):
        order = names[r % len(names):] + names[:r % len(names)]
        with tempfile.TemporaryDirectory() as tmp:
            contenders = Round(family, order, args, Path(tmp))
            try:
                contenders.start()
                raw = contenders.run()
            finally:
                contenders.close()
        figures = {name: summarise(raw[name]) for name in names}
        rounds.append(figures)
        print(f"   round {r + 1} (turns {' > '.join(order)}; load {load_average()}):", flush=True)
        for name in names:
            x = figures[name]
            print(f"      {name:12s} {x['processes']}x{x['threads']} threads {x['tokens_s']:7.0f} tokens/s "
                  f"({x['seconds']:.1f} s timed)  state {x['state_bytes'] / 2**20:6.1f} MiB/process  "
                  f"peak RSS {x['peak_rss_mib']:5.0f} MiB  train_loss {x['loss']:.4f}", flush=True)
    median = {name: {key: statistics.median(f[name][key] for f in rounds) for key in rounds[0][name]}
              for name in names}
    pairs = {("polyformers", "reference"), ("ddp", "polyformers"), ("fsdp", "ddp")}
    ratios = {(a, b): statistics.median(f[a]["tokens_s"] / f[b]["tokens_s"] for f in rounds)
              for a, b in pairs if a in names and b in names}
    ranges = {name: (min(f[name]["tokens_s"] for f in rounds), max(f[name]["tokens_s"] for f in rounds))
              for name in names}
    return {"median": median, "ratios": ratios, "ranges": ranges}


# -------------------------------------------------------------------------------------------------
# physical bound


def peak_gflops(threads: int, size: int = 2048, rounds: int = 12) -> float:
    """Best float32 ``torch.mm`` rate with ``threads`` threads: the most this CPU's matmuls give now."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)
    for _ in range(3):
        torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def training_flops_per_token(model, family: str, seq: int) -> tuple[float, int]:
    """(training FLOPs per token, weights in matmuls): 6 x every matmul weight (``nn.Linear``s, RoBERTa's
    decoder included though tied to the embedding) + 3 x the attention's QK^T and AV products (2 x 2 x hidden
    x context each in the forward pass; the causal context averaged to (seq + 1) / 2)."""
    from torch import nn

    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    config = model.config
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    layers = getattr(config, "n_layer", None) or config.num_hidden_layers
    context = (seq + 1) / 2 if family == "gptj" else seq
    return 6 * matmul + 3 * layers * 4 * hidden * context, matmul


# -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--family", choices=["gptj", "roberta", "all"], default="all")
    parser.add_argument("--skip", nargs="*", default=[], choices=["compare", "bound", "ddp", "fsdp"])
    parser.add_argument("--steps", type=int, default=10,
                        help=f"optimizer steps a run; the first {WARMUP} and the last are not timed")
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences a step)")
    parser.add_argument("--seq", type=int, default=128, help="longest sequence; lengths are drawn in [3/4, 1] of it")
    parser.add_argument("--threads", type=int, default=2, help="threads of a 1-process contender (split under torchrun)")
    parser.add_argument("--optim", default="adamw_torch")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed to one round")
    parser.add_argument("--worker", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    for hidden in ("--result", "--take", "--give", "--ready"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < WARMUP + 2:
        parser.error(f"--steps must be at least {WARMUP + 2}: {WARMUP} warm-up steps, the last one, and one timed")
    if args.worker:
        worker(args)
        return

    import torch
    import transformers

    import polyformers  # noqa: F401 - fail early when the package is missing

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    families = ["gptj", "roberta"] if args.family == "all" else [args.family]
    names = (["polyformers", "reference"] if "compare" not in args.skip else [])
    if "ddp" not in args.skip or "fsdp" not in args.skip:
        names = list(dict.fromkeys(names + (["polyformers"] if "ddp" not in args.skip else []) + ["ddp"]
                                   + (["fsdp"] if "fsdp" not in args.skip else [])))
    if not names:
        parser.error("--skip leaves nothing to measure")
    print(f"torch {torch.__version__}, transformers {transformers.__version__} (the reference), float32, "
          f"{os.cpu_count()} cores; load average {load_average()}")
    print(f"each run: {args.steps} steps of {args.batch} sequences of {args.seq * 3 // 4}..{args.seq} tokens "
          f"({WARMUP} first and the last untimed), optim {args.optim}; contenders {', '.join(names)} take turns "
          f"step by step; median of {args.repeat} rounds")
    peak = None
    if "bound" not in args.skip:
        peak = peak_gflops(args.threads)
        print(f"peak float32 matmul (2048^3 torch.mm, {args.threads} threads, best of 12): {peak:.1f} GFLOP/s "
              f"(load {load_average()})", flush=True)

    summary = {}
    for family in families:
        folder = build(family)
        reference = load("transformers", family, folder)
        flops, matmul = training_flops_per_token(reference, family, args.seq)
        params = sum(p.numel() for p in reference.parameters())
        del reference
        print(f"\n== {family}: {params / 1e6:.1f} M parameters ({matmul / 1e6:.1f} M in matmuls), "
              f"{flops / 1e6:.1f} MFLOP per trained token", flush=True)
        summary[family] = dict(bench_family(family, names, args), flops=flops, params=params)

    if peak is not None:  # the machine's load changes: the better of the two measurements is the bound
        again = peak_gflops(args.threads)
        print(f"\npeak float32 matmul again at the end: {again:.1f} GFLOP/s (load {load_average()})")
        peak = max(peak, again)

    print(f"\n== summary (load average now {load_average()}); tokens/s median of {args.repeat} rounds, ratios the "
          "median of the rounds' ratios")
    if peak is not None:
        print(f"   bound = peak {peak:.1f} GFLOP/s / training FLOPs per token")
    for family, row in summary.items():
        bound = peak * 1e9 / row["flops"] if peak is not None else None
        print(f"   {family}: {row['params'] / 1e6:.1f} M params, {row['flops'] / 1e6:.1f} MFLOP/token"
              + (f", bound {bound:.0f} tokens/s" if bound else ""))
        print(f"     {'contender':12s} {'procs x threads':>15s} {'tokens/s':>9s} {'range':>11s} {'of bound':>8s} "
              f"{'state MiB/proc':>14s} {'peak RSS MiB':>12s} {'train_loss':>10s}")
        for name, x in row["median"].items():
            low, high = row["ranges"][name]
            share = f"{x['tokens_s'] / bound:8.1%}" if bound else f"{'-':>8s}"
            print(f"     {name:12s} {int(x['processes']):>11d} x {int(x['threads'])} {x['tokens_s']:9.0f} "
                  f"{low:5.0f}..{high:<5.0f} {share} {x['state_bytes'] / 2**20:14.1f} {x['peak_rss_mib']:12.0f} "
                  f"{x['loss']:10.4f}")
        ratios, med = row["ratios"], row["median"]
        if ("polyformers", "reference") in ratios:  # (ddp runs under --skip ddp as the baseline of fsdp)
            print(f"     1. polyformers / reference: {ratios[('polyformers', 'reference')]:.2f}x tokens/s")
        if ("ddp", "polyformers") in ratios and "ddp" not in args.skip:
            print(f"     2. DDP 2 processes / 1 process: {ratios[('ddp', 'polyformers')]:.2f}x tokens/s")
        if ("fsdp", "ddp") in ratios:
            above = ((med["fsdp"]["peak_rss_mib"] - med["fsdp"]["baseline_rss_mib"])
                     / (med["ddp"]["peak_rss_mib"] - med["ddp"]["baseline_rss_mib"]))
            print(f"     3. FSDP / DDP: params+grads+AdamW {med['fsdp']['state_bytes'] / med['ddp']['state_bytes']:.2f}x "
                  f"(from shapes: DDP 16 B x {row['params'] / 1e6:.1f} M = {16 * row['params'] / 2**20:.0f} MiB, "
                  f"FSDP half of it), peak RSS {med['fsdp']['peak_rss_mib'] / med['ddp']['peak_rss_mib']:.2f}x "
                  f"({above:.2f}x above the {med['ddp']['baseline_rss_mib']:.0f} MiB at start), "
                  f"tokens/s {ratios[('fsdp', 'ddp')]:.2f}x")


if __name__ == "__main__":
    main()

"""Load test of ``polyformers serve``: continuous batching against serving one request at a time.

The same server runs twice on 127.0.0.1: with ``--max-batch 16`` (continuous batching) and with
``--max-batch 1`` (each request decodes alone while the others wait in the queue). For 1, 4 and 16
concurrent clients (threads, each sending ``--requests`` streamed completions one after another: a
distinct prompt of about ``--prompt-tokens`` tokens, ``--max-tokens`` new greedy tokens), it prints the
throughput (completion tokens / wall time of the phase) and the median and 95th percentile time to first
token, then the ratio of batched throughput to each other mode's per concurrency. Modes alternate over
``--repeat`` rounds and each figure is the median over rounds (the machine is shared).

Side by side, where ``transformers serve`` (the reference, version 5; it needs fastapi) runs: the same
load against it on the same folder, as it serves by default (one ``generate`` a request) and with
``--continuous-batching`` (its paged-attention scheduler), float32 on CPU with the same thread count.
It serves causal LMs only, so a Pegasus run has no peer.

The model is a reduced GPT-J with random weights (n_embd 1024, 12 layers, 16 heads, rotary_dim 64,
vocab 50400, as bench/decode_speed.py), float32, no end-of-sequence token so every request decodes
exactly ``--max-tokens`` tokens; built once by polyformers into ``.cache/bench/``.

``--model pegasus`` runs the same load against a reduced Pegasus instead (as bench/pegasus_generate.py
builds it: d_model 512, 6 + 6 layers, 8 heads, ffn 2048, vocab 96103, random weights, float32), with the
small SentencePiece test tokenizer of the test assets (prompts of about ``--prompt-tokens`` tokens), and
a logit bias of -1e4 on the end-of-sequence token and on the ids the tokenizer lacks, so that every
request decodes ``--max-tokens`` tokens and streams text from its first token on.

    .venv/bin/python bench/serve_load.py [--model gptj|pegasus] [--repeat 1] [--clients 1 4 16] [--max-tokens 64]
        [--peers [tf-serve] [tf-serve-cb]] [--bf16-cache]

``--bf16-cache`` adds the batched server with ``--kv-cache-dtype bfloat16`` (its slots' keys and values in
bfloat16).

Only 127.0.0.1 is contacted; every loop is bounded in count and each request in time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
GPT2_VOCAB = ROOT / ".cache" / "assets" / "gpt2"
SPM_MODEL = ROOT / ".cache" / "assets" / "spm" / "test_model.model"
CONFIG = dict(vocab_size=50400, n_positions=2048, n_embd=1024, n_layer=12, n_head=16, rotary_dim=64,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
PEGASUS_CONFIG = dict(
    vocab_size=96103, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=None,
)
WORDS = ("river city merchant market bridge winter harvest letter captain garden window morning story "
         "mountain silver engine library number orange island").split()


def build() -> Path:
    folder = CACHE / "serve-gptj-reduced"
    if (folder / "model.safetensors").exists():
        return folder
    print(f"building {folder} (once)", flush=True)
    import torch

    from polyformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    model = GPTJForCausalLM(GPTJConfig(**CONFIG)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_VOCAB / name, folder / name)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    return folder


def build_pegasus() -> Path:
    folder = CACHE / "serve-pegasus-reduced"
    if (folder / "model.safetensors").exists():
        return folder
    print(f"building {folder} (once)", flush=True)
    import torch

    from polyformers import PegasusConfig, PegasusForConditionalGeneration, PegasusTokenizer

    tokenizer = PegasusTokenizer(str(SPM_MODEL))
    torch.manual_seed(0)
    model = PegasusForConditionalGeneration(PegasusConfig(**PEGASUS_CONFIG)).eval()
    with torch.no_grad():
        # Never end early, and choose only ids the tokenizer has text for (so the stream carries text from
        # the first token on); the head still scores the whole vocabulary.
        model.final_logits_bias[0, PEGASUS_CONFIG["eos_token_id"]] = -1e4
        model.final_logits_bias[0, len(tokenizer):] = -1e4
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prompt(i: int, tokens: int, model: str = "gptj") -> str:
    if model == "pegasus":  # the test tokenizer splits these words into 2.6 pieces each on average
        tokens = max(1, round(tokens / 2.6))
    # Distinct prompts: GPT-2 splits these words into one token each, so the length is about ``tokens``.
    return " ".join(WORDS[(i * 7 + k * (i % 5 + 1)) % len(WORDS)] for k in range(tokens))


class Server:
    """``polyformers serve`` on a free port; ``max_batch`` 1 serves one request at a time."""

    def __init__(self, folder: Path, max_batch: int, threads: int, context: int, name: str = "gptj",
                 extra: tuple = ()):
        self.model = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polyformers", "serve", "--model", f"{name}={folder}", "--host", "127.0.0.1",
             "--port", "0", "--max-batch", str(max_batch), "--max-queue", "64", "--threads", str(threads),
             "--max-model-len", str(context), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self.url = None
        for line in self.proc.stdout:
            if "listening on http://" in line:
                self.url = "http://" + line.split("http://", 1)[1].split()[0]
                break
        if self.url is None:
            raise RuntimeError("the server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def transformers_serve_missing() -> str | None:
    """Why ``transformers serve`` cannot run here, or None where it can."""
    missing = [m for m in ("fastapi", "uvicorn", "openai", "pydantic") if importlib.util.find_spec(m) is None]
    if missing:
        return f"transformers serve needs {', '.join(missing)} (pip install -r requirements/dev.txt)"
    if shutil.which("transformers", path=str(Path(sys.executable).parent)) is None:
        return "no transformers command beside this Python"
    return None


class TransformersServer(Server):
    """The reference's ``transformers serve`` (version 5) on the same folder, on CPU in float32.

    ``continuous`` adds ``--continuous-batching`` (its paged-attention scheduler). Its torch uses
    ``threads`` threads (OMP_NUM_THREADS, as for our server). The model's name in requests is the folder.
    """

    def __init__(self, folder: Path, threads: int, continuous: bool):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.model = str(folder)
        self.url = f"http://127.0.0.1:{port}"
        argv = [str(Path(sys.executable).parent / "transformers"), "serve", str(folder), "--host", "127.0.0.1",
                "--port", str(port), "--device", "cpu", "--dtype", "float32", "--log-level", "warning"]
        if continuous:
            argv.append("--continuous-batching")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env=env)
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("transformers serve did not answer /health within 300 s")


def one_request(http, url: str, text: str, max_tokens: int, model: str = "gptj") -> tuple:
    """(time to first token, completion tokens) of one streamed greedy completion."""
    body = {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    with http.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start, tokens


def phase(server: Server, clients: int, requests: int, prompt_tokens: int, max_tokens: int,
          family: str = "gptj") -> dict:
    import httpx

    def client(c):
        results = []
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                results.append(one_request(http, server.url, prompt(c * requests + r, prompt_tokens, family),
                                           max_tokens, server.model))
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for rs in pool.map(client, range(clients)) for x in rs]
    wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {"tokens_per_s": sum(r[1] for r in results) / wall, "p50": ttft[len(ttft) // 2],
            "p95": ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))], "tokens": sum(r[1] for r in results)}


MODES = {
    "batched": "polyformers serve --max-batch 16 (continuous batching)",
    "serial": "polyformers serve --max-batch 1 (one request at a time)",
    "bf16-cache": "polyformers serve --max-batch 16 --kv-cache-dtype bfloat16",
    "tf-serve": "transformers serve (reference, version 5)",
    "tf-serve-cb": "transformers serve --continuous-batching (reference, version 5)",
}


def start(mode: str, folder: Path, threads: int, context: int, family: str) -> Server:
    if mode in ("batched", "serial"):
        return Server(folder, 16 if mode == "batched" else 1, threads, context, family)
    if mode == "bf16-cache":
        return Server(folder, 16, threads, context, family, ("--kv-cache-dtype", "bfloat16"))
    return TransformersServer(folder, threads, continuous=mode == "tf-serve-cb")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("gptj", "pegasus"), default="gptj",
                        help="the reduced model to serve (default: gptj)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2, help="requests per client per phase (default: 2)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="server torch threads (default: 2)")
    parser.add_argument("--peers", nargs="*", choices=("tf-serve", "tf-serve-cb"), default=None,
                        help="the reference's servers to load side by side (default: both where transformers "
                             "serve runs and the model is GPT-J; none with an empty list)")
    parser.add_argument("--bf16-cache", action="store_true",
                        help="also the batched server with --kv-cache-dtype bfloat16 (GPT-J)")
    args = parser.parse_args()
    folder = build() if args.model == "gptj" else build_pegasus()
    context = args.prompt_tokens + args.max_tokens + 16
    missing = transformers_serve_missing()
    if args.peers is None:
        # transformers serve loads causal LMs (and image-text models) only: a Pegasus folder is not served.
        peers = [] if missing or args.model != "gptj" else ["tf-serve", "tf-serve-cb"]
        if missing:
            print(f"no side-by-side run of the reference: {missing}", flush=True)
        elif args.model != "gptj":
            print("no side-by-side run of the reference: transformers serve does not serve encoder-decoder "
                  "models such as Pegasus", flush=True)
    else:
        if args.peers and missing:
            raise SystemExit(f"--peers {' '.join(args.peers)}: {missing}")
        peers = args.peers
    modes = ["batched", "serial", *(["bf16-cache"] if args.bf16_cache else []), *peers]
    print(f"load average before: {open('/proc/loadavg').read().strip()}", flush=True)
    figures = {mode: {c: [] for c in args.clients} for mode in modes}
    for round_ in range(args.repeat):
        order = modes if round_ % 2 == 0 else modes[::-1]
        for mode in order:
            server = start(mode, folder, args.threads, context, args.model)
            try:
                warm = phase(server, 1, 1, args.prompt_tokens, 4, args.model)  # first-call costs
                del warm
                for clients in args.clients:
                    result = phase(server, clients, args.requests, args.prompt_tokens, args.max_tokens,
                                   args.model)
                    figures[mode][clients].append(result)
                    print(f"round {round_ + 1} {mode:11s} clients {clients:2d}: {result['tokens_per_s']:7.1f} tok/s  "
                          f"TTFT p50 {result['p50'] * 1000:7.0f} ms  p95 {result['p95'] * 1000:7.0f} ms", flush=True)
            finally:
                server.stop()

    def median(mode, clients, key):
        return statistics.median(r[key] for r in figures[mode][clients])

    print()
    described = ("reduced GPT-J (n_embd 1024, 12 layers)" if args.model == "gptj"
                 else "reduced Pegasus (d_model 512, 6 + 6 layers, vocab 96103)")
    print(f"{described}, float32, {args.threads} threads; {args.requests} streamed "
          f"requests per client, ~{args.prompt_tokens}-token prompts, {args.max_tokens} new tokens; "
          f"median of {args.repeat} round(s)")
    for mode in modes:
        print(f"  {mode:<11} {MODES[mode]}")
    print(f"{'clients':>7}  {'mode':<11} {'tok/s':>8} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12}")
    for clients in args.clients:
        for mode in modes:
            print(f"{clients:>7}  {mode:<11} {median(mode, clients, 'tokens_per_s'):8.1f} "
                  f"{median(mode, clients, 'p50') * 1000:12.0f} {median(mode, clients, 'p95') * 1000:12.0f}")
        ours = median("batched", clients, "tokens_per_s")
        for other in modes[1:]:
            ratio = ours / median(other, clients, "tokens_per_s")
            print(f"{clients:>7}  ratio       {ratio:8.2f}x  (batched / {other})")
    print(f"load average after: {open('/proc/loadavg').read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

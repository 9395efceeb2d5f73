"""``polyformers serve``: the OpenAI-compatible server on the command line.

    polyformers serve --model ./gptj-tiny --model embed=./all-mpnet-base-v2 --port 8000 --max-batch 8

Models load before the socket opens; once it listens, one line on stdout gives the address (with
``--port 0`` the system picks a free port, and that line says which). SIGTERM (or Ctrl+C) stops
accepting connections, lets the requests in flight finish for up to ``--shutdown-timeout`` seconds,
cancels what is left, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from ..cli import _positive_int as _positive


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching",
                       description="Serve models over HTTP as the OpenAI API does (completions, chat, embeddings).")
    p.add_argument("--model", "-m", action="append", required=True, metavar="PATH_OR_ID|NAME=PATH",
                   help="a checkpoint to serve (repeat for several); NAME=PATH serves it under NAME "
                        "(default name: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--dtype", default=None, help="load weights as float32, bfloat16, float16 or auto")
    p.add_argument("--int8", action="store_true", help="int8 weights for the linear layers (CPU)")
    p.add_argument("--kv-cache-dtype", choices=["auto", "bfloat16"], default="auto",
                   help="keys and values of the decoder-only models' slots: auto (the model's dtype) or bfloat16 "
                        "(half the memory; a float32 model's keys and values rounded to bfloat16)")
    p.add_argument("--device", default=None, help="PyTorch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--max-batch", type=_positive, default=8,
                   help="sequences decoded together per generative model (default: 8; 1 serves one at a time)")
    p.add_argument("--max-queue", type=_positive, default=64,
                   help="requests that may wait for a slot before new ones get 429 (default: 64)")
    p.add_argument("--max-model-len", type=_positive, default=None,
                   help="cap the context (and the preallocated cache) below the model's maximum")
    p.add_argument("--prefill-chunk", type=_positive, default=512,
                   help="prompt tokens prefilled between two decoding steps (default: 512)")
    p.add_argument("--logprobs-mode", choices=["raw", "processed"], default="raw",
                   help="log-probabilities of generated tokens: the model's own (raw, default) or those the "
                        "token was chosen from, after logit_bias, penalties, temperature and top_p (processed)")
    p.add_argument("--api-key", default=os.environ.get("POLYFORMERS_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $POLYFORMERS_API_KEY, else none)")
    p.add_argument("--threads", type=_positive, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds that in-flight requests get to finish after SIGTERM (default: 30)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ImportError("polyformers serve needs uvicorn, starlette and jinja2: "
                          "pip install 'polyformers[serve]'") from None
    import torch

    from .app import create_app
    from .models import load_served_model, parse_model_arg

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {}
    for value in args.model:
        name, path = parse_model_arg(value)
        if name in models:
            raise ValueError(f"--model: two models are named {name!r}; name them with NAME=PATH")
        models[name] = load_served_model(name, path, dtype=args.dtype, int8=args.int8,
                                         kv_cache_dtype=args.kv_cache_dtype, max_batch=args.max_batch,
                                         max_queue=args.max_queue, max_model_len=args.max_model_len,
                                         prefill_chunk=args.prefill_chunk, device=args.device,
                                         logprobs_mode=args.logprobs_mode)
    app = create_app(models, api_key=args.api_key)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        sock.close()
        raise OSError(f"--host {args.host} --port {args.port}: cannot listen there: {err.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_timeout,
                            access_log=args.log_level in ("info", "debug"), lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in place that
    # second SIGTERM is a no-op and the command exits 0 after a graceful shutdown.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"polyformers serve: listening on http://{host}:{port} ({', '.join(models)})", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        for served in models.values():
            if served.scheduler is not None:
                served.scheduler.stop()
    print("polyformers serve: stopped", flush=True)
    return 0


def main(argv=None) -> int:  # ``python -m polyformers.serve.cli``
    parser = argparse.ArgumentParser(prog="polyformers")
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""CTranslate2 in a process of its own, for the benches that time it beside torch.

Run in the benches' process, CTranslate2 slows every torch contender that runs after it, for the rest of the
process: torch loads its OpenMP runtime (libgomp) into the global symbol scope, CTranslate2's library then
binds to that same runtime, and once CTranslate2's own threads have run parallel regions, the runtime manages
more threads than there are CPUs and stops letting its idle workers spin. Each of torch's parallel regions then
wakes a sleeping worker through the kernel. Measured on the reduced Pegasus of ``bench/pegasus_generate.py``
(2 threads, a 2-core Xeon): polyformers' ``generate`` 0.90 s before a CTranslate2 translation in the same
process and 1.22 s after it, even after a second's pause, with ~6000 voluntary context switches a call
against none; the reference's 1.04 s became 1.47 s.

So the benches hand CTranslate2's work to this script, started once with ``Ct2Process()``: it imports
ctranslate2 (and not torch), loads each model on first use, and times each call itself, which the bench then
reads as that contender's time. One JSON line per request and per answer on its standard streams.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


class Ct2Process:
    """The client: ``call(kind, path, compute_type, threads, method, *args, **kwargs)`` runs
    ``ctranslate2.<kind>(path, ...).<method>(*args, **kwargs)`` in the worker and returns (seconds, ids):
    the seconds the call took there, and each result's first sequence (``sequences_ids`` of a Generator,
    ``hypotheses`` of a Translator)."""

    def __init__(self):
        self._process = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)

    def call(self, kind: str, path: Path, compute_type: str, threads: int, method: str, *args, **kwargs):
        request = {"kind": kind, "path": str(path), "compute_type": compute_type, "threads": threads,
                   "method": method, "args": args, "kwargs": kwargs}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the CTranslate2 worker ended (exit status {self._process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"CTranslate2 worker: {answer['error']}")
        return answer["seconds"], answer["ids"]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=60)


def serve() -> None:
    import ctranslate2

    models = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            key = (request["kind"], request["path"], request["compute_type"], request["threads"])
            if key not in models:
                models[key] = getattr(ctranslate2, request["kind"])(
                    request["path"], device="cpu", compute_type=request["compute_type"],
                    intra_threads=request["threads"], inter_threads=1)
            method = getattr(models[key], request["method"])
            start = time.perf_counter()
            results = method(*request["args"], **request["kwargs"])
            seconds = time.perf_counter() - start
            ids = [r.sequences_ids[0] if hasattr(r, "sequences_ids") else r.hypotheses[0] for r in results]
            answer = {"seconds": seconds, "ids": ids}
        except Exception as error:  # the bench reports it and stops
            answer = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()

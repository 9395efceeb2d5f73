"""Server fixtures: tiny checkpoints built once per session, and ``polyformers serve`` run as a subprocess
on 127.0.0.1 with a port the system picks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from . import checkpoints

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def serve_checkpoints(tmp_path_factory, assets) -> dict:
    root = tmp_path_factory.mktemp("serve-models")
    return {
        # A longer context than the others: room for long generations (disconnect test, context errors).
        "gptj": checkpoints.gptj(assets, root / "gptj", n_positions=1024),
        "mpt": checkpoints.mpt(assets, root / "mpt"),
        "pegasus": checkpoints.pegasus(assets, root / "pegasus"),
        "mpnet": checkpoints.mpnet(assets, root / "mpnet"),
    }


class ServerProcess:
    """``python -m polyformers serve ...`` in a subprocess; ``url`` once it answers /health."""

    def __init__(self, args: list, startup_timeout: float = 60.0):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("POLYFORMERS_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polyformers", "serve", "--host", "127.0.0.1", "--port", "0", "--threads", "1",
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
        )
        self.lines: list = []
        self._port = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(startup_timeout) or self._port is None:
            self.kill()
            raise RuntimeError("the server did not start:\n" + "".join(self.lines[-40:]))
        self.url = f"http://127.0.0.1:{self._port}"
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            try:
                self.get("/health")
                return
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError("the server never answered /health:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on http://" in line and self._port is None:
                self._port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])
                self._ready.set()
        self._ready.set()

    def get(self, path: str, headers: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body, headers: dict | None = None) -> tuple:
        """(status, parsed JSON body) without raising on error statuses."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def server(serve_checkpoints):
    """One server holding every kind of model."""
    c = serve_checkpoints
    proc = ServerProcess(["--model", f"gptj={c['gptj']}", "--model", f"mpt={c['mpt']}", "--model",
                          f"pegasus={c['pegasus']}", "--model", f"mpnet={c['mpnet']}", "--max-batch", "8"])
    yield proc
    code = proc.terminate()
    assert code == 0, "".join(proc.lines[-30:])


@pytest.fixture()
def client(server):
    import openai

    # No retries: a retried 429 or 5xx would hide what the server answered.
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)

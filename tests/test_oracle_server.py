"""The 4.37 interpreter that the tests get (``legacy_python``) behaves as the real one: through the fork
server where it can, through the interpreter itself otherwise (tests/_oracle_server.py, _oracle_client.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import LEGACY_PYTHON

pytestmark = pytest.mark.skipif(os.environ.get("POLYFORMERS_ORACLE_SERVER") == "0",
                                reason="POLYFORMERS_ORACLE_SERVER=0: the tests call the interpreter itself")

PROBE = r"""
import json, os, sys, warnings
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "stdin": sys.stdin.read(),
                  "pid": os.getpid(), "name": __name__, "torch": "torch" in sys.modules,
                  "probe": os.environ.get("TOKENIZERS_PARALLELISM"),
                  "filters": [f[0] for f in warnings.filters[:2]]}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
"""


def _run(python, args, env=None, **kwargs):
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120,
                          env=env or dict(os.environ), **kwargs)


def _same(python, args, tmp_path, env=None, stdin="in", where="served"):
    """The launcher's run and the real interpreter's, with their outputs; checks where the launcher's ran."""
    log = tmp_path / "where.log"
    log.unlink(missing_ok=True)
    ours = _run(python, args, dict(env or os.environ, POLYFORMERS_ORACLE_LOG=str(log)), input=stdin, cwd=tmp_path)
    assert log.read_text().split(" | ")[0].split(":")[0] == where, (args, log.read_text())
    real = _run(LEGACY_PYTHON, args, env, input=stdin, cwd=tmp_path)
    return ours, real


def test_the_launcher_is_served_and_behaves_as_the_interpreter(legacy_python, tmp_path):
    assert legacy_python != LEGACY_PYTHON  # the fork server is in use
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    for args in (["-c", PROBE, "a", "b"], [str(script), "x"], ["-W", "ignore", "-c", PROBE]):
        ours, real = _same(legacy_python, args, tmp_path)
        assert (ours.returncode, ours.stderr.strip()) == (real.returncode, real.stderr.strip()) == (0, "to stderr")
        got, want = json.loads(ours.stdout), json.loads(real.stdout)
        assert got.pop("torch") and not want.pop("torch")  # served: torch was imported before the fork
        assert got.pop("pid") != want.pop("pid")
        assert got == want, args
        assert got["stdin"] == "in" and got["name"] == "__main__"


def test_exit_codes_errors_and_environment(legacy_python, tmp_path):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="yes", PYTHONWARNINGS="error")
    ours, real = _same(legacy_python, ["-c", PROBE, "3"], tmp_path, env=env)
    assert ours.returncode == real.returncode == 3
    assert json.loads(ours.stdout)["probe"] == "yes"
    assert json.loads(ours.stdout)["filters"] == json.loads(real.stdout)["filters"] == ["error", "default"]
    ours, real = _same(legacy_python, ["-c", "raise ValueError('boom')"], tmp_path)
    assert ours.returncode == real.returncode == 1
    assert ours.stderr.strip().splitlines()[-1] == real.stderr.strip().splitlines()[-1] == "ValueError: boom"
    ours, real = _same(legacy_python, ["-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"], tmp_path)
    assert ours.returncode == real.returncode == -signal.SIGTERM


def test_what_the_server_cannot_reproduce_runs_the_interpreter(legacy_python, tmp_path):
    probe = "import sys, json; print(json.dumps(['torch' in sys.modules, sys.flags.optimize]))"
    # an option the server does not take, and a variable that importing transformers reads
    for args, env in ((["-O", "-c", probe], None), (["-c", probe], dict(os.environ, USE_TF="0"))):
        ours, real = _same(legacy_python, args, tmp_path, env, where="interpreter")
        assert ours.returncode == 0, ours.stderr
        assert json.loads(ours.stdout)[0] is False, args  # a fresh interpreter: nothing preloaded
        assert ours.stdout == real.stdout


def test_a_killed_client_ends_its_child(legacy_python, tmp_path):
    marker = tmp_path / "pid"
    code = f"import os, time; open({str(marker)!r} + '.tmp', 'w').write(str(os.getpid())); " \
           f"os.rename({str(marker)!r} + '.tmp', {str(marker)!r}); time.sleep(300)"
    client = subprocess.Popen([str(legacy_python), "-c", code])
    try:
        for _ in range(1200):  # the child has started once it names itself
            if marker.exists() or client.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), f"the served run did not start (client exit code {client.poll()})"
    finally:
        client.kill()  # as subprocess.run does on a timeout
        client.wait()
    child = int(marker.read_text())
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the served child {child} outlived its client")

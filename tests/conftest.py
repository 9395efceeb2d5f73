"""Shared fixtures: where the real assets and the 4.37 reference environment live."""

from __future__ import annotations

import gc
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# XLA (JAX, and TensorFlow's jit_compile) spends most of these tiny programs' time compiling them: the
# suite compiles without LLVM's expensive passes (20% off the Flax files). What the tests compare is the
# programs' results, which the optimisation level does not change beyond rounding the tolerances cover;
# flags of one's own in XLA_FLAGS are kept and come after these (the last one given wins).
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{FAST_XLA} {os.environ.get('XLA_FLAGS', '')}".strip()

# The suite's models are tiny: one thread avoids thread start-up and contention costing more than the
# work itself on a small machine (and keeps timings of parallel test runs steady).
torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ASSETS = Path(os.environ.get("POLYFORMERS_ASSETS", ROOT / ".cache" / "assets"))
LEGACY_PYTHON = Path(os.environ.get("POLYFORMERS_LEGACY_VENV", ROOT / ".cache" / "legacy-oracle")) / "bin" / "python"


# Under pytest-xdist (`./run test` runs `-n auto --dist loadgroup`), each test file runs whole on one worker,
# so that a module-scoped fixture (most files batch their reference runs into one) is computed once; the
# folders below share session-scoped fixtures between their files (a server, the reference's config runs),
# so each runs whole on one worker. (xdist's own loadgroup reads xdist_group marks through a node id suffix
# that pytest 9 no longer keeps, which spread every file over the workers: the grouping is done here instead.)
_ONE_WORKER_FOLDERS = {"serve", "configs"}


def worker_group(nodeid: str) -> str:
    """The group of a test (run whole on one worker): its folder under tests/ for those above, else its file."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in _ONE_WORKER_FOLDERS:
        return "/".join(parts[:2])
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return ByGroup(config, log)


def pytest_collection_finish(session):
    """Move everything alive after collection (the frameworks, the test modules) out of the collector's
    reach: a full collection then walks only what the tests themselves create, not the millions of
    objects that importing TensorFlow, JAX, torch and both transformers leaves behind."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def assets() -> Path:
    """Folder of real assets fetched by scripts/fetch_assets.py. Missing assets fail: CI always has them."""
    if not (ASSETS / "READY").exists():
        pytest.fail(f"real assets missing in {ASSETS}: run `python scripts/fetch_assets.py` first")
    return ASSETS


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    """Interpreter of the venv holding the reference's 4.37 release (for slow tokenizers, TF and Flax).

    What is returned runs like that interpreter. Each call would spend seconds importing torch and
    transformers, so one fork server per pytest process imports them once (``_oracle_server.py``) and the
    returned launcher hands it each run it can reproduce exactly (``_oracle_client.py``); any other run,
    and every run with POLYFORMERS_ORACLE_SERVER=0, goes to the interpreter itself."""
    if not LEGACY_PYTHON.exists():
        pytest.fail(f"4.37 reference venv missing at {LEGACY_PYTHON}: run scripts/setup.sh first")
    if os.environ.get("POLYFORMERS_ORACLE_SERVER", "1") == "0":
        yield LEGACY_PYTHON
        return
    folder = Path(tempfile.mkdtemp(prefix="oracle-", dir="/tmp"))  # short: a socket path has 107 bytes
    socket_path = folder / "server.sock"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # each run's own is applied in its child
    log = folder / "server.log"  # the frameworks' start-up chatter, and the reason if it fails
    with open(log, "w") as handle:
        server = subprocess.Popen([str(LEGACY_PYTHON), str(HERE / "_oracle_server.py"), str(socket_path)], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=handle, text=True)
    try:
        if not select.select([server.stdout], [], [], 300)[0] or server.stdout.readline().strip() != "ready":
            server.kill()
            pytest.fail(f"the 4.37 fork server was not ready within 300 s (exit code {server.wait(timeout=60)}):\n"
                        f"{log.read_text()[-3000:]}")
        launcher = folder / "python"
        launcher.write_text(f"#!{sys.executable} -SE\n"
                            f"import sys\n"
                            f"sys.argv[1:1] = [{str(socket_path)!r}, {str(LEGACY_PYTHON)!r}]\n"
                            f"sys.path.append({str(HERE)!r})\n"
                            f"import _oracle_client\n"
                            f"_oracle_client.main()\n")
        launcher.chmod(0o755)
        yield launcher
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)

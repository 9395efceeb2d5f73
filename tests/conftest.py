"""Shared fixtures: where the real assets and the 4.37 reference environment live."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

# The suite's models are tiny: one thread avoids thread start-up and contention costing more than the
# work itself on a small machine (and keeps timings of parallel test runs steady).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
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
    """Interpreter of the venv holding the reference's 4.37 release (for slow tokenizers, TF and Flax)."""
    if not LEGACY_PYTHON.exists():
        pytest.fail(f"4.37 reference venv missing at {LEGACY_PYTHON}: run scripts/setup.sh first")
    return LEGACY_PYTHON

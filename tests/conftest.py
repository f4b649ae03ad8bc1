"""Shared test fixtures.

``RAY_ENABLE_AUTO_CONNECT=0``: no Ray API call starts a Ray implicitly; ``RAY_worker_niceness=0`` (see below).
``shared_data``: the project's real-data folder (``../shared/data`` next to the checkout, or
``$ISTANAS_SHARED_DATA``); tests that need it are skipped where it is absent.
"""
from __future__ import annotations

import os
import sys

import pytest

# A Ray call made after a test's ray.shutdown() (a lingering Tune thread, a finally block racing a worker thread)
# must fail, not silently start a fresh local Ray inside the pytest process: a cluster started that way and torn
# down again leaves the driver's core worker waiting for its GCS, and 60 s later Ray ends the whole pytest process
# with exit status 1 and no summary (seen once on a busy machine). Every code path here calls ray.init itself.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
# Ray starts its workers at niceness 15 (RAY_worker_niceness): next to any nice-0 process (`make test-busy`'s CPU
# hogs, a CI neighbour) the trials then get ~3 % of a core and a 2-minute sweep test takes over an hour.  The
# suite's Ray workers share the CPU fairly instead (the raylet and every launcher subprocess inherit this).
os.environ.setdefault("RAY_worker_niceness", "0")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # tests run from a checkout without installation
    sys.path.insert(0, REPO_ROOT)


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> str:
    """Path of the shared real-data folder (CIFAR-10 JPEG zip, Imagenette zip, zero-cost JSONs); skip if absent."""
    from istanas.data import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.skip("shared real-data folder not found (../shared/data next to the checkout or "
                    "$ISTANAS_SHARED_DATA)")
    return path


@pytest.fixture
def shared_file(shared_data):
    """``shared_file("cifar10-jpg.zip")`` -> its path, or skip when that file is missing."""

    def get(name: str) -> str:
        path = os.path.join(shared_data, name)
        if not os.path.exists(path):
            pytest.skip(f"{name} not in {shared_data}")
        return path

    return get

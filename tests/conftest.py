"""Shared test fixtures.

``shared_data``: the project's real-data folder (``../shared/data`` next to the checkout, or
``$ISTANAS_SHARED_DATA``); tests that need it are skipped where it is absent.
"""
from __future__ import annotations

import os
import sys

import pytest

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

"""Shared pytest fixtures and markers."""

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (seconds to minutes); deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared real-speech data folder (``../shared/data`` next to the repo).

    Overridable with env ``ESPNET_LOWRANK_SHARED_DATA``. Missing: fail under
    CI (env ``CI`` set), skip otherwise.
    """
    env = os.environ.get("ESPNET_LOWRANK_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        msg = "../shared/data not found: real-speech tests need it (set ESPNET_LOWRANK_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path

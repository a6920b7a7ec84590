"""Shared pytest fixtures and markers."""

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (seconds to minutes); deselect with -m 'not slow'")
    # The suite should stay under ~30 min on 2 cores: every run names its slowest tests.
    if config.option.durations is None:
        config.option.durations = 15


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


# Whisper tiny.en exp dirs shared by every test module that needs them
# (exporting and compressing once saves minutes of CI).
LIBRISPEECH = "librispeech_train-clean-100"
NUM_CALIB = 8


@pytest.fixture(scope="session")
def librispeech(shared_data_dir):
    from espnet_lowrank.data import read_data_dir

    return read_data_dir(str(shared_data_dir / LIBRISPEECH), require_text=True)


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory, librispeech):
    from espnet_lowrank.data import write_data_dir

    path = tmp_path_factory.mktemp("data") / "calib"
    write_data_dir(str(path), librispeech[:NUM_CALIB])
    return path


@pytest.fixture(scope="session")
def dense_exp(tmp_path_factory):
    """Dense Whisper tiny.en exp dir; tests read it and never write into it."""
    from espnet_lowrank.whisper.export import export_whisper

    out = tmp_path_factory.mktemp("exp") / "whisper_tiny.en"
    export_whisper("tiny.en", str(out))
    return out


@pytest.fixture(scope="session")
def lowrank_exp(dense_exp, calib_dir, tmp_path_factory):
    """tiny.en compressed by the CLI with the default config on 8 LibriSpeech utterances."""
    from espnet_lowrank.bin import compress as compress_cli

    out = tmp_path_factory.mktemp("exp") / "whisper_tiny.en_lowrank"
    compress_cli.main([
        "--asr_train_config", str(dense_exp / "config.yaml"),
        "--asr_model_file", str(dense_exp / "model.pth"),
        "--calib_data", str(calib_dir), "--num_calib", str(NUM_CALIB),
        "--output_dir", str(out),
    ])
    return out

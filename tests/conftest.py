"""Shared pytest fixtures and markers."""

import os
from pathlib import Path

import pytest

# Tiers: a test that needs real weights or real speech (one of these fixtures,
# directly or through another fixture) is an integration test; the rest run on
# toy modules and files: the fast lane, pytest -m "not integration and not slow".
# Piper synthesis and the recipes' shell runs are integration tests too.
INTEGRATION_FIXTURES = {"dense_exp", "lowrank_exp", "calib_dir", "librispeech", "shared_data_dir",
                        "shipped_conformer_run", "tiny_exp", "tiny_en"}
INTEGRATION_FILES = {"test_synthesize.py", "test_install.py", "test_conformer_recipe.py", "test_slurm.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (seconds to minutes); deselect with -m 'not slow'")
    config.addinivalue_line("markers", "integration: needs a real model or real speech (set by fixture)")
    # The suite should stay under ~30 min on 2 cores: every run names its slowest tests.
    if config.option.durations is None:
        config.option.durations = 30


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
                or item.path.name in INTEGRATION_FILES):
            item.add_marker(pytest.mark.integration)


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


@pytest.fixture(scope="session")
def shipped_conformer_run(tmp_path_factory, shared_data_dir):
    """Stages 12-13 of recipes/conformer/asr1 on the shipped Conformer in a fresh copy
    (16 AN4 calibration utterances, 3 held-out ARCTIC prompts), run once for the
    fresh-clone test and as the --nj 1 reference of the Slurm test. ``state`` is
    the low-rank exp's (plan, weights, held-out hypotheses) right after the run."""
    import types

    import torch
    import yaml
    from test_conformer_recipe import SHIPPED_EXP, _copy_recipe, _run, shipped_stage12_inputs

    root = tmp_path_factory.mktemp("conformer_clone")
    recipe = _copy_recipe(root / "clone", shipped=True)
    calib, heldout = shipped_stage12_inputs(shared_data_dir, root)
    source_bytes = (recipe / SHIPPED_EXP / "model.pth").read_bytes()
    stage12_args = ["--calib_data", str(calib), "--num_calib", "16", "--test_sets", str(heldout)]
    proc = _run(recipe, "--stage", "12", "--stop_stage", "13", *stage12_args, shared=shared_data_dir)
    assert proc.returncode == 0, proc.stderr[-5000:]
    exp = recipe / "exp" / "asr_train_asr_conformer_lowrank"
    state = (yaml.safe_load((exp / "config.yaml").read_text())["encoder_conf"]["plan"],
             torch.load(exp / "model.pth", map_location="cpu", weights_only=True),
             (exp / "decode_heldout/1best_recog/text").read_text())
    return types.SimpleNamespace(recipe=recipe, heldout=heldout, source_bytes=source_bytes,
                                 stage12_args=stage12_args, state=state)

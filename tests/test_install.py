"""A non-editable install: a wheel built from the repo, installed with
``--no-deps --target`` (the .venv's torch/ESPnet are reused), finds the default
method YAMLs from another directory and offers the console scripts."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from cli import run_cli  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SCRIPTS = [
    "espnet-lowrank-compress", "espnet-lowrank-decode", "espnet-lowrank-export-whisper",
    "espnet-lowrank-install-hook", "espnet-lowrank-launch", "espnet-lowrank-results",
    "espnet-lowrank-score", "espnet-lowrank-synthesize",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A wheel of a copy of the sources (pip builds in the source tree), installed into a folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO / "espnet_lowrank", src / "espnet_lowrank",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    run_cli([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", str(src), "-w", str(tmp / "wheel")])
    wheel, = (tmp / "wheel").glob("espnet_lowrank-*.whl")
    site = tmp / "site"
    run_cli([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
             "--target", str(site), str(wheel)])
    return site


def _env(site: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(site), ESPNET_LOWRANK_NO_TQDM="1")


def test_default_configs_come_from_the_installed_package(installed, tmp_path):
    code = (
        "import espnet_lowrank\n"
        "from espnet_lowrank.bin.compress import default_config_path\n"
        "from espnet_lowrank.conf import shipped_configs\n"
        "print(espnet_lowrank.__file__)\n"
        "print(default_config_path('whisper'))\n"
        "print(default_config_path('conformer'))\n"
        "print(' '.join(shipped_configs()))\n"
    )
    out = run_cli([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed)).stdout.splitlines()
    package = installed / "espnet_lowrank"
    assert Path(out[0]) == package / "__init__.py"
    assert Path(out[1]) == package / "conf" / "lowrank" / "whisper.yaml"
    assert Path(out[2]) == package / "conf" / "lowrank" / "conformer.yaml"
    shipped = sorted(p.stem for p in (REPO / "conf" / "lowrank").glob("*.yaml"))
    assert out[3].split() == shipped
    for stem in shipped:
        assert (package / "conf" / "lowrank" / f"{stem}.yaml").read_bytes() == \
            (REPO / "conf" / "lowrank" / f"{stem}.yaml").read_bytes()


def test_unknown_family_names_the_shipped_configs(installed, tmp_path):
    code = "from espnet_lowrank.conf import default_config_path\ndefault_config_path('nope')\n"
    proc = run_cli([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed), check=False)
    assert proc.returncode != 0
    assert "no default low-rank config for family 'nope'" in proc.stderr
    assert "whisper" in proc.stderr.splitlines()[-1]


def test_console_scripts(installed, tmp_path):
    bin_dir = installed / "bin"
    assert sorted(p.name for p in bin_dir.iterdir() if p.name.startswith("espnet-lowrank-")) == SCRIPTS
    out = run_cli([str(bin_dir / "espnet-lowrank-compress"), "--help"], cwd=tmp_path,
                  env=_env(installed)).stdout
    assert "--lowrank_config" in out and "--asr_train_config" in out
    out = run_cli([str(bin_dir / "espnet-lowrank-export-whisper"), "--help"], cwd=tmp_path,
                  env=_env(installed)).stdout
    assert "--model" in out and "--output_dir" in out

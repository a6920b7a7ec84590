"""Running commands from the tests, one way: the package's CLIs
(``python -m ...``), the bench scripts, shell recipes and tools. Output is
captured as text, every run has a timeout, and a run that must succeed fails
the test with the command and the tails of its stdout and stderr.

    from cli import python_m, run_cli, tool_env   # tests/ is on sys.path
    proc = python_m("espnet_lowrank.bin.compress", "--asr_train_config", cfg, ..., timeout=900)
    proc = run_cli(["bash", "run.sh", "--stage", "12"], cwd=recipe, env=tool_env(), check=False)
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def tool_env(**extra: str) -> dict:
    """``os.environ`` with this Python's bin folder first on PATH (the console
    scripts, ESPnet's tools) and progress bars off; ``extra`` on top."""
    return dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                ESPNET_LOWRANK_NO_TQDM="1", **extra)


def failure(proc: subprocess.CompletedProcess, stdout_tail: int = 2000, stderr_tail: int = 4000) -> str:
    """The command, then the last characters of its stdout and stderr."""
    return (f"{' '.join(map(str, proc.args))} (exit {proc.returncode})\n"
            f"{(proc.stdout or '')[-stdout_tail:]}\n{(proc.stderr or '')[-stderr_tail:]}")


def run_cli(args: Sequence, *, cwd=None, env: Optional[dict] = None, timeout: float = 300, check: bool = True,
            stdout_tail: int = 2000, stderr_tail: int = 4000) -> subprocess.CompletedProcess:
    """Run ``args`` (paths and numbers made strings) with text output captured;
    ``check``: a non-zero exit fails the test with :func:`failure`'s message.
    A run past ``timeout`` seconds raises ``subprocess.TimeoutExpired``."""
    cmd = [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, failure(proc, stdout_tail, stderr_tail)
    return proc


def python_m(module: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m module args`` with this interpreter, through :func:`run_cli`."""
    return run_cli([sys.executable, "-m", module, *args], **kwargs)


def bench_script(name: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """``python bench/<name>.py args`` with this interpreter, through :func:`run_cli`."""
    return run_cli([sys.executable, REPO / "bench" / f"{name}.py", *args], **kwargs)


def bench_module(name: str):
    """``bench/<name>.py`` loaded as a module (to call its ``main`` in process),
    without putting bench/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

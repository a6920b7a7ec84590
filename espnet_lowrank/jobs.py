"""Run N independent jobs: locally in a process pool, or on Slurm.

Each job is a command line and a log file; a failed job raises with the tail
of its log. This is the one place that knows about backends.
"""

import os
import shlex
import subprocess
import time
from typing import List, Optional, Sequence

from espnet_lowrank.progress import progress

BACKENDS = ("local", "slurm")


class JobFailed(RuntimeError):
    pass


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _launch(command: Sequence[str], log_path: str, backend: str, slurm_options: str, name: str):
    log = open(log_path, "w", encoding="utf-8")
    if backend == "local":
        return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT), log
    # sbatch --wait blocks until the job ends and returns its exit code.
    sbatch = ["sbatch", "--wait", "--parsable", f"--job-name={name}", f"--output={log_path}"]
    sbatch += shlex.split(slurm_options)
    sbatch += ["--wrap", shlex.join(["srun"] + list(command))]
    return subprocess.Popen(sbatch, stdout=log, stderr=subprocess.STDOUT), log


def run_jobs(
    commands: List[Sequence[str]],
    log_paths: List[str],
    backend: str = "local",
    max_parallel: Optional[int] = None,
    slurm_options: str = "",
    desc: str = "jobs",
) -> None:
    """Run every command; raise JobFailed naming the first failure.

    Args:
        commands: one argv list per job.
        log_paths: one log file per job.
        backend: "local" (process pool) or "slurm" (sbatch --wait per job).
        max_parallel: local concurrency (default: all at once).
        slurm_options: extra sbatch options, e.g. "-p cpu --mem 8G --time 1:00:00".
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown job backend {backend!r}; known: {BACKENDS}")
    if len(commands) != len(log_paths):
        raise ValueError("one log path per command is needed")
    for path in log_paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pending = list(range(len(commands)))
    running = {}
    limit = max_parallel or len(commands)
    failures = []
    with progress(total=len(commands), desc=desc, unit="job") as bar:
        while pending or running:
            while pending and len(running) < limit:
                job = pending.pop(0)
                running[job] = _launch(commands[job], log_paths[job], backend, slurm_options,
                                       f"{desc}.{job + 1}")
            for job, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[job]
                bar.update(1)
                if proc.returncode != 0:
                    failures.append(job)
            time.sleep(0.2)
    if failures:
        job = failures[0]
        raise JobFailed(
            f"{len(failures)} of {len(commands)} jobs failed; job {job + 1} "
            f"({log_paths[job]}):\n{_tail(log_paths[job])}"
        )

"""Run N independent jobs (a command line and a log file each) locally or on Slurm; a failed
or cancelled job raises with its log's tail. A job's named output is reused on a rerun when a
done marker beside it holds the hash of its command and input files, so a resubmission only
runs the parts that did not finish."""

import glob
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, List, Optional, Sequence

from espnet_lowrank.data import read_data_dir, select, write_data_dir
from espnet_lowrank.progress import progress
from espnet_lowrank.utils import atomic_write_text, directory_mode, is_within, real_path

logger = logging.getLogger(__name__)

BACKENDS = ("local", "slurm")
_SLURM_FAILED = ("BOOT_FAIL", "CANCELLED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                 "PREEMPTED", "TIMEOUT")
# Input files up to this size are hashed by content, larger ones (model
# weights, audio) by size and mtime: cheap, and a rewrite still counts.
_HASH_CONTENT_BYTES = 1 << 20


class JobFailed(RuntimeError):
    """A job failed or was cancelled."""


# A work dir made by :func:`work_dir_for` holds this file, naming the output
# dir it serves; no other folder is ever reused or removed.
WORK_MARKER = ".espnet_lowrank_work"


def _serves(path: str, output_dir: str) -> bool:
    marker = os.path.join(path, WORK_MARKER)
    if os.path.islink(path) or not os.path.isdir(path) or not os.path.isfile(marker):
        return False
    with open(marker, encoding="utf-8", errors="replace") as f:
        return f.read().strip() == real_path(output_dir)


def work_dir_for(output_dir: str) -> str:
    """A work dir beside ``output_dir`` for its split jobs: an earlier unfinished run's for the same
    output (its finished parts are reused), else a new one; never a folder this plugin did not make."""
    out = real_path(output_dir)
    parent, base = os.path.dirname(out), os.path.basename(out)
    for candidate in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.calib-*"))):
        if _serves(candidate, out):
            logger.info("reusing the work dir %s of an earlier run", candidate)
            return candidate
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(dir=parent, prefix=f".{base}.calib-")
    os.chmod(path, directory_mode())
    atomic_write_text(os.path.join(path, WORK_MARKER), out + "\n")
    return path


def remove_work_dir(path: str, output_dir: str, keep: Sequence[str] = ()) -> None:
    """Remove a work dir made by :func:`work_dir_for` for ``output_dir``, unless it lacks the
    marker or holds a path of ``keep`` (the source model)."""
    if not _serves(path, output_dir) or any(is_within(k, path) for k in keep):
        logger.warning("left %s in place: not a work dir of this run", path)
        return
    shutil.rmtree(path)


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _file_digest(h, path: str) -> None:
    st = os.stat(path)
    h.update(f"{path}\0{st.st_size}\0".encode())
    if st.st_size <= _HASH_CONTENT_BYTES:
        with open(path, "rb") as f:
            h.update(f.read())
    else:
        h.update(str(st.st_mtime_ns).encode())


def inputs_hash(command: Sequence[str], output: Optional[str] = None) -> str:
    """Hash of a command line and of every file (or directory's files) it names."""
    h = hashlib.sha256()
    for arg in command:
        h.update(arg.encode() + b"\0")
        if output and os.path.abspath(arg) == os.path.abspath(output):
            continue
        paths = [os.path.join(arg, n) for n in sorted(os.listdir(arg))] if os.path.isdir(arg) else [arg]
        for path in paths:
            if os.path.isfile(path):
                _file_digest(h, path)
    return h.hexdigest()


def is_done(command: Sequence[str], output: str) -> bool:
    """True when ``output`` exists and was written by this very command on these inputs."""
    try:
        with open(output + ".done", encoding="utf-8") as f:
            return os.path.isfile(output) and f.read().strip() == inputs_hash(command, output)
    except OSError:
        return False


@dataclass
class _Running:
    proc: subprocess.Popen
    log: IO
    submit_log: Optional[str] = None  # slurm: sbatch's own output (job id first)

    def slurm_id(self) -> Optional[str]:
        if not self.submit_log:
            return None
        job_id = _tail(self.submit_log, 1000).split("\n", 1)[0].strip().split(";")[0]
        return job_id if job_id.isdigit() else None


def _launch(command: Sequence[str], log_path: str, backend: str, slurm_options: str, name: str) -> _Running:
    argv, submit_log = list(command), None
    if backend != "local":
        # sbatch --wait blocks until the job ends; its own output (the job id, or
        # why it was refused) goes beside the job's log, which Slurm writes.
        submit_log = log_path + ".sbatch"
        argv = ["sbatch", "--wait", "--parsable", f"--job-name={name}", f"--output={log_path}",
                *shlex.split(slurm_options), "--wrap", shlex.join(["srun", *argv])]
    log = open(submit_log or log_path, "w", encoding="utf-8")
    return _Running(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log, submit_log)


def slurm_state(job_id: str) -> str:
    """JobState from ``scontrol show job`` (e.g. COMPLETED, FAILED, CANCELLED)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "UNKNOWN")


def _outcome(job: _Running) -> Optional[str]:
    """None for success, else what went wrong ("exit code 1", "CANCELLED", ...)."""
    if job.submit_log is None:
        return None if job.proc.returncode == 0 else f"exit code {job.proc.returncode}"
    job_id = job.slurm_id()
    if job_id is None:
        return f"sbatch refused the job: {_tail(job.submit_log, 5).strip()}"
    # sbatch --wait's exit code alone cannot tell a cancelled job from a failed one.
    state = slurm_state(job_id)
    if job.proc.returncode == 0 and state not in _SLURM_FAILED:
        return None  # COMPLETED, or COMPLETING while an epilog runs
    return f"slurm job {job_id} {state}, exit code {job.proc.returncode}"


def _stop(running: dict) -> None:
    """Cancel what is still running (on an interrupt or an error in this process)."""
    for job in running.values():
        job_id = job.slurm_id()
        if job_id:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        if job.proc.poll() is None:
            job.proc.terminate()
        job.log.close()


def run_jobs(commands: List[Sequence[str]], log_paths: List[str], backend: str = "local",
             max_parallel: Optional[int] = None, slurm_options: str = "", desc: str = "jobs",
             outputs: Optional[List[str]] = None) -> None:
    """Run every command (argv list), each logging to its log path; raise JobFailed naming the
    failures and the first one's log tail. "local" runs ``max_parallel`` processes at once (default:
    all); "slurm" runs ``sbatch --wait`` per job with ``slurm_options`` (e.g. "-p cpu --mem 8G").
    With ``outputs`` (one file per job, written atomically by the job), a job whose output is
    marked done for the same inputs is reused."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown job backend {backend!r}; known: {BACKENDS}")
    if backend == "slurm" and shutil.which("sbatch") is None:
        raise RuntimeError("--backend slurm needs sbatch on PATH (a Slurm client); none found")
    if len(commands) != len(log_paths) or (outputs is not None and len(outputs) != len(commands)):
        raise ValueError("one log path (and one output, if given) per command is needed")
    for path in log_paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pending = list(range(len(commands)))
    if outputs is not None:
        reused = [j for j in pending if is_done(commands[j], outputs[j])]
        if reused:
            logger.info("%s: reusing %d of %d finished parts (%s)", desc, len(reused), len(commands),
                        ", ".join(str(j + 1) for j in reused))
        pending = [j for j in pending if j not in reused]
        for j in pending:  # a stale marker must not outlive a rerun that fails
            if os.path.exists(outputs[j] + ".done"):
                os.remove(outputs[j] + ".done")
    running, failures = {}, {}
    limit = max_parallel or len(commands)
    try:
        with progress(total=len(pending), desc=desc, unit="job") as bar:
            while pending or running:
                while pending and len(running) < limit:
                    j = pending.pop(0)
                    running[j] = _launch(commands[j], log_paths[j], backend, slurm_options, f"{desc}.{j + 1}")
                for j, job in list(running.items()):
                    if job.proc.poll() is None:
                        continue
                    job.log.close()
                    del running[j]
                    bar.update(1)
                    problem = _outcome(job)
                    if problem:
                        failures[j] = problem
                    elif outputs is not None:
                        atomic_write_text(outputs[j] + ".done", inputs_hash(commands[j], outputs[j]) + "\n")
                time.sleep(0.2)
    except BaseException:
        _stop(running)
        raise
    if failures:
        first = min(failures)
        summary = "; ".join(f"job {j + 1}: {p}" for j, p in sorted(failures.items()))
        raise JobFailed(f"{desc}: {len(failures)} of {len(commands)} jobs failed ({summary}); "
                        f"job {first + 1} log {log_paths[first]}:\n{_tail(log_paths[first])}")


def split_calibration(compress_args: Sequence[str], calib_data: str, config, nj: int, work_dir: str,
                      backend: str = "local", slurm_options: str = "") -> List[str]:
    """Calibrate over ``nj`` jobs (at most one per batch) running ``bin.compress`` with
    ``compress_args``; returns their statistics files (in ``work_dir``), to merge with ``+``.

    The calibration set (sorted as one job sorts it) is cut at multiples of the batch size, so
    every job sees exactly the batches one job would (same padding, same statistics)."""
    if config.calibration.sequential:
        raise ValueError("sequential calibration runs in one job (it re-reads the audio per "
                         "block); drop --nj or use a one-pass config")
    utts = select(read_data_dir(calib_data), config.calibration.num_calib)
    if not utts:
        raise ValueError(f"the calibration set {calib_data} is empty")
    batch = config.calibration.batch_size
    batches = [utts[i:i + batch] for i in range(0, len(utts), batch)]
    nj = max(1, min(nj, len(batches)))
    size, extra = divmod(len(batches), nj)
    split_dir = os.path.join(work_dir, f"split{nj}")
    shutil.rmtree(split_dir, ignore_errors=True)  # parts are content-hashed: rewriting is free
    commands, logs, outputs, start = [], [], [], 0
    for j in range(1, nj + 1):
        end = start + size + (1 if j <= extra else 0)
        part = [u for batch in batches[start:end] for u in batch]
        start = end
        part_dir = os.path.join(split_dir, str(j))
        write_data_dir(part_dir, part)
        outputs.append(os.path.join(work_dir, f"stats.{j}.pt"))
        logs.append(os.path.join(work_dir, "log", f"calib.{j}.log"))
        commands.append([sys.executable, "-m", "espnet_lowrank.bin.compress", *compress_args,
                         "--calib_data", part_dir, "--num_calib", str(len(part)),
                         "--stats_out", outputs[-1]])
    logger.info("calibration on %d utterances in %d jobs (%s backend)", len(utts), nj, backend)
    run_jobs(commands, logs, backend=backend, slurm_options=slurm_options, desc="calibration",
             outputs=outputs)
    return outputs

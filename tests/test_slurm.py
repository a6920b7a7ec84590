"""Split calibration and decoding on a real one-node Slurm (tests/slurm/start.sh).

Whisper tiny.en (real weights), 4 LibriSpeech utterances in batches of 1, so
up to 4 calibration jobs. Each claim is checked against one local job: the same plan,
the same model.pth tensors (max abs diff <= 1e-6), the same decoded text. A
corrupt wav fails the run with its job's log tail and leaves no exp dir; the
rerun reuses the part that finished. A cancelled job is reported as one. The
Conformer recipe's stage 12 on the shipped, trained Conformer gives the same result
with ``--nj 4 --backend slurm`` as with one local job.

Outside CI these tests skip when ``sinfo`` is absent or no node is idle.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from espnet_lowrank.bin import compress as compress_cli
from espnet_lowrank.bin.decode import decode
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir, write_data_dir
from espnet_lowrank.jobs import JobFailed, run_jobs

pytestmark = pytest.mark.slow

LIBRISPEECH = "librispeech_train-clean-100"
NUM_CALIB = 4
NJ = 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm():
    """A Slurm with an idle node; skip (fail under CI) otherwise."""
    start = "bash tests/slurm/start.sh (after: bash setup.sh --with-slurm)"
    if shutil.which("sinfo") is None:
        reason = f"sinfo not found: Slurm tests need a running cluster; start one with {start}"
    else:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
        if "idle" in states.stdout.split():
            return
        reason = (f"no idle Slurm node (sinfo: {(states.stdout + states.stderr).strip()[:200]!r}); "
                  f"start one with {start}")
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def utts(shared_data_dir):
    return read_data_dir(str(shared_data_dir / LIBRISPEECH), require_text=True)


@pytest.fixture(scope="module")
def setup(slurm, work, utts, dense_exp):
    """Dense exp dir, calibration set, a method config of 4 batches, one local job's result."""
    dense = dense_exp
    calib = work / "calib"
    write_data_dir(str(calib), utts[:NUM_CALIB])
    config = LowRankConfig.from_yaml(str(ROOT / "conf" / "lowrank" / "whisper_tiny_liteasr.yaml"))
    config = config.replace(batch_size=1, num_calib=NUM_CALIB)
    config_path = work / "whisper_batch_1.yaml"
    config_path.write_text(yaml.safe_dump(config.sections()))
    local = work / "local"
    compress_cli.main(_compress_args(dense, calib, config_path, local))
    return dense, calib, config_path, local


def _compress_args(dense, calib, config_path, out, *extra):
    return ["--asr_train_config", str(dense / "config.yaml"), "--asr_model_file", str(dense / "model.pth"),
            "--calib_data", str(calib), "--lowrank_config", str(config_path), "--output_dir", str(out),
            *extra]


def _assert_same_model(a: Path, b: Path):
    plan_a = yaml.safe_load((a / "config.yaml").read_text())["encoder_conf"]["plan"]
    plan_b = yaml.safe_load((b / "config.yaml").read_text())["encoder_conf"]["plan"]
    assert plan_a == plan_b
    assert any(plan_a.values())
    state_a = torch.load(a / "model.pth", map_location="cpu", weights_only=True)
    state_b = torch.load(b / "model.pth", map_location="cpu", weights_only=True)
    assert state_a.keys() == state_b.keys()
    worst = max((state_a[k].double() - state_b[k].double()).abs().max().item() for k in state_a)
    assert worst <= 1e-6, worst


def test_split_calibration_on_slurm_equals_one_local_job(setup, work, caplog):
    dense, calib, config_path, local = setup
    out = work / "slurm4"
    with caplog.at_level("INFO"):
        compress_cli.main(_compress_args(dense, calib, config_path, out, "--nj", str(NJ), "--backend", "slurm"))
    assert f"calibration on {NUM_CALIB} utterances in {NJ} jobs (slurm backend)" in caplog.text
    _assert_same_model(local, out)
    # The parts are merged and gone; the report counts every frame of all windows.
    assert not list(work.glob(f".{out.name}.calib-*"))
    report = json.loads((out / "report.json").read_text())
    assert report["calibration_frames"] == NUM_CALIB * 1500


def test_split_decoding_on_slurm_equals_one_local_job(setup, work, utts):
    _, _, _, local = setup
    test = work / "test"
    write_data_dir(str(test), utts[NUM_CALIB:NUM_CALIB + NJ])
    one = Path(decode(str(local), str(test), str(work / "decode_local"), nj=1, backend="local"))
    # 2 jobs of 2 utterances: one wave on the 2-CPU node (each job pays ESPnet's ~12 s import)
    two = Path(decode(str(local), str(test), str(work / "decode_slurm"), nj=2, backend="slurm"))
    assert len(list((work / "decode_slurm" / "logdir").glob("output.*"))) == 2
    text = one.read_text()
    assert [line.split()[0] for line in text.splitlines()] == sorted(u.utt_id for u in utts[NUM_CALIB:NUM_CALIB + NJ])
    assert all(len(line.split()) > 1 for line in text.splitlines())  # every utterance got words
    assert two.read_text() == text


def test_failed_job_fails_the_run_and_a_rerun_reuses_finished_parts(setup, work, utts, caplog):
    dense, calib, config_path, local = setup
    # The same utterances in 2 parts; the last one (in part 2) now points at a corrupt file.
    broken = work / "broken.flac"
    broken.write_bytes(b"not audio at all" * 64)
    bad_utts = list(utts[:NUM_CALIB])
    bad_utts[-1] = dataclasses.replace(bad_utts[-1], wav_path=str(broken))
    bad_calib = work / "calib_bad"
    write_data_dir(str(bad_calib), bad_utts)
    out = work / "slurm_bad"
    args = _compress_args(dense, bad_calib, config_path, out, "--nj", "2", "--backend", "slurm")
    with pytest.raises(JobFailed) as failure:
        compress_cli.main(args)
    message = str(failure.value)
    assert "calibration: 1 of 2 jobs failed (job 2: slurm job" in message
    assert "FAILED" in message and str(broken) in message  # the log tail names the bad file
    # Nothing half-written: no exp dir, no temporary sibling, no statistics of part 2.
    assert not out.exists()
    assert not list(work.glob(".tmp-slurm_bad*"))
    [parts] = work.glob(f".{out.name}.calib-*")  # kept for the rerun, marked as this plugin's
    assert sorted(p.name for p in parts.glob("stats.*.pt*")) == ["stats.1.pt", "stats.1.pt.done"]
    finished = {p: p.stat().st_mtime_ns for p in parts.glob("stats.*.pt")}

    # Repair the audio and resubmit: only part 2 runs again, and the result is one local job's.
    shutil.copyfile(utts[NUM_CALIB - 1].wav_path, broken)
    with caplog.at_level("INFO"):
        compress_cli.main(args)
    assert "calibration: reusing 1 of 2 finished parts (1)" in caplog.text
    _assert_same_model(local, out)
    assert all(not p.exists() or p.stat().st_mtime_ns == t for p, t in finished.items())
    assert not parts.exists()


def test_cancelled_job_is_reported_as_cancelled(slurm, work):
    logs = [str(work / "cancel" / f"job.{j}.log") for j in (1, 2)]
    commands = [[sys.executable, "-c", "print('done')"],
                [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(300)"]]
    outcome = {}

    def run():
        try:
            run_jobs(commands, logs, backend="slurm", desc="cancel_me")
        except JobFailed as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    job_id = None
    while job_id is None and time.monotonic() - started < 60:
        time.sleep(0.5)
        squeue = subprocess.run(["squeue", "-h", "-n", "cancel_me.2", "-t", "RUNNING", "-o", "%i"],
                                capture_output=True, text=True).stdout.split()
        job_id = squeue[0] if squeue else None
    assert job_id, "the second job never started running"
    subprocess.run(["scancel", job_id], check=True)
    thread.join(timeout=90)
    assert not thread.is_alive()
    assert time.monotonic() - started < 120  # not the job's 300 s
    assert f"cancel_me: 1 of 2 jobs failed (job 2: slurm job {job_id} CANCELLED" in outcome["error"]
    assert "CANCELLED" in outcome["error"].split("\n", 1)[1]  # slurmstepd's line in the log tail


def test_local_rerun_reuses_finished_parts_and_reruns_changed_ones(tmp_path):
    """The reuse rule without Slurm: a part reruns when it failed or its inputs changed."""
    inputs = [tmp_path / f"in.{j}" for j in (1, 2)]
    outputs = [str(tmp_path / f"out.{j}") for j in (1, 2)]
    logs = [str(tmp_path / "log" / f"job.{j}.log") for j in (1, 2)]
    copy = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
    commands = [[sys.executable, "-c", copy, str(i), o] for i, o in zip(inputs, outputs)]
    inputs[0].write_text("one")  # in.2 is missing: job 2 fails
    with pytest.raises(JobFailed, match=r"jobs: 1 of 2 jobs failed \(job 2: exit code 1\)"):
        run_jobs(commands, logs, outputs=outputs)
    assert Path(outputs[0]).read_text() == "one" and not Path(outputs[1]).exists()
    first = Path(outputs[0]).stat().st_mtime_ns
    inputs[1].write_text("two")
    run_jobs(commands, logs, outputs=outputs)
    assert Path(outputs[0]).stat().st_mtime_ns == first  # reused
    assert Path(outputs[1]).read_text() == "two"
    inputs[0].write_text("ONE")  # changed input: part 1 runs again
    run_jobs(commands, logs, outputs=outputs)
    assert Path(outputs[0]).read_text() == "ONE"


def test_conformer_recipe_stage12_on_slurm_equals_one_local_job(slurm, shipped_conformer_run, shared_data_dir):
    """recipes/conformer/asr1/run.sh stage 12 on the shipped Conformer: --nj 4 --backend slurm
    gives the plan, weights and hypotheses of the --nj 1 local run (the session fixture
    ``shipped_conformer_run``, stages 12-13 of a fresh copy of the recipe)."""
    from test_conformer_recipe import _run  # tests/ is on sys.path

    recipe = shipped_conformer_run.recipe
    exp = recipe / "exp" / "asr_train_asr_conformer_lowrank"
    proc = _run(recipe, "--stage", "12", "--stop_stage", "12", *shipped_conformer_run.stage12_args,
                "--decode_dense", "false", "--nj", "4", "--backend", "slurm", shared=shared_data_dir)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "in 4 jobs" in proc.stderr
    logs = sorted((recipe / "exp/asr_train_asr_conformer_calib/log").glob("calib.*.log.sbatch"))
    assert len(logs) == 4 and all(p.read_text().strip().isdigit() for p in logs)  # 4 Slurm job ids
    plan1, state1, hyps1 = shipped_conformer_run.state
    plan4 = yaml.safe_load((exp / "config.yaml").read_text())["encoder_conf"]["plan"]
    state4 = torch.load(exp / "model.pth", map_location="cpu", weights_only=True)
    hyps4 = (exp / "decode_heldout/1best_recog/text").read_text()
    assert plan1 == plan4 and any(plan1.values())
    assert state1.keys() == state4.keys()
    worst = max((state1[k].double() - state4[k].double()).abs().max().item() for k in state1)
    assert worst <= 1e-6, worst
    assert hyps1 == hyps4 and len(hyps1.splitlines()) == 3

"""LowRankConfig: sections and flat keys, and one row per bad value, each
refused in one line that names the key."""

import glob
from pathlib import Path

import pytest

from espnet_lowrank.config import Calibration, LowRankConfig, Recovery

REPO = Path(__file__).resolve().parents[1]

# (YAML text, the key the one-line message must name, more text it must hold)
BAD_YAML = [
    ("recovery_lr: 1e-4", "recovery_lr", "expected a number, got the string '1e-4' (write 1.0e-4)"),
    ("recovery:\n  lr: 1e-4", "recovery.lr", "expected a number, got the string '1e-4' (write 1.0e-4)"),
    ('int8: "no"', "int8", "expected true or false, got the string 'no'"),
    ("int8: 1", "int8", "expected true or false"),
    ('theta_attention: "0.9"', "theta_attention", "expected a number, got the string '0.9'"),
    ("theta_attention: 0", "theta_attention", "must be in (0, 1]"),
    ("theta_feed_forward: 1.5", "theta_feed_forward", "must be in (0, 1]"),
    ("theta_feed_forward: true", "theta_feed_forward", "expected a number, got True"),
    ("ranks:\n  theta_attention: -0.1", "ranks.theta_attention", "must be in (0, 1]"),
    ("rank_multiple: 0", "rank_multiple", "must be >= 1"),
    ("rank_multiple: 2.5", "rank_multiple", "expected an integer"),
    ("rank_pattern: {'.*fc1': 0}", "rank_pattern['.*fc1']", "must be >= 1"),
    ("rank_pattern: {'(': 8}", "rank_pattern", "not a valid regular expression"),
    ("rank_pattern: [8]", "rank_pattern", "expected a mapping"),
    ("exclude_modules: fc1", "exclude_modules", "expected a list"),
    ("target_modules: 3", "target_modules", "expected a regular expression"),
    ("recovery_lr: -0.001", "recovery_lr", "must be in (0, 1]"),
    ("recovery_lr: 10.0", "recovery_lr", "must be in (0, 1]"),
    ("recovery_steps: -1", "recovery_steps", "must be >= 0"),
    ('recovery_steps: "100"', "recovery_steps", "expected an integer"),
    ("budget: 1.2", "budget", "must be in (0, 1]"),
    ("num_calib: 0", "num_calib", "must be >= 1"),
    ("batch_size: 0", "batch_size", "must be >= 1"),
    ('sequential: "yes"', "sequential", "expected true or false"),
    ("seed: -1", "seed", "must be >= 0"),
    ("attention: fast", "attention", "must be one of auto, reduced, dense"),
    ("thetaattention: 0.9", "thetaattention", "known: version, targets, ranks"),
    ("version: 2", "version", "reads low-rank config version 1, got 2"),
    ('version: "1"', "version", "expected an integer"),
    ("ranks:\n  theta: 0.9", "ranks.theta", "known in ranks: theta_attention"),
    ("recovery: 100", "recovery", "expected a mapping"),
    ("refit: all", "refit", "removed"),
    ("keep_dense_if_no_savings: true", "keep_dense_if_no_savings", "removed"),
    ("theta_attention: 0.9\nranks:\n  theta_attention: 0.8", "theta_attention", "given twice"),
    ("elastic: true", "elastic", "unknown low-rank config key"),
    ("deployment:\n  elastic: true", "deployment.elastic", "unknown option"),
]


@pytest.mark.parametrize("text,key,message", BAD_YAML, ids=[r[0] for r in BAD_YAML])
def test_bad_value_is_refused_in_one_line_naming_the_key(tmp_path, text, key, message):
    path = tmp_path / "lowrank.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as err:
        LowRankConfig.from_yaml(str(path))
    line = str(err.value)
    assert "\n" not in line, line
    assert line.startswith(f"{path}: "), line
    assert key in line and message in line, line


@pytest.mark.parametrize("content,message", [
    (b"- theta_attention: 0.9\n", "expected a mapping of options, got a list"),
    (b"theta_attention: 0.9\xff\xfe\n", "not UTF-8"),
    (b"theta_attention: [0.9\n", "not valid YAML"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "lowrank.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        LowRankConfig.from_yaml(str(path))
    assert "\n" not in str(err.value) and message in str(err.value), str(err.value)


def test_bad_values_in_code_and_on_assignment():
    with pytest.raises(ValueError, match="^recovery_lr: expected a number, got the string '1e-4'"):
        LowRankConfig(recovery_lr="1e-4")
    config = LowRankConfig()
    with pytest.raises(ValueError, match="^num_calib: must be >= 1, got 0$"):
        config.replace(num_calib=0)
    with pytest.raises(AttributeError, match="cannot assign to field 'num_calibs'"):
        config.num_calibs = 3  # frozen: no new attribute either


# Every way to change a config after it is made: a new, checked object or an
# error, and the config that was there stays as it was.
CHANGES = [
    (lambda c: setattr(c.recovery, "steps", -1), AttributeError, "cannot assign"),
    (lambda c: setattr(c.ranks, "rank_multiple", 0), AttributeError, "cannot assign"),
    (lambda c: setattr(c, "ranks", None), AttributeError, "cannot assign"),
    (lambda c: setattr(c.deployment, "attention", "bogus"), AttributeError, "cannot assign"),
    (lambda c: c.replace(recovery_steps=-1), ValueError, "^recovery_steps: must be >= 0"),
    (lambda c: c.replace(ranks={"rank_multiple": 0}), ValueError, "^ranks.rank_multiple: must be >= 1"),
    (lambda c: c.replace(theta_attention=5.0), ValueError, r"^theta_attention: must be in \(0, 1\]"),
    (lambda c: c.replace(attention="bogus"), ValueError, "^attention: must be one of auto"),
    (lambda c: c.replace(seed=-1), ValueError, "^seed: must be >= 0"),
    (lambda c: c.replace(calibration=Calibration(seed=-1)), ValueError, "seed: must be >= 0"),
]


@pytest.mark.parametrize("change,error,message", CHANGES, ids=range(len(CHANGES)))
def test_a_config_cannot_be_changed_into_a_bad_one(change, error, message):
    config = LowRankConfig()
    before = config.sections()
    with pytest.raises(error, match=message):
        change(config)
    assert config.sections() == before


def test_replace_returns_a_checked_copy():
    config = LowRankConfig(theta_attention=0.9, recovery_steps=10)
    other = config.replace(num_calib=8, recovery={"lr": 1e-4})
    assert (other.calibration.num_calib, other.recovery.steps, other.recovery.lr,
            other.ranks.theta_attention) == (8, 10, 1e-4, 0.9)
    assert (config.calibration.num_calib, config.recovery.lr) == (None, 3e-5)
    # a mapping inside a section is the one mutable thing: validate() re-checks it
    other.targets.rank_pattern["x"] = 0
    with pytest.raises(ValueError, match=r"targets.rank_pattern\['x'\]: must be >= 1"):
        other.validate()


def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\ntarget_modules: *a{levels - 1}\n"


def test_hostile_files_are_refused_in_one_short_line(tmp_path):
    import os
    import signal
    import time

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)
    long_value = tmp_path / "long.yaml"
    long_value.write_text("target_modules: [" + ", ".join(["x" * 50] * 2000) + "]\n")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    rows = [(fifo, "not a regular file"), ("/dev/zero", "not a regular file"), (tmp_path, "not a regular file"),
            (huge, "byte limit"), (long_value, "expected a regular expression"),
            (bomb, "aliases expand to more than"), (empty, "is empty"),
            (tmp_path / "missing.yaml", "not found")]
    def hung(*_):
        raise TimeoutError("reading the low-rank config hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)  # a FIFO opened for reading would block forever
    try:
        for path, message in rows:
            started = time.perf_counter()
            with pytest.raises((ValueError, FileNotFoundError)) as err:
                LowRankConfig.from_yaml(str(path))
            line = str(err.value)
            assert message in line and "\n" not in line, line
            assert len(line) < 600, len(line)
            assert time.perf_counter() - started < 5
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_every_yaml_in_the_repo_loads():
    patterns = [REPO / "conf" / "lowrank" / "*.yaml", REPO / "bench" / "configs" / "*.yaml",
                REPO / "recipes" / "*" / "asr1" / "conf" / "lowrank*.yaml",
                REPO / "recipes" / "*" / "asr1" / "conf" / "lowrank" / "*.yaml"]
    found = {str(p): sorted(glob.glob(str(p))) for p in patterns}
    assert all(found.values()), found  # every place that holds configs is searched
    for path in sorted(p for paths in found.values() for p in paths):
        LowRankConfig.from_yaml(path)


def test_sections_and_flat_keys_are_the_same_config(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("theta_attention: 0.98\nrecovery_steps: 100\nrecovery_lr: 1.0e-4\nint8: true\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("version: 1\nranks: {theta_attention: 0.98}\nrecovery: {steps: 100, lr: 1.0e-4}\n"
                      "deployment: {int8: true}\n")
    a, b = LowRankConfig.from_yaml(str(flat)), LowRankConfig.from_yaml(str(nested))
    assert a == b
    assert a == LowRankConfig(theta_attention=0.98, recovery=Recovery(steps=100, lr=1e-4), int8=True)
    assert (a.ranks.theta_attention, a.recovery.lr, a.deployment.int8) == (0.98, 1e-4, True)
    assert not hasattr(a, "theta_attention") and not hasattr(a, "recovery_lr")  # flat names: input only
    assert LowRankConfig.from_dict(a.to_dict()) == a
    assert LowRankConfig.from_dict(a.sections()) == a
    assert set(a.to_dict()) == {
        "version", "target_modules", "exclude_modules", "rank_pattern", "theta_attention", "theta_feed_forward",
        "rank_multiple", "budget", "num_calib", "batch_size", "sequential", "seed", "pack_seconds", "recovery_steps",
        "recovery_lr", "recovery_objective", "recovery_scope", "recovery_final_steps", "recovery_recompute_blocks",
        "recovery_return_freed_memory", "attention", "int8", "int8_smoothing"}
    defaults = LowRankConfig()
    assert (defaults.deployment.attention, defaults.calibration.seed) == ("auto", 0)

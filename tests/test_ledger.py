"""bench/RESULTS.md is generated from bench/ledger.jsonl, and what points into it resolves.

Fast: no model loads, only JSON and text (the generator runs in a subprocess).
"""
import json
import re
from pathlib import Path

from espnet_lowrank.eval.ledger import machine_of, settings_hash, wer_entry
from cli import bench_module, bench_script, run_cli  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
DECISIONS = ROOT / "bench" / "DECISIONS.md"
LEDGER = ROOT / "bench" / "ledger.jsonl"
# Files whose prose points into RESULTS.md / DECISIONS.md sections by title.
POINTING = ["README.md", "bench/README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/asr1/README.md")),
            *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "espnet_lowrank/conf/lowrank").glob("*.yaml"))]
REF = re.compile(r"(?<![\w/])(?:bench/)?(RESULTS|DECISIONS)\.md\)?[,:]?\s*\(?\s*\"([^\"]+)\"")


def test_results_md_is_what_the_generator_makes_from_the_ledger():
    run = bench_script("make_results", "--check", cwd=ROOT, timeout=120, check=False)
    assert run.returncode == 0, run.stderr


def test_ledger_is_what_the_committed_result_files_give():
    """A result file committed without ``make_results.py --import`` (after the commit) leaves the ledger stale."""
    gen = bench_module("make_results")
    rebuilt = gen.build_ledger(ROOT, gen.SHIPPED, gen.DIARY_COMMIT, gen.DIARY_TABLES)
    ledger = [json.loads(line) for line in LEDGER.read_text().splitlines()]
    stale = [r["id"] for r, s in zip(rebuilt, ledger) if json.dumps(r, sort_keys=True) != json.dumps(s, sort_keys=True)]
    assert len(rebuilt) == len(ledger) and not stale, (len(rebuilt), len(ledger), stale[:5])
    assert {r["kind"] for r in ledger} >= {"heldout", "cost", "recipe", "e2e", "speed"}


def test_results_md_is_short_and_names_the_diary():
    text = RESULTS.read_text()
    assert len(text.splitlines()) < 400
    assert "git show c3cce98:bench/RESULTS.md" in text


def test_every_ledger_row_names_a_committed_source():
    rows = [json.loads(line) for line in LEDGER.read_text().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows)
    tracked = set(run_cli(["git", "ls-files"], cwd=ROOT).stdout.splitlines())
    for r in rows:
        for key in ("kind", "commit", "date", "source", "command"):
            assert r.get(key), (r["id"], key)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", r["date"]), r["id"]
        if r["source"].startswith("git show "):
            continue
        assert r["source"] in tracked, r["source"]


def _squash(text):
    return re.sub(r"\s+", " ", text.replace("#", " ").replace("`", ""))


def test_references_into_results_and_decisions_resolve():
    targets = {"RESULTS": _squash(RESULTS.read_text()), "DECISIONS": _squash(DECISIONS.read_text())}
    dangling = []
    for rel in POINTING:
        text = _squash((ROOT / rel).read_text())
        for which, title in REF.findall(text):
            if _squash(title) not in targets[which]:
                dangling.append(f"{rel}: {which}.md \"{title}\"")
    assert not dangling, dangling


def test_no_ordinal_session_dating_or_issue_numbers_in_the_record():
    ordinal = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|"
                         r"thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|"
                         r"twenty-\w+|thirtieth)[ -]session|\bissue[ -]\d+", re.I)
    for rel in ["bench/RESULTS.md", "bench/DECISIONS.md", "bench/README.md", *POINTING]:
        hits = ordinal.findall((ROOT / rel).read_text())
        assert not hits, (rel, hits)


def test_decisions_name_result_files_and_commits_that_exist():
    """Each DECISIONS.md row's result folders/files exist and its commits resolve in this repository."""
    lines = [l for l in DECISIONS.read_text().splitlines() if l.startswith("| ") and not l.startswith("| lever")]
    assert len(lines) > 30
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 5, line
        for name in re.findall(r"`([^`]+)`", cells[3]):
            assert (ROOT / "bench/results" / name).exists() or (ROOT / name).exists(), (name, line)
        commits = re.findall(r"\b[0-9a-f]{7}\b", cells[4])
        if "not in this repository" in cells[4]:
            commits = commits[:1]
        assert commits, line
        for c in commits:
            ok = run_cli(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT, check=False).returncode == 0
            assert ok, (c, line)


def test_ledger_cells_from_result_files():
    """``espnet_lowrank.eval.ledger``'s small parts: a settings hash ignores key
    order, a machine line names what was pinned, a held-out cell is rounded."""
    assert settings_hash({"a": 1, "b": [2, 3]}) == settings_hash({"b": [2, 3], "a": 1})
    assert len(settings_hash({})) == 12 and settings_hash({"a": 1}) != settings_hash({"a": 2})
    runtime = {"cpu": "Intel(R) Xeon(R) Processor @ 2.1GHz", "cpu_capability": "AVX2", "threads": 2,
               "env": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": None, "OMP_NUM_THREADS": "2"}}
    assert machine_of(runtime) == "Intel Xeon @ 2.1GHz, AVX2, 2 threads, ATEN_CPU_CAPABILITY set"
    assert machine_of(None) is None
    cell = {"err": 5.123456, "sub": 4.0, "del": 0.5, "ins": 0.623456, "utts": 3, "words": 40,
            "delta": [1.00001, -0.5, 2.5]}
    assert wer_entry(cell) == {"wer": 5.1235, "sub": 4.0, "dele": 0.5, "ins": 0.6235, "utts": 3, "words": 40,
                               "delta": [1.0, -0.5, 2.5], "against": "dense"}

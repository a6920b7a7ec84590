"""bench/RESULTS.md is generated from bench/ledger.jsonl, and what points into it resolves.

Fast: no model loads, only JSON and text (the generator runs in a subprocess).
"""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
DECISIONS = ROOT / "bench" / "DECISIONS.md"
LEDGER = ROOT / "bench" / "ledger.jsonl"
# Files whose prose points into RESULTS.md / DECISIONS.md sections by title.
POINTING = ["README.md", "bench/README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/asr1/README.md")),
            *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "espnet_lowrank/conf/lowrank").glob("*.yaml"))]
REF = re.compile(r"(?<![\w/])(?:bench/)?(RESULTS|DECISIONS)\.md\)?[,:]?\s*\(?\s*\"([^\"]+)\"")


def test_results_md_is_what_the_generator_makes_from_the_ledger():
    run = subprocess.run([sys.executable, "bench/make_results.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_results_md_is_short_and_names_the_diary():
    text = RESULTS.read_text()
    assert len(text.splitlines()) < 400
    assert "git show c3cce98:bench/RESULTS.md" in text


def test_every_ledger_row_names_a_committed_source():
    rows = [json.loads(line) for line in LEDGER.read_text().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
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
            ok = subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT).returncode == 0
            assert ok, (c, line)

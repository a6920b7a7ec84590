"""bench/ledger.jsonl's rows, read from committed result files: held-out
and Pareto tables, rescored pairs (score_hyps output), compress-cost reports,
the recipes' RESULTS.md summaries, end-to-end runs (e2e_speed output) and the
diary's speed tables. Each row names
its source file, the commit that added it and its date, and a hash of the
config's settings. Only git and the files are read; nothing loads a model."""

import hashlib
import json
import re
import subprocess
from pathlib import Path

import yaml


def git(root, *args):
    """The stdout of ``git ARGS`` in ``root``."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def added(root, path):
    """(short commit, date) of the commit that added a committed file."""
    out = git(root, "log", "--diff-filter=A", "--format=%h %cs", "--", str(path)).split("\n")[0].split()
    if not out:
        out = git(root, "log", "-1", "--format=%h %cs", "--", str(path)).split()
    return out[0], out[1]


def committed_json(root, *patterns):
    """(path, data, repository-relative path, commit, date) of each JSON result file under
    bench/results matching ``patterns``, in path order; commit and date from :func:`added`."""
    files = sorted(f for pattern in patterns for f in (root / "bench/results").glob(pattern))
    for f in files:
        rel = f.relative_to(root).as_posix()
        yield (f, json.loads(f.read_text()), rel, *added(root, rel))


def settings_hash(settings):
    """12 hex digits of the sha256 of the settings as sorted, compact JSON."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def config_at(root, path, commit):
    """Hash of a committed YAML's settings at a commit, or None."""
    name = Path(path).name
    candidates = [path] if not path.startswith("conf/lowrank") else []
    candidates += [f"espnet_lowrank/conf/lowrank/{name}", f"conf/lowrank/{name}"]
    for p in candidates:
        try:
            text = git(root, "show", f"{commit}:{p}")
        except subprocess.CalledProcessError:
            continue
        if "\n" not in text.strip() and text.strip().endswith(".yaml"):  # a symlink's target
            continue
        return settings_hash(yaml.safe_load(text))
    return None


def named_config(root, name, commit):
    """(path, hash) of a config YAML named like a result row, as committed then; (None, None) if none."""
    for path in (f"bench/configs/{name}.yaml", f"conf/lowrank/{name}.yaml"):
        h = config_at(root, path, commit)
        if h:
            return path, h
    return None, None


def machine_of(runtime):
    """One line for report.json's ``runtime``: CPU, ISA, threads, what was pinned."""
    if not runtime:
        return None
    runtime = dict(runtime, cpu=str(runtime.get("cpu")).replace("Intel(R) Xeon(R) Processor", "Intel Xeon"))
    pinned = sorted(k for k, v in (runtime.get("env") or {}).items() if v and k != "OMP_NUM_THREADS")
    note = (", ISA pinned" if len(pinned) == 3 else f", {' and '.join(pinned)} set" if pinned else "")
    return f"{runtime.get('cpu')}, {runtime.get('cpu_capability')}, {runtime.get('threads')} threads{note}"


def cost_rows(root):
    """id -> row of every compress-cost report (cost.json)."""
    rows = {}
    for f, d, rel, commit, date in committed_json(root, "cost_*/cost.json", "arithmetic_env/*/cost.json"):
        report = f.parent / "report.json"
        cfg = d.get("config")
        chash, hash_of = None, None
        if cfg and not cfg.startswith("/"):
            chash, hash_of = config_at(root, cfg, commit), f"{cfg} at {commit}"
        if chash is None and report.exists():
            chash, hash_of = settings_hash(json.loads(report.read_text())["config"]), "report.json config"
        model = d.get("model", "")
        model = "base" if model.endswith("whisper_base") else "tiny.en" if model.endswith("tiny.en") else model
        key = f.parent.relative_to(root / "bench/results").as_posix()
        rows[key] = dict(
            id=key, kind="cost", model=model, config=Path(cfg).stem if cfg else None,
            config_path=cfg, config_hash=chash, config_hash_of=hash_of, commit=commit, date=date,
            machine=machine_of(d.get("runtime")), cpus=d.get("cpus"),
            params_kept_pct=round(d["kept_percent"], 2) if d.get("kept_percent") else None,
            cost=dict(seconds=round(d["wall_s"]), peak_rss_mb=round(d["peak_rss_mb"]),
                      steps={k: v for k, v in (d.get("steps") or {}).items()},
                      recovery_loss=[d.get("recovery_loss_before"), d.get("recovery_loss_after")]),
            source=rel,
            recovery_best_step=d.get("recovery_best_step"),
            command=f"python bench/compress_cost.py --config {cfg} --model {d.get('model')} --out_dir bench/results/{key}")
    return rows


def wer_entry(s):
    """A held-out table's set cell as a ledger entry."""
    e = dict(wer=round(s["err"], 4), sub=round(s["sub"], 4), dele=round(s["del"], 4), ins=round(s["ins"], 4),
             utts=s.get("utts"), words=s.get("words"))
    if s.get("delta"):
        e["delta"] = [round(x, 4) for x in s["delta"]]
        e["against"] = "dense"
    return e


def heldout_rows(root, costs, shipped):
    """Every row of every heldout.json; ``shipped`` names the runs of the shipped configs."""
    runs = {}
    for model, (config, rs) in shipped.items():
        for r in rs:
            runs[(r["heldout"], r["row"])] = (model, config, r)
    out = []
    for f, d, rel, commit, date in committed_json(root, "*/heldout.json"):
        folder = f.parent.name
        model = re.match(r"Model `([^`]+)`", d["meta"]).group(1)
        threads = re.search(r"(\d+) threads", d["meta"])
        for row in d["rows"]:
            name = row["name"]
            base_name, int8 = (name[:-len(" + int8")], "plain") if name.endswith(" + int8") else (name, None)
            if name.endswith(", no loop guard"):
                base_name, int8 = name.split(" + int8")[0], "plain, no loop guard"
            e = dict(id=f"{folder}:{name}", kind="heldout", model=model, name=name, int8=int8,
                     commit=commit, date=date, threads=int(threads.group(1)) if threads else None,
                     params_kept_pct=round(row["params_pct"], 2),
                     sets={k: wer_entry(v) for k, v in row["sets"].items()}, source=rel, source_row=name)
            if base_name == "dense":
                e["role"] = "dense + int8" if int8 else "dense"
            elif base_name.startswith("LiteASR mode"):
                e["role"] = "liteasr"
            elif (folder, base_name) in runs:
                m, config, r = runs[(folder, base_name)]
                c = costs.get(r["cost"], {})
                e.update(role="shipped", config=config, run=r["run"], machine=c.get("machine"),
                         config_hash=c.get("config_hash"), cost_source=c.get("source"))
            else:
                e["role"] = "other"
                path, h = named_config(root, base_name, commit)
                if path:
                    e.update(config=Path(path).stem, config_path=path, config_hash=h)
            e["command"] = (f"python bench/heldout_eval.py --model {model} --exps EXP_DIR ... "
                            f"--sets librispeech_train-clean-100 vctk arctic_cathy_a:100 pocketsphinx "
                            f"--out_dir bench/results/{folder}")
            out.append(e)
    return out


RESCORE = re.compile(r"^(\S+): (.*)$")
SETPART = re.compile(r"(\S+) ([\d.]+) \(([\d.]+) / ([\d.]+) / ([\d.]+)\), (\d+) utts, Δ (\S+) ([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]")


def rescore_rows(root, shipped):
    """score_hyps.py outputs kept in bench/results/*.txt: a row paired against another."""
    smoothed = {}
    for model, (config, rs) in shipped.items():
        for r in rs:
            if "smoothed" in r:
                smoothed[(r["smoothed"][0], r["smoothed"][1], r["smoothed"][2])] = (model, config, r)
    out = []
    for f in sorted((root / "bench/results").glob("*.txt")):
        rel = f.relative_to(root).as_posix()
        commit, date = added(root, rel)
        command = None
        for line in f.read_text().splitlines():
            if line.startswith("$ python bench/score_hyps.py"):
                command = line[2:]
                continue
            m = RESCORE.match(line)
            if not m or "utts, Δ" not in line:
                continue
            name, parts = m.group(1), m.group(2).split(" | ")
            sets, against = {}, None
            for p in parts:
                s = SETPART.match(p)
                if not s:
                    continue
                against = s.group(7)
                sets[s.group(1)] = dict(wer=float(s.group(2)), sub=float(s.group(3)), dele=float(s.group(4)),
                                        ins=float(s.group(5)), utts=int(s.group(6)),
                                        delta=[float(s.group(8)), float(s.group(9)), float(s.group(10))],
                                        against=against)
            model = "tiny.en" if "tiny" in name else "base"
            if command is None:  # the file kept only the output: name the hypotheses it scored
                runs = [d.parent.parent.name for d in (root / "bench/results").glob(f"heldout_*/hyps/{name}")]
                command = (f"python bench/score_hyps.py bench/results/{runs[0] if runs else 'heldout_X'} {name} "
                           f"--against {against}  # reconstructed: {f.name} keeps only the output")
            e = dict(id=f"{f.name}:{name}:vs:{against}", kind="rescore", model=model, name=name,
                     int8="smoothed" if ("smoothing" in name or "smoothed" in name or f.name == "base_fourth_run.txt") and "int8" in name else ("plain" if "int8" in name else None),
                     commit=commit, date=date, sets=sets, against=against, source=rel, source_row=name,
                     command=command)
            key = (f.name, name, against)
            if key in smoothed:
                m_, config, r = smoothed[key]
                e.update(role="shipped", config=config, run=r["run"], int8="smoothed")
            else:
                e["role"] = "other"
            out.append(e)
    return out


def pareto_rows(root):
    """Every row of every pareto.json."""
    out = []
    for f, d, rel, commit, date in committed_json(root, "*/pareto.json"):
        model = re.match(r"Model `([^`]+)`", d["meta"]).group(1) if isinstance(d, dict) else None
        for i, row in enumerate(d["rows"]):
            sets = {}
            for k, w in (row.get("wer") or {}).items():
                det = (row.get("wer_detail") or {}).get(k, {})
                sets[k] = dict(wer=round(w, 4), sub=round(det["sub"], 4) if "sub" in det else None,
                               dele=round(det["del"], 4) if "del" in det else None,
                               ins=round(det["ins"], 4) if "ins" in det else None)
            path, h = named_config(root, row["name"], commit) if row.get("kind") == "config" else (None, None)
            out.append(dict(
                id=f"{f.parent.name}:{i}:{row['name']}{' + int8' if row.get('int8') else ''}", kind="pareto",
                config=Path(path).stem if path else None, config_path=path, config_hash=h,
                model=model, name=row["name"], int8="plain" if row.get("int8") else None,
                role="dense" if row["name"] == "dense" else "other", commit=commit, date=date, sets=sets,
                params=row.get("params"), gflops=row.get("gflops"), lat_ratio=row.get("lat_ratio"),
                enc_mb=row.get("enc_mb"), compress_s=row.get("compress_s"), source=rel, source_row=row["name"],
                command=f"python bench/pareto.py --model {model} ... --out_dir bench/results/{f.parent.name}"))
    return out


def e2e_rows(root):
    """Every row of every e2e.json (bench/e2e_speed.py), one per variant and thread count."""
    out = []
    for f, d, rel, commit, date in committed_json(root, "e2e_*/e2e.json"):
        model = f.parent.name[len("e2e_"):]
        for threads, rows in d["results"].items():
            for r in rows:
                sets = {k: dict(wer=round(w["err"], 4), sub=round(w["sub"], 4), dele=round(w["dele"], 4),
                                ins=round(w["ins"], 4), utts=w["snt"]) for k, w in r["wer"].items()}
                share = r.get("encoder_share")
                out.append(dict(
                    id=f"{f.parent.name}:{threads}:{r['name']}", kind="e2e", model=model, name=r["name"],
                    role="dense" if r["name"].startswith("dense") and r["vs_dense"] == 1.0 else "other",
                    threads=int(threads), seconds=round(r["seconds"], 1), rtf=round(r["rtf"], 4),
                    vs_dense=round(r["vs_dense"], 3), encoder_share=None if share is None else round(share, 3),
                    sets=sets, commit=commit, date=date, source=rel, command=d["command"]))
    return out


def recipe_rows(root):
    """The summary rows of the recipes' RESULTS.md."""
    out = []
    for rel in ["recipes/conformer/asr1/RESULTS.md", "recipes/whisper/asr1/RESULTS.md"]:
        text = (root / rel).read_text()
        commit, date = git(root, "log", "-1", "--format=%h %cs", "--", rel).split()
        machine = re.search(r"- machine: (.*)", text).group(1)
        command = re.search(r"- command: `(.*)`", text).group(1)
        lines = text.split("## Summary")[1].strip().splitlines()
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        for line in lines[2:]:
            if not line.startswith("|"):
                break
            cells = dict(zip(head, [c.strip() for c in line.strip("|").split("|")]))
            name = cells["model"]
            sets = {k[4:]: dict(wer=float(v)) for k, v in cells.items() if k.startswith("WER ")}
            recipe = rel.split("/")[1]
            role = "dense" if name in ("asr_train_asr_conformer", "whisper_tiny.en") else "other"
            if name.endswith("liteasr_0.95_0.97"):
                role = "liteasr"
            elif name.endswith("int8_reduced"):
                role = "liteasr + int8"
            elif name.endswith("lowrank_best"):
                role = "shipped"
            elif name == "whisper_tiny.en_lowrank":
                role = "default"
            num = lambda k: None if cells.get(k, "-") == "-" else float(cells[k].replace(",", ""))
            out.append(dict(
                id=f"{rel}:{name}", kind="recipe", model="conformer" if recipe == "conformer" else "tiny.en",
                name=name, role=role, commit=commit, date=date, machine=machine, sets=sets,
                params_kept_pct=round(100 * num("params ratio"), 1), enc_mb=num("enc. MB"),
                flops_ratio=num("FLOPs ratio"), lat_ratio=num("latency ratio"),
                cost=dict(seconds=num("compress time (s)"), peak_rss_mb=num("compress peak RSS (MB)")),
                source=rel, source_row=name, command=f"(cd recipes/{recipe}/asr1 && {command})"))
    return out


def diary_rows(root, diary_commit, diary_tables):
    """The speed tables of the diary (``diary_commit:bench/RESULTS.md``) that have no result file."""
    text = git(root, "show", f"{diary_commit}:bench/RESULTS.md").splitlines()
    out = []
    for first, last, what, command in diary_tables:
        first_row = "|".join(text[first - 1].split("|")[-6:-4])  # two numbers of the table's first row
        commit, date = git(root, "log", "--reverse", "--format=%h %cs", "-S", first_row, diary_commit,
                           "--", "bench/RESULTS.md").split("\n")[0].split()
        head = None
        for ln in range(first - 3, last):
            line = text[ln]
            cells = [c.strip().replace("*", "").replace("`", "") for c in line.strip().strip("|").split("|")]
            if ln == first - 3:
                head = cells
                continue
            if ln == first - 2:
                continue
            r = dict(zip(head, cells))
            out.append(dict(
                id=f"{what}:{ln + 1}", kind="speed", table=what, model=r.get("model"),
                threads=int(r["threads"]), mode=r.get("mode", "eager"), input=r.get("input", "30 s"),
                dense_ms=float(r["dense ms"]), compressed_ms=float(r["compressed ms"]),
                lat_ratio=float(r["lat ratio"]), flop_ratio=float(r["FLOP ratio"]),
                efficiency=float(r["efficiency"]), note=r.get("run", ""),
                machine="AMD EPYC, 2 logical CPUs (shared VM)", commit=commit, date=date,
                source=f"git show {diary_commit}:bench/RESULTS.md (lines {first}-{last})", command=command))
    return out


def build_ledger(root, shipped, diary_commit, diary_tables):
    """Every ledger row, read from the committed files under ``root``."""
    costs = cost_rows(root)
    rows = (heldout_rows(root, costs, shipped) + rescore_rows(root, shipped) + list(costs.values())
            + pareto_rows(root) + recipe_rows(root) + e2e_rows(root) + diary_rows(root, diary_commit, diary_tables))
    for model, (config, rs) in shipped.items():
        for r in rs:
            c = costs[r["cost"]]
            c.update(role="shipped", config=config, run=r["run"])
    return rows

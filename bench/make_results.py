#!/usr/bin/env python
"""bench/RESULTS.md, generated from bench/ledger.jsonl.

    python bench/make_results.py              # write bench/RESULTS.md from the ledger
    python bench/make_results.py --check      # exit 1 if bench/RESULTS.md is not the ledger's
    python bench/make_results.py --import     # rebuild bench/ledger.jsonl from bench/results/

The ledger is one JSON line per run (a row of a held-out or Pareto table, a
rescored pair, a compress-cost report, a recipe summary row, a speed
measurement). Every row names the committed file it was read from
(``source``), the commit that added that file and its date, the config and a
hash of its settings, the machine where the source says it, the sets and the
metrics. ``--import`` reads only committed files: bench/results/*, the recipe
RESULTS.md files and, for the speed tables that have no result file, the
diary at commit c3cce98 (``git show c3cce98:bench/RESULTS.md``).
Nothing here loads a model; the check runs in a second.
"""
import argparse
import json
import sys
from pathlib import Path

from espnet_lowrank.eval.ledger import build_ledger
from espnet_lowrank.eval.tables import ci, find, fmt, sdi, spread

ROOT = Path(__file__).resolve().parent.parent
LEDGER = ROOT / "bench" / "ledger.jsonl"
RESULTS = ROOT / "bench" / "RESULTS.md"
DIARY_COMMIT = "c3cce98"
SETS = ["librispeech_train-clean-100", "vctk", "arctic_cathy_a", "pocketsphinx"]
SET_TITLE = {"librispeech_train-clean-100": "LibriSpeech", "vctk": "VCTK",
             "arctic_cathy_a": "ARCTIC", "pocketsphinx": "PocketSphinx"}

# The runs of the shipped configs: which row of which committed file is which
# run, and the compress-cost report of the same run (machine, time, memory).
SHIPPED = {
    "tiny.en": ("whisper_tiny_best", [
        dict(run=1, heldout="heldout_tiny.en_decoder+tokens",
             row="tiny_seq_budget_sensitivity_recovery300_lr1e-4_decoder+tokens_calib128_packed",
             cost="cost_tiny_decoder+tokens_chunked"),
        dict(run=2, heldout="heldout_tiny.en_rerun_int8", row="tiny_best_default",
             cost="cost_tiny_best_rerun_default"),
        dict(run=3, heldout="heldout_tiny.en_rerun_int8", row="tiny_best_pinned_avx2",
             cost="cost_tiny_best_rerun_pinned_avx2"),
        dict(run=4, heldout="heldout_tiny.en_xeon", row="whisper_tiny_best_xeon",
             cost="cost_tiny_best_xeon_smoothing",
             smoothed=("int8_smoothing_shipped_tiny.en.txt", "whisper_tiny_best_xeon_smoothing_+_int8",
                       "whisper_tiny_best_xeon")),
    ]),
    "base": ("whisper_base_best", [
        dict(run=1, heldout="heldout_base_decoder+tokens",
             row="base_seq_budget0.645_sensitivity_recovery200_decoder+tokens_calib128_packed",
             cost="cost_base_decoder+tokens",
             int8_note="before the decoder's loop guard: one LibriSpeech utterance loops"),
        dict(run=2, heldout="heldout_base_loop_guard",
             row="base_seq_budget0.645_sensitivity_recovery200_decoder+tokens_calib128_packed",
             cost="cost_base_decoder+tokens_rerun"),
        dict(run=3, heldout="heldout_base_rerun_pinned", row="whisper_base_best_pinned",
             cost="cost_base_best_rerun_pinned",
             smoothed=("int8_smoothing_shipped_base.txt", "whisper_base_best_smoothing_+_int8",
                       "whisper_base_best_pinned")),
        dict(run=4, heldout="heldout_base_xeon", row="whisper_base_best_xeon",
             cost="cost_base_best_xeon",
             smoothed=("base_fourth_run.txt", "whisper_base_best_xeon_+_int8", "whisper_base_best_xeon")),
    ]),
}
# The tenth-period evaluation: dense + int8 and LiteASR mode on the held-out sets.
REFERENCE = {"tiny.en": "heldout_tiny.en", "base": "heldout_base"}

# Tables of the diary that have no result file: (first line, last line, what).
DIARY_TABLES = [
    (54, 61, "speed_budget0.5", "python bench/encoder_speed.py --model {tiny.en|base} --device cpu --budget 0.5 --threads 1 2 [--compile] [--rank_multiple 32|64]"),
    (72, 73, "speed_default", "python bench/encoder_speed.py --model tiny.en --device cpu --threads 1 2"),
    (83, 86, "speed_conformer_toy", "(cd recipes/conformer/asr1 && python ../../../bench/encoder_speed.py --model exp/asr_train_tiny --device cpu --budget 0.5 --threads 1 2)"),
    (99, 100, "speed_conformer", "(cd recipes/conformer/asr1 && python ../../../bench/encoder_speed.py --model exp/asr_train_asr_conformer --device cpu --budget 0.5 --threads 1 --calib_data ../../../../shared/data/librispeech_train-clean-100)"),
]


# --------------------------------------------------------------------- render
def load():
    return [json.loads(line) for line in LEDGER.read_text().splitlines() if line.strip()]


def wer_sdi(s):
    return sdi(s["wer"], s["sub"], s["dele"], s["ins"])


def model_table(rows, model):
    config, runs = SHIPPED[model]
    ref = REFERENCE[model]
    held = find(rows, kind="heldout", model=model)
    dense = find(held, source=f"bench/results/{ref}/heldout.json", role="dense")[0]
    dint8 = find(held, source=f"bench/results/{ref}/heldout.json", role="dense + int8")[0]
    lite = find(held, source=f"bench/results/{ref}/heldout.json", role="liteasr")[0]
    floats = sorted(find(held, role="shipped", int8=None), key=lambda r: r["run"])
    cites = lambda r: f"{r['commit']}, {r['date']}"
    src = lambda r: f"`{Path(r['source']).parent.name if r['source'].startswith('bench/results/') and r['source'].count('/') > 2 else Path(r['source']).name}`"
    out = ["| row | kept % | " + " | ".join(SET_TITLE[s] for s in SETS) + " | commit, date | result |",
           "|---|---|" + "---|" * len(SETS) + "---|---|"]
    out.append("| dense: WER (S / D / I) | 100 | " + " | ".join(wer_sdi(dense["sets"][s]) for s in SETS)
               + f" | {cites(dense)} | {src(dense)} |")
    for label, r in [("dense + int8", dint8), (lite["name"], lite)]:
        out.append(f"| {label} | {r['params_kept_pct']:.1f} | " + " | ".join(ci(r["sets"][s]["delta"]) for s in SETS)
                   + f" | {cites(r)} | {src(r)} |")
    kept = floats[0]["params_kept_pct"]
    out.append(f"| **`{config}.yaml`, mean of {len(floats)} runs (min … max)** | {kept:.1f} | "
               + " | ".join(spread([r["sets"][s]["delta"][0] for r in floats]) for s in SETS) + " | | |")
    for r in floats:
        out.append(f"| run {r['run']}: {r.get('machine') or 'machine not recorded'}; config {r.get('config_hash') or '?'} | "
                   f"{r['params_kept_pct']:.1f} | "
                   + " | ".join(ci(r["sets"][s]["delta"]) for s in SETS) + f" | {cites(r)} | {src(r)} |")
    # int8 on top, over each run's own float row
    int8_rows = []
    for rr in runs:
        fl = find(floats, run=rr["run"])[0]
        plain = [r for r in held if r["source"] == fl["source"] and r["name"] == fl["name"] + " + int8"]
        if plain:
            p = plain[0]
            int8_rows.append((rr["run"], "plain", p, [p["sets"][s]["wer"] - fl["sets"][s]["wer"] for s in SETS], None,
                              rr.get("int8_note")))
        sm = find(rows, kind="rescore", role="shipped", model=model, run=rr["run"])
        if sm:
            s_ = sm[0]
            int8_rows.append((rr["run"], "smoothed", s_, [s_["sets"][s]["delta"][0] for s in SETS], s_, None))
    for mode in ("plain", "smoothed"):
        sel = [x for x in int8_rows if x[1] == mode]
        if not sel:
            continue
        out.append(f"| **+ int8 ({mode}), over its float row: mean of {len(sel)} run{'s' if len(sel) > 1 else ''} (min … max)** | {kept:.1f} | "
                   + " | ".join(spread([x[3][i] for x in sel]) for i in range(len(SETS))) + " | | |")
        for run, _, r, d, resc, note in sel:
            cells = [ci(resc["sets"][s]["delta"]) if resc else fmt(d[i]) for i, s in enumerate(SETS)]
            out.append(f"| run {run} + int8 ({mode}{', ' + note if note else ''}) | {kept:.1f} | " + " | ".join(cells) + f" | {cites(r)} | {src(r)} |")
    return out, floats, dense


def e2e_section(rows, add):
    """One table per e2e_speed.py run: each variant at each thread count against the run's dense row."""
    add("## End to end (CPU, batch 1)")
    add("")
    add("`bench/e2e_speed.py` transcribes every item through `Speech2Text` with each exp dir's decode.yaml as it was")
    add("at the run's commit (`--beams` replacing its beam), and with faster-whisper on the same weights; rows alternate")
    add("in one process. × dense is the time over the dense row's at the same thread count, encoder share the part of")
    add("the time spent in the encoder.")
    add("")
    for source in sorted({r["source"] for r in find(rows, kind="e2e")}):
        sel = find(rows, kind="e2e", source=source)
        sets = list(sel[0]["sets"])
        add(f"`{sel[0]['model']}`, {sel[0]['commit']}, {sel[0]['date']} (`{Path(source).parent.name}/e2e.md`):")
        add("")
        add("| variant | threads | s | RTF | × dense | encoder share | "
            + " | ".join(f"WER {k} ({sel[0]['sets'][k]['utts']}, S / D / I)" for k in sets) + " |")
        add("|---|---|---|---|---|---|" + "---|" * len(sets))
        for r in sel:
            share = "" if r["encoder_share"] is None else f"{100 * r['encoder_share']:.0f} %"
            add(f"| {r['name']} | {r['threads']} | {r['seconds']} | {r['rtf']:.3f} | {r['vs_dense']:.2f} | {share} | "
                + " | ".join(wer_sdi(r["sets"][k]) for k in sets) + " |")
        add("")
        add(f"    {sel[0]['command']}")
        add("")


def render(rows):
    L = []
    add = L.append
    add("<!-- Generated by `python bench/make_results.py` from bench/ledger.jsonl; do not edit by hand. -->")
    add("# Measured results")
    add("")
    add("One table per model with the shipped configs, dense, LiteASR mode and int8; then what compressing costs,")
    add("the default config, the Conformer recipe, end-to-end decoding and the encoder speed. Every number is a row of")
    add("`bench/ledger.jsonl` (one JSON line per run: commit, date, config and a hash of its settings, machine,")
    add("sets, metrics, and the committed file it was read from); `python bench/make_results.py` writes this file")
    add("from it, and `tests/test_ledger.py` checks that the two agree. Levers tried, kept or lost, are one line each")
    add("in [DECISIONS.md](DECISIONS.md). The full lab diary this replaces, with every run's commands and discussion,")
    add(f"is `git show {DIARY_COMMIT}:bench/RESULTS.md`.")
    add("")
    add("## How the Whisper rows are measured")
    add("")
    add("Greedy decoding, Whisper normalizer, every utterance held out from the 128-utterance calibration pool:")
    add("LibriSpeech train-clean-100 219 utterances (7,248 words), VCTK 70 (1,255), ARCTIC \"a\" 100 prompts not in the")
    add("pool (906; same speaker as 32 calibration takes, so optimistic), PocketSphinx 11 (95; one word is 1.05 points).")
    add("Δ is in absolute WER points against dense (or, for int8, against the same run's float row), with a 95 %")
    add("interval from 2,000 paired bootstrap resamples of utterances where one was measured; a bare number is a")
    add("difference of two WERs. \"Run\" rows are the same config file compressed again on another machine or ISA:")
    add("a recovery's last digits depend on the CPU kernels, and its steps grow them into another model, so the")
    add("spread over runs is the config's number, not one run. Machine: 2 CPUs (AMD EPYC or Intel Xeon VMs), fp32.")
    add("")
    add("    python -m espnet_lowrank.bin.compress --asr_exp EXP --lowrank_config conf/lowrank/CONFIG.yaml --output_dir OUT")
    add("    python bench/heldout_eval.py --model MODEL --work_dir WORK --exps OUT --int8 dense OUT --thetas T_ATT,T_FF \\")
    add("        --sets librispeech_train-clean-100 vctk arctic_cathy_a:100 pocketsphinx --threads 2 --out_dir bench/results/heldout_X")
    add("    python bench/score_hyps.py bench/results/heldout_X ROW_+_int8 --against ROW    # int8 over its float row")
    add("")
    titles = {"tiny.en": "## Whisper tiny.en: `whisper_tiny_best.yaml`",
              "base": "## Whisper base: `whisper_base_best.yaml`"}
    for model in ("tiny.en", "base"):
        table, floats, dense = model_table(rows, model)
        add(titles[model])
        add("")
        L.extend(table)
        add("")
        add("`config` is the ledger's `config_hash`: a hash of the settings of the YAML the run used, at its commit, or of")
        add("report.json's config where that YAML was a scratch copy (the two forms hash differently for the same settings).")
        add("Between runs the file gained only settings that leave the float model bit for bit the same (memory options,")
        add("int8 smoothing).")
        add("")
    # cost
    add("## What compressing costs")
    add("")
    add("`bench/compress_cost.py` runs the stock CLI in a subprocess and records each step's seconds and peak RSS.")
    add("")
    add("    python bench/compress_cost.py --config conf/lowrank/CONFIG.yaml --model MODEL --out_dir bench/results/cost_X")
    add("")
    add("The file changed over time; `hash` is the ledger's `config_hash` of the settings each run used.")
    add("")
    add("| model | config | hash | run | machine | seconds | peak RSS MB | recovery s | commit, date | result |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    costs = sorted([r for r in rows if r["kind"] == "cost" and (r.get("role") == "shipped" or (r.get("config_path") or "").startswith("conf/lowrank/"))],
                   key=lambda r: (r["model"], r["date"], r["id"]))
    for r in costs:
        rec = (r["cost"]["steps"].get("recovery") or {}).get("seconds")
        run = f"run {r['run']}" if r.get("run") else ""
        add(f"| {r['model']} | `{r['config_path']}` | {r.get('config_hash') or '—'} | {run} | {r.get('machine') or 'not recorded'} | {r['cost']['seconds']} | "
            f"{r['cost']['peak_rss_mb']} | {round(rec) if rec else '—'} | {r['commit']}, {r['date']} | `{Path(r['source']).parent.name}` |")
    add("")
    add("Targets: the best tiny.en config in ≤ 30 min and ≤ 4 GB on 2 CPUs (met in every run); base has no time")
    add("target. `recovery.recompute_blocks` and `recovery.return_freed_memory` give the same model bit for bit with")
    add("less memory (DECISIONS.md).")
    add("")
    # default config
    add("## The default config: `whisper.yaml` (tiny.en)")
    add("")
    add("Sensitivity budget 0.894, one pass, no recovery. 60 LibriSpeech + 60 VCTK held-out utterances (`bench/pareto.py`),")
    add("and the Whisper recipe's main job (16 + 70 utterances).")
    add("")
    add("| row | kept % | LibriSpeech | VCTK | commit, date | result |")
    add("|---|---|---|---|---|---|")
    for r in find(rows, kind="pareto", source="bench/results/pareto_tiny.en_best_default/pareto.json"):
        if r["name"] not in ("dense", "tiny_default_budget_sensitivity_packed"):
            continue
        label = ("dense" if r["name"] == "dense" else "`whisper.yaml`") + (" + int8" if r["int8"] else "")
        dense_params = find(rows, kind="pareto", source=r["source"], name="dense")[0]["params"]
        kept = f"{100 * r['params'] / dense_params:.1f}"
        add(f"| {label} | {kept} | " + " | ".join(wer_sdi(r["sets"][s]) for s in ("librispeech_train-clean-100", "vctk"))
            + f" | {r['commit']}, {r['date']} | `pareto_tiny.en_best_default` |")
    add("")
    add("    python bench/pareto.py --model tiny.en --configs conf/lowrank/whisper.yaml ... --out_dir bench/results/pareto_tiny.en_best_default")
    add("")
    rec = find(rows, kind="recipe", source="recipes/whisper/asr1/RESULTS.md")
    if rec:
        add("| recipe row | kept % | WER test | WER vctk | commit, date | result |")
        add("|---|---|---|---|---|---|")
        for r in rec:
            add(f"| {r['name']} | {r['params_kept_pct']} | {r['sets']['test']['wer']} | {r['sets']['vctk']['wer']} | "
                f"{r['commit']}, {r['date']} | `{r['source']}` |")
        add("")
        add(f"    {rec[0]['command']}")
        add("")
    # conformer
    add("## ESPnet Conformer (the recipe's model, d 144, 8 blocks)")
    add("")
    conf = find(rows, kind="recipe", model="conformer")
    sets = list(conf[0]["sets"])
    add(f"Corpus WER, basic normalizer, the recipe's decode config (`exp/asr_train_asr_conformer/decode.yaml`); "
        f"{conf[0]['machine']}. `lowrank_X` is `recipes/conformer/asr1/conf/lowrank/X.yaml`; one run.")
    add("")
    add("| row | kept % | " + " | ".join(f"WER {s}" for s in sets) + " | enc. MB | latency ratio | compress s | commit, date |")
    add("|---|---|" + "---|" * len(sets) + "---|---|---|---|")
    for r in conf:
        c = r["cost"]["seconds"]
        add(f"| {r['name'].replace('asr_train_asr_conformer', 'conformer')} | {r['params_kept_pct']} | "
            + " | ".join(f"{r['sets'][s]['wer']:.1f}" for s in sets)
            + f" | {r['enc_mb']} | {r['lat_ratio']:.3f} | {c if c is not None else '—'} | {r['commit']}, {r['date']} |")
    add("")
    add(f"    {conf[0]['command']}")
    add("")
    # arithmetic
    arith = sorted(find(rows, kind="cost", config="tiny_theta_recovery16_calib16_packed"), key=lambda r: r["id"])
    if arith:
        add("## What a recovery run depends on")
        add("")
        add("The same config (`bench/configs/tiny_theta_recovery16_calib16_packed.yaml`: tiny.en, 16 utterances, 16 recovery")
        add("steps) compressed under each arithmetic setting on one machine: the recovery's final loss changes with the ATen")
        add("kernels' ISA, MKL's code path, oneDNN's ISA and the thread count; a repeat under the same setting gives the")
        add("same loss to every digit.")
        add("")
        add("    env SETTING python bench/compress_cost.py --config bench/configs/tiny_theta_recovery16_calib16_packed.yaml \\")
        add("        --model tiny.en --out_dir bench/results/arithmetic_env/SETTING")
        add("")
        add("| setting | machine | recovery loss before → after | seconds | commit, date |")
        add("|---|---|---|---|---|")
        for r in arith:
            before, after = r["cost"]["recovery_loss"]
            add(f"| `{r['id'].split('/', 1)[1]}` | {r.get('machine') or 'not recorded'} | {before:.6f} → {after:.9f} | "
                f"{r['cost']['seconds']} | {r['commit']}, {r['date']} |")
        add("")
    e2e_section(rows, add)
    # speed
    add("## Encoder speed (CPU, fp32, batch 1)")
    add("")
    add("`bench/encoder_speed.py` times `model.encode` of the dense and the compressed model in one process, alternating,")
    add("after warm-up (medians of 7). lat ratio = compressed / dense ms; FLOP ratio = compressed / dense encoder FLOPs;")
    add("efficiency = (dense / compressed ms) / (dense / compressed FLOPs): 1.0 means every FLOP saved is time saved.")
    add("2-thread rows on this shared 2-CPU VM are contention-bound. No GPU was measured. These rows were kept only in")
    add(f"the diary's tables (source: `git show {DIARY_COMMIT}:bench/RESULTS.md`).")
    add("")
    for what, title in [("speed_budget0.5", "Whisper at `--budget 0.5`"), ("speed_default", "`whisper.yaml` (default θ config at the time)"),
                        ("speed_conformer_toy", "Conformer toy model (d 64, 2 blocks), `--budget 0.5`"),
                        ("speed_conformer", "Conformer d 144, 8 blocks, `--budget 0.5`")]:
        sel = find(rows, kind="speed", table=what)
        add(f"{title}:")
        add("")
        add("| model | mode | threads | input | dense ms | compressed ms | lat ratio | FLOP ratio | efficiency | note |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for r in sel:
            add(f"| {r['model']} | {r['mode']} | {r['threads']} | {r['input']} | {r['dense_ms']} | {r['compressed_ms']} | "
                f"{r['lat_ratio']:.3f} | {r['flop_ratio']:.3f} | {r['efficiency']:.3f} | {r['note']} |")
        add("")
        add(f"    {sel[0]['command']}")
        add("")
    add("Each table is dated by the commit that first wrote it into the diary: "
        + "; ".join(f"{t}: {find(rows, kind='speed', table=t)[0]['commit']}, {find(rows, kind='speed', table=t)[0]['date']}"
                    for t, _, _ in [(w, 0, 0) for _, _, w, _ in DIARY_TABLES]) + ".")
    add("")
    add("## Other result folders")
    add("")
    n = {k: sum(1 for r in rows if r["kind"] == k) for k in ("heldout", "rescore", "cost", "pareto", "recipe", "e2e", "speed")}
    add(f"The ledger holds {len(rows)} rows: " + ", ".join(f"{v} {k}" for k, v in n.items()) + ". Rows not in the tables")
    add("above (role `other`) are the levers of [DECISIONS.md](DECISIONS.md); each names its `bench/results/` folder.")
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if bench/RESULTS.md differs from the ledger's")
    p.add_argument("--import", dest="do_import", action="store_true",
                   help="rebuild bench/ledger.jsonl from the committed result files")
    a = p.parse_args(argv)
    if a.do_import:
        rows = build_ledger(ROOT, SHIPPED, DIARY_COMMIT, DIARY_TABLES)
        LEDGER.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
        print(f"{LEDGER.relative_to(ROOT)}: {len(rows)} rows")
    text = render(load())
    if a.check:
        if RESULTS.read_text() != text:
            print("bench/RESULTS.md is not what bench/make_results.py makes from bench/ledger.jsonl; "
                  "run python bench/make_results.py", file=sys.stderr)
            return 1
        return 0
    RESULTS.write_text(text)
    print(f"{RESULTS.relative_to(ROOT)}: {len(text.splitlines())} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' figures: WER against size / FLOPs / latency of a Pareto
run, WER differences to dense with their intervals, and the front of several
Pareto runs against params kept. PNGs, matplotlib's Agg backend."""

import json
from pathlib import Path

from espnet_lowrank.report import _pyplot

# Pareto rows by kind: colour and marker
STYLES = {"dense": ("k", "*"), "liteasr": ("tab:blue", "o"), "budget": ("tab:orange", "s"),
          "sequential": ("tab:green", "^"),
          # rows of the removed least-squares refit, for --replot of older results
          "sequential+refit_all": ("tab:red", "v"),
          "sequential+refit_no_qk": ("tab:purple", "D"), "config": ("tab:brown", "P")}


def _save(fig, path, dpi, format="png") -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format=format)
    _pyplot().close(fig)


def pareto_plot(rows, sets, path) -> None:
    """One row of panels per set: WER against encoder linear params, GFLOPs and
    CPU latency; a curve per kind of row, int8 dashed with open markers."""
    plt = _pyplot()
    xs = [("params_M", "encoder linear params (M)"), ("gflops", "encoder GFLOPs / 30 s"),
          ("latency_ms", "CPU encoder latency (ms)")]
    fig, axes = plt.subplots(len(sets), 3, figsize=(15, 4 * len(sets)), squeeze=False)
    for i, s in enumerate(sets):
        for j, (key, label) in enumerate(xs):
            ax = axes[i][j]
            for kind, (color, marker) in STYLES.items():
                for int8 in (False, True):
                    pts = sorted((r[key], r["wer"][s]) for r in rows if r["kind"] == kind and r["int8"] == int8)
                    if not pts:
                        continue
                    # "config" rows are unrelated YAMLs: points, not a curve
                    line = "none" if kind == "config" else ("--" if int8 else "-")
                    ax.plot(*zip(*pts), color=color, marker=marker, linestyle=line,
                            mfc="none" if int8 else color, label=f"{kind}{' +int8' if int8 else ''}")
            for r in rows:
                ax.annotate(r["name"].replace("liteasr_", "θ").replace("budget_", "b"),
                            (r[key], r["wer"][s]), fontsize=6)
            ax.set_xlabel(label)
            ax.set_ylabel(f"WER % ({s})")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    _save(fig, path, 110)


def heldout_plot(rows, sets, path) -> None:
    """Each row's WER − dense WER per set with its 95% interval, and the +1.0 target."""
    plt = _pyplot()
    shown = [r for r in rows if r["sets"][sets[0]]["delta"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(shown) * len(sets) + 1.5))
    y = 0
    labels = []
    for r in shown:
        for s in sets:
            d, lo, hi = r["sets"][s]["delta"]
            ax.errorbar(d, y, xerr=[[d - lo], [hi - d]], fmt="o", capsize=3)
            labels.append(f"{r['name']} / {s}")
            y += 1
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(1.0, color="r", lw=0.8, ls="--", label="+1.0 target")
    ax.set_yticks(range(y), labels, fontsize=7)
    ax.set_xlabel("WER − dense WER (absolute points), 95% paired bootstrap")
    ax.legend(loc="lower right")
    _save(fig, path, 120)


def front_rows(run_dirs) -> list:
    """The rows of several Pareto runs' pareto.json; a row (name, int8) that
    repeats across runs (dense, LiteASR mode) is kept once, from the first."""
    rows, seen = [], set()
    for run in run_dirs:
        for r in json.loads((Path(run) / "pareto.json").read_text())["rows"]:
            key = (r["name"], r["int8"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
    return rows


def front_plot(rows, path) -> None:
    """One panel per set: WER against encoder linear params (% of the dense
    row's), one point per row, and the dense + 1.0 target line."""
    plt = _pyplot()
    dense = next(r for r in rows if r["name"] == "dense" and not r["int8"])
    sets = list(dense["wer"])
    fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 5), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for r in rows:
            x = 100 * r["params"] / dense["params"]
            marker = "*" if r["kind"] == "dense" else ("o" if r["kind"] == "liteasr" else "P")
            ax.plot(x, r["wer"][s], marker=marker, linestyle="none", mfc="none" if r["int8"] else None)
            label = r["name"].replace("tiny_", "").replace("_lr1e-4", "") + (" +int8" if r["int8"] else "")
            ax.annotate(label, (x, r["wer"][s]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axhline(dense["wer"][s] + 1.0, color="grey", linestyle=":", label="dense + 1.0 (target)")
        ax.set_xlabel("encoder linear params (% of dense)")
        ax.set_ylabel(f"WER % ({s})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path, 110, format=None)

#!/usr/bin/env python3
"""Training log -> per-epoch table (train_summary.md) and learning curves (PNG).

    python local/summarize_training.py exp/asr_train_asr_conformer/train.log \
        --out_md exp/asr_train_asr_conformer/train_summary.md --out_png learning_curves.png

Reads ESPnet's "<N>epoch results: [train] k=v, ... [valid] k=v, ..." lines.
"""

import argparse
import re
import sys
from typing import Dict, List, Tuple

PAIR = re.compile(r"([A-Za-z_0-9]+)=([-+0-9.eE]+)(?=,|$)")
SHOWN = ("loss", "cer_ctc", "wer_ctc", "acc", "cer", "optim0_lr0", "train_time")


def parse_log(path: str) -> List[Tuple[int, Dict[str, float], Dict[str, float], str]]:
    """(epoch, train stats, valid stats, epoch wall time text) per finished epoch."""
    epochs = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"(\d+)epoch results: \[train\] (.*?)(?:\[valid\] (.*))?$", line.strip())
            if not m:
                continue
            train = {k: float(v) for k, v in PAIR.findall(m.group(2).replace(", ", ","))}
            valid = {k: float(v) for k, v in PAIR.findall((m.group(3) or "").replace(", ", ","))}
            took = re.search(r"time=([^,]*?minutes?[^,]*?seconds?)", m.group(2))
            epochs[int(m.group(1))] = (train, valid, took.group(1) if took else "")
    return [(e, *epochs[e]) for e in sorted(epochs)]


def markdown(rows) -> str:
    keys = [k for k in SHOWN if any(k in t or k in v for _, t, v, _ in rows)]
    head = ["epoch"] + [f"train {k}" for k in keys if any(k in t for _, t, _, _ in rows)]
    head += [f"valid {k}" for k in keys if any(k in v for _, _, v, _ in rows)] + ["epoch time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for epoch, train, valid, took in rows:
        cells = [str(epoch)]
        for h in head[1:-1]:
            side, key = h.split(" ", 1)
            value = (train if side == "train" else valid).get(key)
            cells.append("-" if value is None else f"{value:.4g}")
        lines.append("| " + " | ".join(cells + [took]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, out_png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r[0] for r in rows]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for side, idx, style in (("train", 1, "o-"), ("valid", 2, "s-")):
        values = [r[idx].get("loss") for r in rows]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, style, label=side)
    ax_loss.set(xlabel="epoch", ylabel="loss (per utterance)", title="loss")
    ax_loss.legend()
    for key in ("cer_ctc", "wer_ctc", "cer"):
        values = [r[2].get(key) for r in rows]
        if any(v is not None for v in values):
            ax_err.plot(epochs, values, "s-", label=f"valid {key}")
    ax_err.set(xlabel="epoch", ylabel="error rate", title="dev error")
    ax_err.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_log")
    p.add_argument("--out_md", required=True)
    p.add_argument("--out_png", required=True)
    p.add_argument("--title", default="Conformer training (2-core CPU)")
    args = p.parse_args(argv)
    rows = parse_log(args.train_log)
    if not rows:
        sys.exit(f"{args.train_log}: no finished epoch found")
    with open(args.out_md, "w", encoding="utf-8") as f:
        f.write(f"# Training summary ({len(rows)} epochs; from {args.train_log})\n\n" + markdown(rows))
    plot(rows, args.out_png, args.title)
    print(f"wrote {args.out_md} and {args.out_png} ({len(rows)} epochs)", file=sys.stderr)


if __name__ == "__main__":
    main()

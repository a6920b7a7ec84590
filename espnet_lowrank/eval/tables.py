"""Markdown tables of the benchmarks: cells (WER with S / D / I, intervals,
spreads), the Pareto and held-out tables, and the .md / .json / .png triple
a run writes."""

import json
import os
import statistics
from typing import Callable, Sequence

from espnet_lowrank.utils import atomic_write, atomic_write_text


def table_lines(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list:
    """A markdown table: header, ``---`` rule, one line per row of cells."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def sdi(err, sub, dele, ins, digits: int = 2, sep: str = " / ") -> str:
    """``err (S / D / I)``: the WER with ``digits`` decimals, its parts with one."""
    return f"{err:.{digits}f} ({sub:.1f}{sep}{dele:.1f}{sep}{ins:.1f})"


def delta(d) -> str:
    """A paired-bootstrap difference ``(Δ, low, high)`` as ``+Δ [+low, +high]``."""
    return f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]"


def fmt(x, sign=True) -> str:
    """Two decimals with a typographic minus (and a plus with ``sign``); ``—`` for None."""
    return "—" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}").replace("-", "−")


def ci(d) -> str:
    """:func:`delta` with typographic minus signs."""
    return f"{fmt(d[0])} [{fmt(d[1])}, {fmt(d[2])}]"


def spread(values) -> str:
    """``mean (min … max)`` of signed values."""
    return f"{fmt(statistics.mean(values))} ({fmt(min(values))} … {fmt(max(values))})"


def find(rows, **kw) -> list:
    """The rows (dicts) whose every ``key=value`` matches."""
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


# ------------------------------------------------------------------- Pareto
def _pareto_wer(r, s) -> str:
    if "wer_detail" not in r:  # rows written before S / D / I were kept
        return f"{r['wer'][s]:.1f}"
    d = r["wer_detail"][s]
    return sdi(r["wer"][s], d["sub"], d["del"], d["ins"], digits=1)


def pareto_markdown(rows, sets, meta) -> str:
    """One line per row of a Pareto run (the first row is dense), then ``meta``."""
    head = ["name", "int8"] + [f"WER {s} (S / D / I)" for s in sets] + [
        "enc lin params", "params %", "GFLOPs", "latency ms", "lat_ratio", "enc MB", "compress s"]
    dense = rows[0]
    cells = []
    for r in rows:
        cs = r.get("compress_s")
        cells.append([r["name"], "yes" if r["int8"] else ""] + [_pareto_wer(r, s) for s in sets] + [
            f"{r['params']:,}", f"{100 * r['params'] / dense['params']:.1f}", f"{r['gflops']:.2f}",
            f"{r['latency_ms']:.0f}", f"{r['lat_ratio']:.2f}", f"{r['enc_mb']:.1f}",
            "" if cs is None else f"{cs:.0f}"])
    return "\n".join(table_lines(head, cells)) + "\n\n" + meta + "\n"


# ----------------------------------------------------------------- held out
def heldout_markdown(rows, sets, meta) -> str:
    """``meta``, then one line per row: params %, and per set the WER (S / D / I)
    and the Δ to dense with its 95% interval."""
    lines = ["| row | params % | " + " | ".join(f"{s}: WER (S / D / I) | Δ dense [95%]" for s in sets) + " |",
             "|" + "---|" * (2 + 2 * len(sets))]
    for r in rows:
        cells = [r["name"], f"{r['params_pct']:.1f}"]
        for s in sets:
            w = r["sets"][s]
            cells.append(sdi(w["err"], w["sub"], w["del"], w["ins"]))
            cells.append("—" if w["delta"] is None else delta(w["delta"]))
        lines.append("| " + " | ".join(cells) + " |")
    return meta + "\n\n" + "\n".join(lines) + "\n"


def save_tables(out_dir, stem, rows, sets, meta, to_markdown: Callable, to_png: Callable) -> None:
    """``stem``.md, .json and .png in ``out_dir`` (each written whole or not at
    all); the markdown is also printed."""
    md = to_markdown(rows, sets, meta)
    atomic_write_text(os.path.join(out_dir, f"{stem}.md"), md)
    atomic_write_text(os.path.join(out_dir, f"{stem}.json"), json.dumps({"rows": rows, "meta": meta}, indent=2))
    atomic_write(os.path.join(out_dir, f"{stem}.png"), lambda tmp: to_png(rows, sets, tmp))
    print(md)

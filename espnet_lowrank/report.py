"""report.json / report.md of a compression, and its figures (matplotlib's Agg backend, no display
needed; PNGs written atomically)."""

import logging
from typing import List, Mapping

import numpy as np

from espnet_lowrank.measure import encoder_flops, encoder_linear_params
from espnet_lowrank.utils import atomic_write

logger = logging.getLogger(__name__)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)
    logger.info("wrote %s", path)


def plot_variance_spectra(spectra: Mapping[str, np.ndarray], path: str) -> None:
    """Cumulative explained-variance curves (layer name -> (D,) values for 1..D kept components)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in spectra.items():
        curve = np.asarray(curve, dtype=float).reshape(-1)
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, linewidth=1)
    ax.set(xlabel="kept rank", ylabel="cumulative explained variance", ylim=(0, 1.02))
    ax.grid(True, alpha=0.3)
    if 0 < len(spectra) <= 16:
        ax.legend(fontsize="x-small", ncol=2)
    _save(fig, path)


def plot_ranks(ranks: Mapping[str, int], full: Mapping[str, int], path: str) -> None:
    """Bars of each layer's kept rank against its full rank."""
    missing = [k for k in ranks if k not in full]
    if missing:
        raise ValueError(f"no full rank for layers: {', '.join(missing[:5])}")
    plt = _pyplot()
    names = list(ranks)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(names) + 2), 4.5))
    ax.bar(x, [full[n] for n in names], color="lightgray", label="full")
    ax.bar(x, [ranks[n] for n in names], color="tab:blue", label="kept")
    ax.set_xticks(x, names, rotation=90, fontsize="x-small")
    ax.set_ylabel("rank")
    ax.legend()
    _save(fig, path)


def plot_wer_vs_size(points: List[dict], path: str, xlabel: str = "parameters") -> None:
    """WER (%) against model size; ``points`` are dicts with ``label``, ``size`` and ``wer``."""
    for i, p in enumerate(points):
        for key in ("label", "size", "wer"):
            if key not in p:
                raise ValueError(f"point {i} lacks {key!r}: {p}")
    plt = _pyplot()
    pts = sorted(points, key=lambda p: p["size"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([p["size"] for p in pts], [p["wer"] for p in pts], "o-")
    for p in pts:
        ax.annotate(str(p["label"]), (p["size"], p["wer"]), textcoords="offset points",
                    xytext=(4, 4), fontsize="x-small")
    ax.set(xlabel=xlabel, ylabel="WER (%)")
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def markdown_kv_table(d: Mapping[str, object]) -> str:
    """Two-column markdown table ``|key|value|`` (floats with 4 significant digits)."""
    lines = ["|key|value|", "|---|---|"]
    for k, v in d.items():
        s = f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append(f"|{k}|{s.replace('|', '/')}|")
    return "\n".join(lines) + "\n"


def build_report(source, compressed, family, config, plan, attention, measured: dict) -> dict:
    """report.json: the plan, per-layer decisions, both encoders' size and FLOPs, what the steps measured."""
    return {
        "family": family.name,
        "config": config.to_dict(),
        "plan": dict(plan.ranks),
        "layers": [
            {"name": d.name, "role": d.role, "d_in": d.d_in, "d_out": d.d_out, "rank": d.rank,
             "rank_from_theta": d.rank_from_theta, "explained_variance": round(d.explained_variance, 6),
             "params_dense": d.params_dense, "params_kept": d.params_kept, "reason": d.reason}
            for d in plan.decisions
        ],
        "attention": attention,
        "flops_window_seconds": family.window_seconds,
        "encoder_linear_params_dense": encoder_linear_params(source),
        "encoder_linear_params_compressed": encoder_linear_params(compressed),
        "encoder_flops_dense": encoder_flops(source, family.window_seconds),
        "encoder_flops_compressed": encoder_flops(compressed, family.window_seconds),
        **measured,
    }


def runtime_line(runtime):
    """report.json's ``runtime`` as one line: what the arithmetic ran on."""
    pinned = ", ".join(f"{k}={v}" for k, v in runtime["env"].items() if v is not None) or "none"
    return (f"{runtime['device']}, {runtime['cpu']}, {runtime['cpu_capability']} kernels, "
            f"{runtime['threads']} threads, torch {runtime['torch']}; pinned: {pinned}")


def compression_report_md(report: dict) -> str:
    """report.md of a compressed exp dir, from its report.json values."""
    dense_p, comp_p = report["encoder_linear_params_dense"], report["encoder_linear_params_compressed"]
    dense_f, comp_f = report["encoder_flops_dense"], report["encoder_flops_compressed"]
    summary = {
        "family": report["family"],
        "low-rank config": report.get("lowrank_config_file", "(given in code)"),
        "encoder linear params": f"{dense_p:,} -> {comp_p:,} ({100 * comp_p / dense_p:.1f}%)",
        f"encoder GFLOPs ({report['flops_window_seconds']:g} s input)":
            f"{dense_f / 1e9:.2f} -> {comp_f / 1e9:.2f} ({100 * comp_f / dense_f:.1f}%)",
        "calibration frames": f"{report['calibration_frames']:,}",
        "calibration time (s)": report["calibration_seconds"],
        "calibration peak RSS (MB)": report["calibration_peak_rss_mb"],
        "statistics memory (MB)": report["statistics_mb"],
        "reduced-dim attention modules": sum(v == "reduced" for v in report["attention"].values()),
    }
    if "calibration_passes" in report:
        summary["calibration passes"] = report["calibration_passes"]
    if report.get("recovery_steps"):
        scope = " per block" if report.get("recovery_scope") == "block" else ""
        summary[f"recovery ({report['recovery_steps']} steps{scope}) {report.get('recovery_objective', 'encoder')} loss"] = (
            f"{report['recovery_loss_before']:.4g} -> {report['recovery_loss_after']:.4g}")
        final = report.get("recovery_final")
        if final:
            summary[f"then end to end ({final['recovery_steps']} steps) {final['recovery_objective']} loss"] = (
                f"{final['recovery_loss_before']:.4g} -> {final['recovery_loss_after']:.4g}")
    for name, cost in report.get("steps", {}).items():
        summary[f"step {name}: seconds / peak RSS so far (MB)"] = f"{cost['seconds']} / {cost['peak_rss_mb']}"
    if report.get("runtime"):
        summary["run on"] = runtime_line(report["runtime"])
    lines = ["# Low-rank compression report", "", markdown_kv_table(summary), "",
             "## Layers", "", "| layer | role | d_in | d_out | rank | rank from θ | explained var |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for layer in report["layers"]:
        rank = layer["rank"] if layer["rank"] is not None else "dense"
        lines.append(f"| {layer['name']} | {layer['role']} | {layer['d_in']} | {layer['d_out']} | "
                     f"{rank} | {layer['rank_from_theta']} | {layer['explained_variance']:.4f} |")
    lines += ["", "![variance spectra](variance_spectra.png)", "", "![ranks](ranks.png)", ""]
    return "\n".join(lines)

"""Stage 13: score decoded test sets (``decode_<set>/1best_recog/text`` in each exp dir, the first
the dense reference) and write an ESPnet-style RESULTS.md with size, FLOPs, encoder latency (measured
here) and decoding time (from stage 12's logs). CLI: ``python -m espnet_lowrank.bin.results``."""

import datetime
import glob
import json
import os
import re
import subprocess
from typing import List, Optional

import soundfile
import torch

from espnet_lowrank.artifact import build_asr_model, load_asr_model, read_state_dict, read_yaml
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.families import family_for
from espnet_lowrank.measure import cpu_model, encoder_flops, encoder_linear_params, encoder_mb, paired_latency
from espnet_lowrank.report import plot_wer_vs_size
from espnet_lowrank.scoring import markdown_table, read_text_file, score_texts
from espnet_lowrank.utils import atomic_write_text


# asr_inference's log lines that open and close one utterance (calculate_rtf.py's markers),
# found anywhere in a line: a progress bar may share it
MARK = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \([^)]*\) INFO: (speech length|best hypo): ")


def decoding_seconds(decode_dir: str) -> Optional[float]:
    """Seconds from each utterance's "speech length" line to its "best hypo" line, summed over
    ``decode_dir``'s ``logdir/asr_inference.*.log`` (model loading not counted); None without logs."""
    total, found = 0.0, False
    for log in sorted(glob.glob(os.path.join(decode_dir, "logdir", "asr_inference.*.log"))):
        start = None
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                for stamp, marker in MARK.findall(line):
                    stamp = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
                    if marker == "speech length":
                        start = stamp
                    elif start is not None:
                        total, found, start = total + (stamp - start).total_seconds(), True, None
    return total if found else None


def float_flops(exp: str, model, seconds: float) -> int:
    """Encoder FLOPs; an int8 exp dir counts as its float model (the counter does not see int8 kernels)."""
    config = read_yaml(os.path.join(exp, "config.yaml"))
    if not (config.get("encoder_conf") or {}).get("int8"):
        return encoder_flops(model, seconds)
    config["encoder_conf"]["int8"] = False
    config["decoder_conf"] = {**(config.get("decoder_conf") or {}), "int8": False}
    float_model = build_asr_model(config)
    float_model.load_state_dict(read_state_dict(os.path.join(exp, "model.pth")), strict=True)
    return encoder_flops(float_model.eval(), seconds)


def plugin_commit() -> str:
    """The plugin checkout's commit, or "-" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


def write_results(
    exps: List[str],
    test_sets: List[str],
    output: str,
    normalize: str = "whisper",
    latency_seconds: Optional[float] = None,
    latency_repeats: int = 5,
    plot: Optional[str] = None,
    command: str = "",
) -> str:
    """Write RESULTS.md to ``output`` plus a WER-vs-size PNG; returns the Markdown. ``command`` is
    recorded as the line that made it."""
    dense_exp = exps[0]
    models = {exp: load_asr_model(f"{exp}/config.yaml", f"{exp}/model.pth")[0] for exp in exps}
    family = family_for(models[dense_exp].encoder)
    seconds = latency_seconds or family.window_seconds
    set_names = [os.path.basename(os.path.normpath(t)) for t in test_sets]
    # Per-set ESPnet tables.
    sections, wers, decode_s, audio_s = [], {exp: {} for exp in exps}, {exp: [] for exp in exps}, 0.0
    for test_set, name in zip(test_sets, set_names):
        utts = read_data_dir(test_set, require_text=True)
        refs = {u.utt_id: u.text for u in utts}
        audio_s += sum(soundfile.info(u.wav_path).duration for u in utts)
        rows = []
        for exp in exps:
            decode_s[exp].append(decoding_seconds(os.path.join(exp, f"decode_{name}")))
            hyps = read_text_file(os.path.join(exp, f"decode_{name}", "1best_recog", "text"))
            rows.append(score_texts(refs, hyps, dataset=f"{os.path.basename(exp)}/decode_{name}",
                                    normalize=normalize))
            wers[exp][name] = rows[-1].err
        sections.append(f"### WER: {name}\n\n{markdown_table(rows)}")
    # Size, FLOPs, latency, calibration cost.
    dense = models[dense_exp]
    dense_params = encoder_linear_params(dense)
    dense_flops = float_flops(dense_exp, dense, family.window_seconds)
    summary = ["| model | " + " | ".join(f"WER {name}" for name in set_names)
               + " | decode time (s) | RTF | decode time ratio | enc. linear params | params ratio | enc. MB"
               " | enc. GFLOPs | FLOPs ratio | enc. latency (s) | latency ratio | compress time (s)"
               " | compress peak RSS (MB) |",
               "|---|" + "---:|" * (len(test_sets) + 12)]
    dense_decode = None if None in decode_s[dense_exp] else sum(decode_s[dense_exp])
    points = []
    for exp in exps:
        model = models[exp]
        params = encoder_linear_params(model)
        flops = float_flops(exp, model, family.window_seconds)
        latency_dense, latency = paired_latency(dense, model, seconds, latency_repeats)
        latency_ratio = 1.0 if exp == dense_exp else latency / latency_dense
        report_path = os.path.join(exp, "report.json")
        report = json.load(open(report_path)) if os.path.isfile(report_path) else {}
        # calibration (summed over jobs) plus the later steps (plan, recovery, attention)
        steps = report.get("steps", {})
        compress_s = report.get("calibration_seconds")
        if compress_s is not None:
            compress_s = f"{compress_s + sum(v['seconds'] for k, v in steps.items() if k != 'calibration'):.1f}"
        rss = max([report.get("calibration_peak_rss_mb") or 0] + [v["peak_rss_mb"] for v in steps.values()])
        decode = None if None in decode_s[exp] else sum(decode_s[exp])
        timing = (f"{decode:.1f} | {decode / audio_s:.3f} | "
                  + (f"{decode / dense_decode:.3f}" if dense_decode else "-")) if decode else "- | - | -"
        wer_cells = " | ".join(f"{wers[exp][name]:.1f}" for name in set_names)
        summary.append(f"| {os.path.basename(exp)} | {wer_cells} | {timing} | {params:,}"
                       f" | {params / dense_params:.3f} | {encoder_mb(model):.1f} | {flops / 1e9:.2f}"
                       f" | {flops / dense_flops:.3f} | {latency:.3f} | {latency_ratio:.3f}"
                       f" | {compress_s or '-'} | {rss or '-'} |")
        points.append({"label": os.path.basename(exp), "size": params, "wer": wers[exp][set_names[0]]})
    plot = plot or os.path.join(os.path.dirname(os.path.abspath(output)), "wer_vs_size.png")
    plot_wer_vs_size(points, plot, xlabel="encoder linear params")
    text = "\n".join([
        "# RESULTS", "",
        f"- date: {datetime.date.today().isoformat()}, plugin commit {plugin_commit()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        f"- command: `{command}`",
        f"- WER: corpus WER (%), text normalizer: {normalize}",
        f"- decode time: stage 12's stock asr_inference, summed over every utterance of every test set "
        f"({audio_s:.0f} s of audio), each from its \"speech length\" to its \"best hypo\" log line "
        "(ESPnet's calculate_rtf.py markers; model loading not counted); RTF = decode time / audio; "
        "the models decode one after another, so the ratio carries run-to-run noise",
        f"- FLOPs: encoder forward on {family.window_seconds:g} s of audio (int8 exp dirs: their float "
        "model's, as the counter does not see int8 kernels); latency: median of "
        f"{latency_repeats} runs on {seconds:g} s, alternating with the dense model",
        "", "## Summary", "", *summary, "", f"![WER against size]({os.path.basename(plot)})", "", *sections,
    ])
    atomic_write_text(output, text + "\n")
    return text


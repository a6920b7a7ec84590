"""The rows of a Pareto run (bench/pareto.py): which configs, how each is
compressed (sharing one calibration pass where it can), and what is measured
of each model on the same utterances: WER, params, FLOPs, latency, size."""

import time

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.eval.decode import decode_sets
from espnet_lowrank.measure import encoder_flops, encoder_linear_params, encoder_mb, paired_latency
from espnet_lowrank.pipeline import compress

WINDOW = 30.0  # seconds of audio for FLOPs and latency: one Whisper window


def _pair(text):
    return tuple(float(x) for x in text.split(","))


def row_configs(thetas, budgets, sequential_thetas, yaml_configs, num_calib):
    """(name, kind, config) per row: dense (config None), LiteASR θ pairs
    ``"att,ff"``, budgets, sequential θ pairs and ``(stem, LowRankConfig)``
    YAMLs (those without num_calib get ``num_calib``)."""
    configs = [("dense", "dense", None)]
    for ta, tf in map(_pair, thetas):
        configs.append((f"liteasr_{ta}_{tf}", "liteasr", LowRankConfig(theta_attention=ta, theta_feed_forward=tf)))
    for b in budgets:
        configs.append((f"budget_{b}", "budget", LowRankConfig(budget=b)))
    for ta, tf in map(_pair, sequential_thetas):
        configs.append((f"sequential_{ta}_{tf}", "sequential",
                        LowRankConfig(theta_attention=ta, theta_feed_forward=tf, sequential=True,
                                      num_calib=num_calib)))
    for stem, cfg in yaml_configs:
        if cfg.calibration.num_calib is None:
            cfg = cfg.replace(num_calib=num_calib)
        configs.append((stem, "config", cfg))
    return configs


def compress_row(dense, cfg, pool, num_calib, stats, stats_s):
    """(compressed model, seconds, report) of one row. A config that needs the
    audio itself (sequential, recovery, packing, its own num_calib, a budget's
    sensitivity) calibrates on ``pool``; the others reuse ``stats``, one pass
    over ``num_calib`` utterances that took ``stats_s`` seconds, counted in."""
    started = time.perf_counter()
    c = cfg.calibration
    if (c.sequential or cfg.recovery.steps or c.pack_seconds or c.num_calib != num_calib
            or cfg.ranks.budget is not None):
        result = compress(dense, pool[: c.num_calib or num_calib], cfg)
        seconds = time.perf_counter() - started
    else:
        result = compress(dense, config=cfg, stats=stats)
        seconds = time.perf_counter() - started + stats_s
    return result.model, seconds, result.report


def measure_row(s2t, dense, model, float_model, eval_sets, hyp_dir, repeats):
    """WER (with S / D / I) per set with ``model`` in ``s2t`` (hypotheses into
    ``hyp_dir``), and encoder params, FLOPs (of ``float_model``: the counter
    does not see int8 kernels), latency paired with ``dense`` and size."""
    s2t.asr_model = model
    decoded = decode_sets(s2t, eval_sets, hyp_dir)
    d_ms, c_ms = paired_latency(dense, model, WINDOW, repeats=repeats)
    params = encoder_linear_params(float_model)
    return {
        "wer": {name: d.score.err for name, d in decoded.items()},
        "wer_detail": {name: {"sub": d.score.sub, "del": d.score.dele, "ins": d.score.ins, "s_err": d.score.s_err}
                       for name, d in decoded.items()},
        "params": params, "gflops": encoder_flops(float_model, WINDOW) / 1e9,
        "latency_ms": 1000 * c_ms, "lat_ratio": c_ms / d_ms, "enc_mb": encoder_mb(model),
    }

"""Sequential calibration (``sequential: true``): compress block by block,
recalibrating each block on the *already compressed* earlier blocks.

One-pass LiteASR calibrates every layer on the dense model's activations, so
the later layers' PCA bases fit inputs they never see once the earlier
layers are truncated. Here block i's output statistics (and so its basis and
θ ranks) come from a forward pass through the model whose blocks < i are
already low-rank: each block's basis adapts to the error it receives. Cost:
one calibration pass per block instead of one in all.

Blocks are the target layers grouped by the name prefix up to their first
numeric component (``encoders.blocks.3`` for Whisper, ``encoders.3`` for
ESPnet encoders). θ mode only (not ``budget``). Measured on Whisper tiny.en
at a ~24% cut (θ 0.98/0.995, 32 calibration utterances, greedy WER on 16
held-out LibriSpeech / 16 VCTK, dense 6.7 / 3.4): one pass 30.5 / 15.6,
sequential 13.4 / 17.1 (bench/README.md).
"""

import copy
import dataclasses
import logging
import re
from collections import OrderedDict
from typing import Dict, List

from espnet_lowrank.plan import RankPlan

logger = logging.getLogger(__name__)


def block_of(name: str) -> str:
    m = re.match(r"^(.*?\.\d+)(\.|$)", name)
    return m.group(1) if m else name


def compress_sequential(model, calib_data, config):
    from espnet_lowrank.apply import choose_attention_
    from espnet_lowrank.compress import CompressionResult, asr_model_of, compress
    from espnet_lowrank.families import family_for
    from espnet_lowrank.measure import encoder_flops, encoder_linear_params

    if config.budget is not None:
        raise ValueError("sequential calibration works with the θ thresholds, not with budget")
    if calib_data is None:
        raise ValueError("sequential calibration needs calib_data (it calibrates once per block)")
    source = asr_model_of(model)
    family = family_for(source.encoder)
    targets = family.target_layers(source.encoder, config)
    groups: Dict[str, List[str]] = OrderedDict()
    for name in targets:
        groups.setdefault(block_of(name), []).append(name)

    current = source
    ranks, decisions, spectra, seconds, frames = {}, [], {}, 0.0, 0
    last = None
    for i, (block, names) in enumerate(groups.items()):
        sub = dataclasses.replace(
            config, sequential=False, attention="dense", exclude_modules=[],
            target_modules="|".join(re.escape(n) for n in names),
        )
        last = compress(current, calib_data, sub)
        current = last.model
        ranks.update(last.plan.ranks)
        decisions.extend(last.plan.decisions)
        spectra.update(last.spectra)
        seconds += last.report["calibration_seconds"]
        frames = last.report["calibration_frames"]
        logger.info("sequential: block %d/%d (%s) -> %d layers factored",
                    i + 1, len(groups), block, len(last.plan.ranks))
    compressed = current if last is not None else copy.deepcopy(source).eval()
    attention = choose_attention_(compressed.encoder, family, config.attention,
                                  family.window_frames(compressed.encoder))
    plan = RankPlan(ranks, decisions)
    report = dict(last.report) if last is not None else {}
    report.update({
        "family": family.name,
        "config": config.to_dict(),
        "plan": dict(ranks),
        "layers": [
            {"name": d.name, "role": d.role, "d_in": d.d_in, "d_out": d.d_out, "rank": d.rank,
             "rank_from_theta": d.rank_from_theta,
             "explained_variance": round(d.explained_variance, 6),
             "params_dense": d.params_dense, "params_kept": d.params_kept, "reason": d.reason}
            for d in decisions
        ],
        "attention": attention,
        "calibration_frames": frames,
        "calibration_seconds": round(seconds, 2),
        "calibration_passes": len(groups),
        "encoder_linear_params_dense": encoder_linear_params(source),
        "encoder_linear_params_compressed": encoder_linear_params(compressed),
        "encoder_flops_dense": encoder_flops(source, family.window_seconds),
        "encoder_flops_compressed": encoder_flops(compressed, family.window_seconds),
    })
    return CompressionResult(compressed, plan, attention, report, spectra)

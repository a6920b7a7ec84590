"""Sequential calibration (``sequential: true``): compress the encoder layer
group by layer group, in forward order, each group calibrated on the inputs
that the *already compressed* earlier layers produce.

One-pass LiteASR calibrates every layer on the dense model's activations, so
a later layer's basis fits inputs it never sees once the earlier layers are
truncated. Here a group's statistics come from a forward pass through the
partly compressed model, so each basis adapts to the error it receives.

A group is a run of target layers that read the same input tensor (q/k/v of
one attention); the others (``out``, ``fc1``, ``fc2``, ...) are groups of one.
That gives the order the refit needs: q/k/v, then ``out`` on inputs from the
new q/k/v, then the MLP's first and second layers.

With ``refit`` the factors are not the PCA of the layer's outputs but a
least-squares fit of the *dense* model's outputs from the compressed model's
inputs (``espnet_lowrank.refit``): the dense model runs beside the compressed
one on the same batch, and the group's dense outputs pair frame by frame with
the compressed inputs. Ranks come from θ either way, so refit and PCA are
compared at the same size. ``refit: no_qk`` keeps PCA for the query and key
projections, whose output error matters only through the attention logits.

Cost: one pass per group (two models with ``refit``), each stopped right
after the group's last layer. θ mode only (not ``budget``).
"""

import copy
import logging
import time
from typing import Dict, List, Optional, Set

import torch

from espnet_lowrank.calibration import frames_of
from espnet_lowrank.modes import restore_modes, training_modes
from espnet_lowrank.plan import RankPlan, make_plan
from espnet_lowrank.refit import RegressionStats, output_spectrum, refit_factors, relative_error

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by a hook once the layers of interest have run."""


def _run(encode, speech, lengths):
    try:
        encode(speech, lengths)
    except _StopForward:
        pass


def _hook_layers(encoder, names, on_call, frame_mask):
    """Forward hooks ``on_call(name, layer, input, output, mask)`` on ``names``;
    raises _StopForward once all of them ran. Returns the handles."""
    modules = dict(encoder.named_modules())
    pending: Set[str] = set()
    handles = []

    def make(name):
        layer = modules[name]

        def hook(_module, inputs, output):
            mask = frame_mask.current if frame_mask is not None else None
            on_call(name, layer, inputs[0], output, mask)
            pending.discard(name)
            if not pending:
                raise _StopForward

        return hook

    def reset(_module, _inputs):
        pending.update(names)

    handles.append(encoder.register_forward_pre_hook(reset))
    for name in names:
        handles.append(modules[name].register_forward_hook(make(name)))
    if frame_mask is not None:  # after the stats hooks: see EspnetFrameMask
        handles.extend(frame_mask.attach(encoder))
    return handles


def _masked(frames: torch.Tensor, mask: Optional[torch.Tensor], name: str) -> torch.Tensor:
    if mask is None:
        return frames
    if mask.shape != frames.shape[:2]:
        raise RuntimeError(f"frame mask {tuple(mask.shape)} does not match {tuple(frames.shape[:2])} of {name}")
    return frames[mask]


def input_groups(model, family, names: List[str], batch) -> List[List[str]]:
    """Target layers in call order, grouped where consecutive layers read the
    same input tensor."""
    # Compare each input with the previous layer's while holding a reference
    # to it: a freed tensor's memory can be reused at the same address and
    # shape, which made unrelated layers look like one group.
    order, shares_previous, last = [], {}, [None]

    def on_call(name, layer, x, _y, _mask):
        if name in shares_previous:
            return
        prev = last[0]
        order.append(name)
        shares_previous[name] = prev is not None and (
            x is prev or (x.data_ptr() == prev.data_ptr() and x.shape == prev.shape
                          and x.stride() == prev.stride()))
        last[0] = x

    handles = _hook_layers(model.encoder, names, on_call, None)
    try:
        with torch.no_grad():
            _run(model.encode, *batch)
    finally:
        last[0] = None
        for h in handles:
            h.remove()
    missing = sorted(set(names) - set(order))
    if missing:
        raise RuntimeError(f"these target layers never ran in the encoder's forward: {missing[:3]}")
    groups: List[List[str]] = []
    for name in order:
        if groups and shares_previous[name]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def paired_pass(dense, current, family, group: List[str], refit: Set[str], batches) -> Dict[str, RegressionStats]:
    """One pass over ``batches``: moments of the inputs that ``current`` feeds
    the group's layers, paired with ``dense``'s outputs of the layers in
    ``refit``."""
    from espnet_lowrank.modules.lowrank_linear import layer_dims

    cur_modules = dict(current.encoder.named_modules())
    stats = {}
    for name in group:
        d_in, d_out = layer_dims(cur_modules[name])
        stats[name] = RegressionStats(d_in, d_out, with_target=name in refit)
    targets: Dict[str, torch.Tensor] = {}

    def keep_target(name, layer, _x, y, mask):
        targets[name] = _masked(frames_of(layer, y), mask, name)

    def add_input(name, layer, x, _y, mask):
        stats[name].update(_masked(frames_of(layer, x), mask, name), targets.pop(name, None))

    frame_mask = family.frame_mask
    handles = []
    try:
        if refit:
            handles += _hook_layers(dense.encoder, [n for n in group if n in refit], keep_target,
                                    frame_mask() if frame_mask else None)
        handles += _hook_layers(current.encoder, group, add_input, frame_mask() if frame_mask else None)
        with torch.no_grad():
            for speech, lengths in batches:
                if refit:
                    _run(dense.encode, speech, lengths)
                _run(current.encode, speech, lengths)
    finally:
        for h in handles:
            h.remove()
    return stats


def compress_sequential(model, calib_data, config):
    from espnet_lowrank.progress import progress

    from espnet_lowrank.apply import choose_attention_, set_submodule
    from espnet_lowrank.compress import (CompressionResult, _calibration_utterances, asr_model_of,
                                         build_report, peak_rss_mb, recover_if_asked)
    from espnet_lowrank.data import iter_batches
    from espnet_lowrank.factorize import factor_weights
    from espnet_lowrank.families import family_for
    from espnet_lowrank.modules.lowrank_linear import linear_weight_and_bias, lowrank_class_for

    if config.budget is not None:
        raise ValueError("sequential calibration works with the θ thresholds, not with budget")
    if calib_data is None:
        raise ValueError("sequential calibration needs calib_data (it calibrates once per layer group)")
    if config.refit != "none" and config.elastic:
        raise ValueError("refit factors have no nested PCA basis: use refit: none with elastic")
    source = asr_model_of(model)
    family = family_for(source.encoder)
    targets = family.target_layers(source.encoder, config)
    utts = _calibration_utterances(calib_data, config.num_calib)
    device = next(source.parameters()).device

    def batches():
        for speech, lengths in iter_batches(utts, config.batch_size):
            yield speech.to(device), lengths.to(device)

    was_training = training_modes(source)
    dense = source.eval()
    current = copy.deepcopy(source).eval()
    refit = _refit_layers(family, current.encoder, targets, config.refit)
    started = time.perf_counter()
    ranks, decisions, spectra, fit, frames, stats_mb = {}, [], {}, {}, 0, 0.0
    try:
        groups = input_groups(dense, family, list(targets), next(batches()))
        for group in progress(groups, desc="sequential calibration", unit="group"):
            stats = paired_pass(dense, current, family, group, refit & set(group), batches())
            frames = frames or max(st.count for st in stats.values())
            stats_mb = max(stats_mb, sum(st.nbytes() for st in stats.values()) / 2 ** 20)
            layers = {n: current.encoder.get_submodule(n) for n in group}
            group_spectra = {n: output_spectrum(stats[n], *linear_weight_and_bias(layers[n])) for n in group}
            plan = make_plan(group_spectra, {n: targets[n] for n in group}, config)
            decisions.extend(plan.decisions)
            spectra.update(group_spectra)
            if config.elastic:
                from espnet_lowrank.experimental.elastic import factorize_elastic_

                factorize_elastic_(current.encoder, plan.ranks, group_spectra)
            for name, rank in plan.ranks.items():
                ranks[name] = rank
                if config.elastic:
                    continue
                w, b = linear_weight_and_bias(layers[name])
                if name in refit:
                    w1, w2, bias = refit_factors(stats[name], rank, config.refit_ridge, weight=w)
                    pca = factor_weights(w, b, group_spectra[name], rank)
                    fit[name] = {"pca": relative_error(stats[name], *pca),
                                 "refit": relative_error(stats[name], w1, w2, bias)}
                else:
                    w1, w2, bias = factor_weights(w, b, group_spectra[name], rank)
                cast = dict(device=w.device, dtype=w.dtype)
                new = lowrank_class_for(layers[name]).from_factors(w1.to(**cast), w2.to(**cast), bias.to(**cast))
                set_submodule(current.encoder, name, new)
    finally:
        restore_modes(source, was_training)
    seconds = time.perf_counter() - started
    recovery = recover_if_asked(current, source, utts, config)
    attention = choose_attention_(current.encoder, family, config.attention,
                                  family.window_frames(current.encoder))
    plan = RankPlan(ranks, decisions)
    report = build_report(source, current, family, config, plan, attention)
    report.update({
        "calibration_peak_rss_mb": round(peak_rss_mb(), 1),
        "calibration_seconds": round(seconds, 2),
        "calibration_passes": len(groups),
        "calibration_frames": frames,
        "statistics_mb": round(stats_mb, 2),
        "calibration_utterances": len(utts),
        "refit_relative_error": {n: {k: round(v, 6) for k, v in e.items()} for n, e in fit.items()},
        **recovery,
    })
    curves = {name: s.explained_variance().float().tolist() for name, s in spectra.items()}
    return CompressionResult(current, plan, attention, report, curves)


def _refit_layers(family, encoder, targets, mode: str) -> Set[str]:
    if mode == "none":
        return set()
    names = set(targets)
    if mode == "no_qk":
        by_module = {id(m): n for n, m in encoder.named_modules()}
        for attn in family.attention_modules(encoder).values():
            query, key, *_ = family.attention_parts(attn)
            names -= {by_module[id(query)], by_module[id(key)]}
    return names


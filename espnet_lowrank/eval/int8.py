"""How far dynamic int8 moves an encoder's output: ‖int8 − float‖ / ‖float‖
over a list of utterances, and the bottleneck channels' RMS of a factored
encoder measured by a forward pass (for rank-space balancing)."""

import copy

import torch

from espnet_lowrank.batches import batch_windows, pack
from espnet_lowrank.quantize import quantize_linears_


def encode(model, utts):
    """The encoder output of ``utts`` (one window each, batches of 4), concatenated."""
    with torch.no_grad():
        return torch.cat([model.encode(s, n)[0] for s, n in batch_windows(pack(utts, None), 4)])


def relative_error(model, utts, reference):
    """‖encoder output − reference‖ / ‖reference‖ over ``utts``."""
    return ((encode(model, utts) - reference).norm() / reference.norm()).item()


def int8_error(model, utts, reference):
    """:func:`relative_error` of a copy of ``model`` with int8 encoder linears."""
    q = copy.deepcopy(model)
    quantize_linears_(q.encoder)
    return relative_error(q, utts, reference)


def measured_rms(model, ranks, utts):
    """Each bottleneck channel's RMS from a forward pass over ``utts``
    (``ranks``: the factored layers' names)."""
    sums, hooks = {}, []
    for name in ranks:
        layer = model.encoder.get_submodule(name)

        def hook(mod, inp, out, name=name):
            z = out.detach().flatten(0, -2).double()
            s, n = sums.get(name, (0.0, 0))
            sums[name] = (s + (z * z).sum(0), n + z.shape[0])
        hooks.append(layer.down.register_forward_hook(hook))
    encode(model, utts)
    for h in hooks:
        h.remove()
    return {n: (s / c).sqrt() for n, (s, c) in sums.items()}

"""Layer groups for sequential calibration (``sequential: true``): one-pass LiteASR fits a later layer's
basis to dense inputs it never sees once earlier layers are truncated, so groups are calibrated one at a
time, in forward order, on the partly compressed model. A group is a run of target layers that read the
same input tensor (q/k/v of one attention); the others (``out``, ``fc1``, ...) are groups of one.
"""

from typing import List

import torch

from espnet_lowrank.calibration import StopForward


def input_groups(model, names: List[str], batch) -> List[List[str]]:
    """Target layers of ``model.encoder`` in call order, grouped where
    consecutive layers read the same input tensor."""
    # Compare each input with the previous layer's while holding a reference
    # to it: a freed tensor's memory can be reused at the same address and
    # shape, which made unrelated layers look like one group.
    order, shares_previous, last = [], {}, [None]
    modules = dict(model.encoder.named_modules())

    def make(name):
        def hook(_module, inputs, _output):
            if name in shares_previous:
                return
            x, prev = inputs[0], last[0]
            order.append(name)
            shares_previous[name] = prev is not None and (
                x is prev or (x.data_ptr() == prev.data_ptr() and x.shape == prev.shape
                              and x.stride() == prev.stride()))
            last[0] = x
            if len(order) == len(names):
                raise StopForward

        return hook

    handles = [modules[name].register_forward_hook(make(name)) for name in names]
    try:
        with torch.no_grad():
            model.encode(*batch)
    except StopForward:
        pass
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

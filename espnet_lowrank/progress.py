"""The one progress bar: tqdm on stderr, silenced by ``ESPNET_LOWRANK_NO_TQDM=1``
(tests and batch jobs set it, so logs stay readable)."""

import os
import sys


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled when ESPNET_LOWRANK_NO_TQDM=1."""
    from tqdm import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("disable", os.environ.get("ESPNET_LOWRANK_NO_TQDM") == "1")
    return tqdm(iterable, **kwargs)

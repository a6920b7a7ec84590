"""Size, FLOPs and latency of an encoder, measured the same way for the dense
and the compressed model."""

import statistics
import time
from typing import Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from espnet_lowrank.apply import linear_params

SAMPLE_RATE = 16000


def _dummy_input(seconds: float, batch: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    samples = int(seconds * SAMPLE_RATE)
    generator = torch.Generator().manual_seed(0)
    speech = 0.01 * torch.randn(batch, samples, generator=generator)
    return speech, torch.full((batch,), samples, dtype=torch.long)


def encoder_linear_params(model) -> int:
    return linear_params(model.encoder)


@torch.no_grad()
def encoder_flops(model, seconds: float) -> int:
    """FLOPs of the encoder (frontend included) for one utterance of ``seconds``."""
    speech, lengths = _dummy_input(seconds)
    counter = FlopCounterMode(display=False)
    with counter:
        model.encode(speech, lengths)
    return int(counter.get_total_flops())


@torch.no_grad()
def encoder_latency(model, seconds: float, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time (s) of ``model.encode`` on one utterance of ``seconds``."""
    speech, lengths = _dummy_input(seconds)
    for _ in range(warmup):
        model.encode(speech, lengths)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode(speech, lengths)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def paired_latency(dense, compressed, seconds: float, repeats: int = 5, warmup: int = 1):
    """Median latencies (dense, compressed), timed alternately so that
    machine noise hits both alike."""
    speech, lengths = _dummy_input(seconds)
    for _ in range(warmup):
        dense.encode(speech, lengths)
        compressed.encode(speech, lengths)
    times = {"dense": [], "compressed": []}
    for _ in range(repeats):
        for name, model in (("dense", dense), ("compressed", compressed)):
            start = time.perf_counter()
            model.encode(speech, lengths)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["dense"]), statistics.median(times["compressed"])

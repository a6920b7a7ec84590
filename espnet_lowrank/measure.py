"""Size, FLOPs and latency of an encoder, measured alike for the dense and the compressed model."""

import io
import os
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Tuple

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.utils.flop_counter import FlopCounterMode

from espnet_lowrank.handlers import is_dense_projection

SAMPLE_RATE = 16000


def _dummy_input(seconds: float) -> Tuple[torch.Tensor, torch.Tensor]:
    samples = int(seconds * SAMPLE_RATE)
    speech = 0.01 * torch.randn(1, samples, generator=torch.Generator().manual_seed(0))
    return speech, torch.tensor([samples])


def encoder_linear_params(model) -> int:
    """Parameters of the encoder's projections: dense ones (``nn.Linear``, 1x1 ``Conv1d``), the low-rank
    factors (such projections) and int8 linears (as many weights; :func:`encoder_mb` counts bytes)."""
    total = 0
    for m in model.encoder.modules():
        if is_dense_projection(m):
            total += sum(p.numel() for p in m.parameters(recurse=False))
        elif isinstance(m, DynamicInt8Linear):
            total += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
    return total


def encoder_mb(model) -> float:
    """Size of the encoder's state dict as ``torch.save`` writes it (float or packed int8), MiB."""
    buffer = io.BytesIO()
    torch.save(model.encoder.state_dict(), buffer)
    return buffer.tell() / 2 ** 20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Which kernels do the float arithmetic: each changes a result's last bits, which recovery's Adam steps
# grow into another model (bench/DECISIONS.md, "what a recovery run depends on"); pin them to reproduce.
ARITHMETIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_facts(device) -> dict:
    """What a compression's numbers depend on besides its config and data."""
    device = torch.device(device)
    facts = {"torch": torch.__version__, "device": str(device), "cpu": cpu_model(),
             "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
             "env": {k: os.environ.get(k) for k in ARITHMETIC_ENV}}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


class StepCosts:
    """Per named step of a compression: wall time (summed over calls) and the peak RSS after it."""

    def __init__(self):
        self.steps: Dict[str, Dict[str, float]] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            entry = self.steps.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0})
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - started, 2)
            entry["peak_rss_mb"] = round(peak_rss_mb(), 1)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q Kᵀ plus P V for (B, H, L, E) queries, (B, H, S, E) keys, (B, H, S, Ev) values."""
    b, h, l, e = query_shape
    s, ev = key_shape[-2], value_shape[-1]
    return 2 * b * h * l * s * (e + ev)


# torch's counter knows the CUDA attention kernels but not the CPU one.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


@torch.no_grad()
def encoder_flops(model, seconds: float) -> int:
    """FLOPs of the encoder (frontend included) for one utterance of ``seconds``."""
    speech, lengths = _dummy_input(seconds)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with counter:
        model.encode(speech, lengths)
    return int(counter.get_total_flops())


@torch.no_grad()
def paired_latency(dense, compressed, seconds: float, repeats: int = 5):
    """Median latencies (dense, compressed), timed alternately so that machine noise hits both alike."""
    speech, lengths = _dummy_input(seconds)
    dense.encode(speech, lengths)  # warm-up
    compressed.encode(speech, lengths)
    times = {"dense": [], "compressed": []}
    for _ in range(repeats):
        for name, model in (("dense", dense), ("compressed", compressed)):
            start = time.perf_counter()
            model.encode(speech, lengths)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["dense"]), statistics.median(times["compressed"])

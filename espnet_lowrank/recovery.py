"""Short recovery (``recovery_steps: N``): distillation of the low-rank factors (every other weight
frozen) towards the dense model on the calibration audio's valid frames, end to end or one encoder
block at a time. Runs in eval mode with gradients on: the student sees the forward it will run."""

import contextlib
import ctypes
import functools
import logging
import time
from typing import List, Optional

import torch
from torch.utils.checkpoint import checkpoint

from espnet_lowrank.batches import iter_batches
from espnet_lowrank.data import Utterance
from espnet_lowrank.families.base import matching_modules
from espnet_lowrank.handlers import is_lowrank
from espnet_lowrank.nn_utils import valid_mask
from espnet_lowrank.progress import progress

logger = logging.getLogger(__name__)


def factor_parameters(encoder: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The parameters of every low-rank projection: what recovery trains."""
    return [p for module in encoder.modules() if is_lowrank(module) for p in module.parameters()]


def _valid_mse(student: torch.Tensor, teacher: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    diff = (student - teacher)[valid_mask(lengths, teacher.shape[1])]
    return (diff * diff).mean()


def compared_output(model, objective: str) -> str:
    """What ``objective`` compares on ``model``; one the model cannot give is refused before any work.
    ``encoder``: encoder outputs (MSE). ``decoder``, weighing the output's directions as the decoder does:
    Whisper's cross-attention keys and values ('cross_kv', MSE per tensor / dense mean square) or the CTC
    posteriors ('ctc', KL). ``decoder+tokens`` ('cross_kv+tokens'): plus the next-token KL, teacher-forced
    on the dense model's greedy transcript (the KL alone lost on LibriSpeech). No labels are needed."""
    if objective == "encoder":
        return "encoder"
    if objective == "decoder+tokens":
        if not hasattr(getattr(model, "decoder", None), "greedy"):
            raise ValueError(f"recovery.objective: {objective} needs a Whisper decoder; this model has "
                             "none (use objective: decoder)")
        return objective.replace("decoder", "cross_kv")
    if hasattr(getattr(model, "decoder", None), "cross_kv"):
        return "cross_kv"
    if getattr(model, "ctc", None) is not None:
        return "ctc"
    raise ValueError("recovery.objective: decoder needs a CTC head or a Whisper decoder; "
                     "this model has neither (use objective: encoder)")


def _view(model, encoder_out: torch.Tensor, output: str, transcript=None) -> List[torch.Tensor]:
    """The tensors compared for ``output``; ``transcript``: (tokens, mask of the positions the KL covers)."""
    if output == "cross_kv+tokens":  # + the decoder's final states at the transcript's positions
        cross = model.decoder.cross_kv(encoder_out)
        tokens, mask = transcript
        return [t for kv in cross for t in kv] + [model.decoder.states(tokens, encoder_out, cross)[mask]]
    if output == "cross_kv":
        return [t for kv in model.decoder.cross_kv(encoder_out) for t in kv]
    if output == "ctc":
        return [model.ctc.log_softmax(encoder_out)]
    return [encoder_out]


def token_kl(teacher_states: torch.Tensor, student_states: torch.Tensor, vocabulary: torch.Tensor,
             rows: int = 64) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions ``states @ vocabulary.T``, averaged over
    the (N, D) rows, differentiable in ``student_states`` only. Computed ``rows`` at a time with its
    gradient, (p_student - p_teacher) @ vocabulary / N, so no (N, n_vocab) tensor or autograd copy
    of one is held: with them, Whisper's 51,865 logits per position put recovery over 4 GB."""
    n = student_states.shape[0]
    total = student_states.new_zeros(())
    grad = torch.zeros_like(student_states)
    with torch.no_grad():
        for i in range(0, n, rows):
            log_t = torch.log_softmax((teacher_states[i : i + rows] @ vocabulary.t()).float(), dim=-1)
            log_s = torch.log_softmax((student_states[i : i + rows] @ vocabulary.t()).float(), dim=-1)
            total += (log_t.exp() * (log_t - log_s)).sum()
            grad[i : i + rows] = ((log_s.exp() - log_t.exp()) @ vocabulary.float()).to(grad.dtype)
    # value total / n, gradient grad / n
    surrogate = (student_states * grad).sum() / max(n, 1)
    return total / max(n, 1) + surrogate - surrogate.detach()


def _loss(student: List[torch.Tensor], teacher: List[torch.Tensor], lengths: torch.Tensor,
          output: str, vocabulary=None) -> torch.Tensor:
    if output == "cross_kv+tokens":
        return (_loss(student[:-1], teacher[:-1], lengths, "cross_kv")
                + _loss(student[-1:], teacher[-1:], lengths, "tokens", vocabulary))
    if output == "tokens":  # over the transcript's positions
        return token_kl(teacher[0], student[0], vocabulary)
    if output == "cross_kv":
        return sum(_valid_mse(s, t, lengths) / t.pow(2).mean().clamp_min(1e-12)
                   for s, t in zip(student, teacher)) / len(teacher)
    if output == "ctc":  # KL(dense || compressed) over the valid frames
        mask = valid_mask(lengths, teacher[0].shape[1])
        log_t, log_s = teacher[0][mask], student[0][mask]
        return (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    return _valid_mse(student[0], teacher[0], lengths)


def _train_keep_best(model, params, loss_of, n_batches: int, steps: int, lr: float, desc: str):
    """Adam on ``params`` only, batch ``step % n_batches`` per step. After every pass over the batches
    the loss on all of them picks the factors kept: a too-large LR can raise the loss, and the start
    (plain PCA) must never be replaced by something worse. Returns (loss before, after, kept step)."""
    trainable = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in trainable and p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)

    def full_loss():
        with torch.no_grad():
            batches = progress(range(n_batches), desc=f"{desc}: loss on every batch", unit="batch", leave=False)
            return sum(float(loss_of(i)) for i in batches) / n_batches

    def snapshot():
        return [p.detach().clone() for p in params]

    for p in frozen:
        p.requires_grad_(False)
    try:
        before = full_loss()
        best, best_loss, best_step = snapshot(), before, 0
        with torch.enable_grad():
            for step in progress(range(steps), desc=desc, unit="step"):
                loss = loss_of(step % n_batches)
                if not torch.isfinite(loss):
                    logger.warning("%s loss became non-finite at step %d; stopping and keeping "
                                   "the best factors. Lower recovery_lr.", desc, step)
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if (step + 1) % n_batches == 0 or step + 1 == steps:
                    current = full_loss()
                    if current < best_loss:
                        best, best_loss, best_step = snapshot(), current, step + 1
    finally:
        for p in frozen:
            p.requires_grad_(True)
    with torch.no_grad():
        for p, saved in zip(params, best):
            p.copy_(saved)
    return before, best_loss, best_step


def _batches(compressed, utts: List[Utterance], steps: int, batch_size: int,
             pack_seconds: Optional[float], max_seconds: Optional[float]) -> list:
    """The calibration batches on the model's device, after the checks both scopes share."""
    if steps < 1:
        raise ValueError(f"recovery needs at least one step, got {steps}")
    if not utts:
        raise ValueError("recovery needs calibration utterances")
    params = factor_parameters(compressed.encoder)
    if not params:
        raise ValueError("no low-rank layers to train: the plan factored nothing")
    device = params[0].device
    batches = iter_batches(utts, batch_size, pack_seconds=pack_seconds, max_seconds=max_seconds)
    return [(s.to(device), n.to(device)) for s, n in batches]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
TRIM_THRESHOLD_BYTES = 128 << 10  # glibc's default, which its adaptive threshold raises
FREED_TO_SYSTEM_BYTES = 8 << 20  # measured: bench/DECISIONS.md, "recovery's memory"


def return_freed_memory() -> bool:
    """Make glibc serve allocations of 8 MB or more from their own mappings, which go back to the
    system when freed, and trim its heap now (``MALLOC_MMAP_THRESHOLD_=8388608`` from start-up).
    Otherwise freed activations of up to 32 MB stay in the heap, fragment it and the process grows
    past what is alive. Holds for the rest of the process (glibc cannot go back to its adaptive
    thresholds). False where the C library has no ``mallopt`` or it refuses a setting."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    accepted = [mallopt(M_MMAP_THRESHOLD, FREED_TO_SYSTEM_BYTES), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)]
    malloc_trim(0)  # what the heap already holds free goes back now
    return accepted == [1, 1]


@contextlib.contextmanager
def checkpointed(model, blocks: Optional[str]):
    """The modules matching ``blocks`` recompute their forward in the backward pass (torch.utils.checkpoint),
    so a step holds one block's activations at a time; the gradients do not change."""
    modules = [m for _, m in matching_modules(model, blocks)]
    for module in modules:
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)
    try:
        yield
    finally:
        for module in modules:
            del module.forward  # back to the class's forward


def recover_(compressed, dense, utts: List[Utterance], steps: int, lr: float = 3e-5,
             batch_size: int = 4, objective: str = "encoder", pack_seconds: Optional[float] = None,
             recompute_blocks: Optional[str] = None, max_seconds: Optional[float] = None) -> dict:
    """Train ``compressed``'s factors in place for ``steps`` steps to match ``dense`` under ``objective``,
    keeping the best (see :func:`_train_keep_best`). ``recompute_blocks``: see :func:`checkpointed`."""
    output = compared_output(compressed, objective)
    batches = _batches(compressed, utts, steps, batch_size, pack_seconds, max_seconds)
    params = factor_parameters(compressed.encoder)
    # Only the dense encoder output is cached: its decoder views (Whisper's cross-attention keys and
    # values, 2 x layers times its size) are recomputed per step, for a few projections.
    with torch.no_grad():
        targets = [dense.encode(speech, lengths)
                   for speech, lengths in progress(batches, desc="recovery: dense teacher", unit="batch")]
        transcripts, vocabulary = [(None, None)] * len(targets), None
        if "tokens" in output:  # the dense model's own transcripts, which the token KL teacher-forces
            transcripts = [dense.decoder.greedy(out, dense.decoder.n_ctx // 2)
                           for out, _ in progress(targets, desc="recovery: teacher transcripts", unit="batch")]
            vocabulary = dense.decoder.vocabulary.detach()
    compressed.eval()

    def loss_of(i):
        speech, lengths = batches[i]
        out, _ = compressed.encode(speech, lengths)
        (dense_out, dense_lens), transcript = targets[i], transcripts[i]
        with torch.no_grad():
            teacher = _view(dense, dense_out, output, transcript)
        return _loss(_view(compressed, out, output, transcript), teacher, dense_lens, output, vocabulary)

    started = time.perf_counter()
    with checkpointed(compressed.encoder, recompute_blocks):
        before, after, best_step = _train_keep_best(compressed, params, loss_of, len(batches), steps, lr,
                                                    "recovery")
    if best_step == 0:
        logger.warning("recovery did not lower the %s loss (%.4g); kept the factors from "
                       "calibration. Try a lower recovery_lr.", objective, before)
    logger.info("recovery: %d steps, %s loss %.4g -> %.4g", steps, objective, before, after)
    return {"recovery_steps": steps, "recovery_lr": lr, "recovery_objective": objective,
            "recovery_loss_before": before, "recovery_loss_after": after, "recovery_best_step": best_step,
            "recovery_seconds": round(time.perf_counter() - started, 2)}


def _hidden(block_output) -> torch.Tensor:
    """ESPnet blocks return ``((x, pos_emb), mask)`` or ``(x, mask)``, Whisper's return ``x``."""
    while isinstance(block_output, tuple):
        block_output = block_output[0]
    return block_output


def _block_io(model, first, last, batches):
    """Per batch: what ``first`` is called with (args, kwargs), what ``last`` returns, the output lengths."""
    inputs, outputs, lens = [], [], []
    handles = [first.register_forward_pre_hook(lambda _m, args, kwargs: inputs.append((args, kwargs)),
                                               with_kwargs=True),
               last.register_forward_hook(lambda _m, _args, out: outputs.append(_hidden(out)))]
    try:
        with torch.no_grad():
            for speech, lengths in progress(batches, desc="recovery: block inputs", unit="batch"):
                lens.append(model.encode(speech, lengths)[1])
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs, lens


def recover_blocks_(compressed, dense, utts: List[Utterance], blocks: str, steps: int,
                    lr: float = 3e-5, batch_size: int = 4, pack_seconds: Optional[float] = None,
                    max_seconds: Optional[float] = None) -> dict:
    """``recovery.scope: block``: each block matching ``blocks``, in forward order, trains ``steps`` steps
    to give, from the compressed model's input to it, the dense model's output of that block (MSE).
    Block inputs are cached, so a step costs one block, not the whole encoder."""
    batches = _batches(compressed, utts, steps, batch_size, pack_seconds, max_seconds)
    student_blocks, teacher_blocks = ([m for _, m in matching_modules(encoder, blocks)]
                                      for encoder in (compressed.encoder, dense.encoder))
    compressed.eval()
    student_in, last_before, lens = _block_io(compressed, student_blocks[0], student_blocks[-1], batches)
    teacher_in, _, _ = _block_io(dense, teacher_blocks[0], teacher_blocks[-1], batches)
    started, per_block = time.perf_counter(), []

    def advance(block, inputs):
        with torch.no_grad():
            outs = [block(*args, **kwargs) for args, kwargs in inputs]
        return [(out if isinstance(out, tuple) else (out,), kwargs)
                for out, (_, kwargs) in zip(outs, inputs)]

    for i, (student, teacher) in enumerate(zip(student_blocks, teacher_blocks)):
        teacher_in = advance(teacher, teacher_in)
        params = factor_parameters(student)
        if params:
            def loss_of(j, student=student):
                args, kwargs = student_in[j]
                return _valid_mse(_hidden(student(*args, **kwargs)), _hidden(teacher_in[j][0]), lens[j])

            before, after, best_step = _train_keep_best(
                compressed, params, loss_of, len(batches), steps, lr, f"recovery block {i}")
            per_block.append({"block": i, "loss_before": before, "loss_after": after, "best_step": best_step})
        student_in = advance(student, student_in)
    # The last block's output (what the encoder's final norm reads), before and after.
    before = sum(_valid_mse(b, _hidden(t[0]), n).item()
                 for b, t, n in zip(last_before, teacher_in, lens)) / len(batches)
    after = sum(_valid_mse(_hidden(s[0]), _hidden(t[0]), n).item()
                for s, t, n in zip(student_in, teacher_in, lens)) / len(batches)
    logger.info("block-wise recovery: %d blocks x %d steps, last block output MSE %.4g -> %.4g",
                len(per_block), steps, before, after)
    return {"recovery_steps": steps, "recovery_lr": lr, "recovery_objective": "encoder",
            "recovery_scope": "block", "recovery_blocks": per_block,
            "recovery_loss_before": before, "recovery_loss_after": after,
            "recovery_seconds": round(time.perf_counter() - started, 2)}

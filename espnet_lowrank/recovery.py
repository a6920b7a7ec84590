"""Short recovery (``recovery_steps: N``): a few hundred steps of distillation
after factoring, on the calibration audio (valid frames only). Only the
low-rank factors train; every other weight stays as it was. The objective:

- ``encoder``: MSE between the compressed and the dense encoder outputs;
- ``decoder``: what the decoder reads from the encoder output. Whisper's
  decoder reads it only through each layer's cross-attention key and value
  projections (MSE, each tensor scaled by the dense one's mean square); an
  ESPnet CTC model reads the CTC posteriors (KL to the dense model's). Plain
  MSE weighs every direction of the encoder output alike, these weigh them
  as the decoder does. No labels are needed;
- ``decoder+tokens`` (Whisper): the decoder objective plus the KL to the dense
  decoder's next-token distribution, teacher-forced on the dense model's own
  greedy transcript of each window (the KL alone lost on LibriSpeech).

The scope: ``end_to_end`` runs the whole encoder per step; ``block``
(:func:`recover_blocks_`) trains one encoder block at a time from cached
inputs, so a step costs one block; ``final_steps`` then runs a short end-to-end
pass under the objective (the pipeline calls :func:`recover_` after it).

Runs in eval mode (no dropout or SpecAugment) with gradients on, so the
student sees exactly the forward it will run at inference.
"""

import contextlib
import ctypes
import functools
import logging
import time
from typing import List, Optional

import torch

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
    """What ``objective`` compares on ``model``: 'encoder', 'cross_kv' (Whisper's
    decoder) or 'ctc'. An objective the model cannot give is refused here,
    before any work."""
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
    """The tensors compared for ``output`` (see :func:`compared_output`);
    ``transcript`` is (tokens, mask of the positions the token KL covers)."""
    if output == "cross_kv+tokens":  # + the decoder's final states at the transcript's positions
        cross = model.decoder.cross_kv(encoder_out)
        tokens, mask = transcript
        return [t for kv in cross for t in kv] + [model.decoder.states(tokens, encoder_out, cross)[mask]]
    if output == "cross_kv":
        return [t for kv in model.decoder.cross_kv(encoder_out) for t in kv]
    if output == "ctc":
        return [model.ctc.log_softmax(encoder_out)]
    return [encoder_out]


def _kl(log_teacher: torch.Tensor, log_student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per row, averaged."""
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()


def token_kl(teacher_states: torch.Tensor, student_states: torch.Tensor, vocabulary: torch.Tensor,
             rows: int = 64) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions ``states @
    vocabulary.T``, averaged over the (N, D) rows; differentiable in
    ``student_states`` only. Computed ``rows`` at a time together with its
    gradient, (p_student - p_teacher) @ vocabulary / N, so no (N, n_vocab)
    tensor or autograd copy of one is ever held: with them, Whisper's 51,865
    logits per position put recovery over 4 GB."""
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
        return _kl(teacher[0][mask], student[0][mask])
    return _valid_mse(student[0], teacher[0], lengths)


def _train_keep_best(model, params, loss_of, n_batches: int, steps: int, lr: float, desc: str):
    """Adam on ``params`` only (every other parameter of ``model`` frozen
    meanwhile), batch ``step % n_batches`` per step. After every pass over
    the batches the loss over all of them is measured and the best factors
    are kept: a too-large LR can raise the loss, and the start (plain PCA)
    must never be replaced by something worse. Returns (loss before, loss
    after, step the kept factors are from)."""
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
    return [(s.to(device), n.to(device)) for s, n in iter_batches(utts, batch_size, pack_seconds=pack_seconds,
                                                                          max_seconds=max_seconds)]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
TRIM_THRESHOLD_BYTES = 128 << 10  # glibc's default, which its adaptive threshold raises
FREED_TO_SYSTEM_BYTES = 8 << 20  # measured: bench/DECISIONS.md, "recovery's memory"


def return_freed_memory() -> bool:
    """Make glibc serve allocations of 8 MB or more from their own mappings,
    which go back to the system when freed, and give back what its heap holds
    free now: what ``MALLOC_MMAP_THRESHOLD_=8388608`` does from start-up.
    Otherwise glibc keeps freed activations of up to 32 MB in its heap, where
    they fragment it and the process grows past what is alive. It holds for the
    rest of the process (glibc has no way back to its adaptive thresholds).
    False where the C library has no ``mallopt`` or it refuses a setting."""
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
    """Within the context, each module of ``model`` whose name matches
    ``blocks`` recomputes its forward in the backward pass instead of keeping
    its activations (torch.utils.checkpoint), so a training step holds one
    block's activations at a time. The same operations run on the same inputs,
    so the gradients do not change."""
    from torch.utils.checkpoint import checkpoint

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
    """Train ``compressed``'s low-rank factors for ``steps`` steps to match
    ``dense`` on ``utts`` under ``objective`` (in place). After every pass over
    the batches the loss over all of them is measured, and the factors with the
    lowest one are kept (the calibration factors when nothing improved).
    ``recompute_blocks`` (a regex of encoder block names) recomputes those
    blocks in the backward pass (:func:`checkpointed`).
    Returns the loss before and after and the step the kept factors are from."""
    output = compared_output(compressed, objective)
    batches = _batches(compressed, utts, steps, batch_size, pack_seconds, max_seconds)
    params = factor_parameters(compressed.encoder)
    # Only the dense encoder output is cached: the decoder's views of it (Whisper's
    # cross-attention keys and values are 2 x layers times its size) are recomputed
    # per step, which costs a few projections and makes the cache 2 x layers smaller.
    # The dense teacher's pass is minutes on a busy CPU: it gets its own bars.
    with torch.no_grad():
        targets = [dense.encode(speech, lengths)
                   for speech, lengths in progress(batches, desc="recovery: dense teacher", unit="batch")]
        # the dense model's own transcripts, which the token KL teacher-forces
        transcripts = [(None, None)] * len(targets)
        if "tokens" in output:
            transcripts = [dense.decoder.greedy(out, dense.decoder.n_ctx // 2)
                           for out, _ in progress(targets, desc="recovery: teacher transcripts", unit="batch")]
    vocabulary = dense.decoder.vocabulary.detach() if "tokens" in output else None
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
    """The hidden states in a block's output: ESPnet blocks return
    ``((x, pos_emb), mask)`` or ``(x, mask)``, Whisper's return ``x``."""
    while isinstance(block_output, tuple):
        block_output = block_output[0]
    return block_output


def _block_io(model, first, last, batches):
    """One forward per batch: what ``first`` is called with, as (args, kwargs),
    the hidden states ``last`` returns, and the encoder's output lengths."""
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
    """Block-wise recovery (``recovery.scope: block``): each encoder block
    (module names matching ``blocks``) in forward order, ``steps`` steps each,
    trains its factors so that, from the compressed model's input to it, it
    gives the dense model's output of that block (MSE, valid frames). Block
    inputs are cached, so a step costs one block, not the whole encoder; each
    block keeps its best factors."""
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
            per_block.append({"block": i, "loss_before": before, "loss_after": after,
                              "best_step": best_step})
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

"""Recovery: distil the factors toward the dense model on calibration audio."""

import logging
from functools import partial

from espnet_lowrank.modes import kept_modes
from espnet_lowrank.recovery import compared_output, recover_, recover_blocks_, return_freed_memory
from espnet_lowrank.steps.base import Run, Step

logger = logging.getLogger(__name__)


class Recovery(Step):
    """End to end or block by block (``recovery.scope``), then the optional
    end-to-end pass after the blocks (``recovery.final_steps``)."""

    name = "recovery"

    def wanted(self, config):
        return config.recovery.steps > 0

    def audio_needed(self, config):
        return "recovery_steps trains on calibration audio"

    def check(self, model, family, config, targets):
        compared_output(model, config.recovery.objective)  # refuses an impossible objective

    def apply(self, run: Run) -> None:
        r, c, family = run.config.recovery, run.config.calibration, run.family
        if r.return_freed_memory and not return_freed_memory():
            logger.warning("recovery.return_freed_memory: no glibc mallopt here, or it refused the setting; "
                           "memory as it is")
        common = dict(lr=r.lr, batch_size=c.batch_size, pack_seconds=c.pack_seconds,
                      max_seconds=family.input_seconds)
        with run.costs.step("recovery"), kept_modes(run.source):
            source = run.source.eval()
            end_to_end = partial(recover_, run.model, source, run.utts, objective=r.objective,
                                 recompute_blocks=family.blocks if r.recompute_blocks else None, **common)
            if r.scope == "end_to_end":
                report = end_to_end(r.steps)
            else:
                report = recover_blocks_(run.model, source, run.utts, family.blocks, r.steps, **common)
                if r.final_steps:
                    report["recovery_final"] = end_to_end(r.final_steps)
        run.report.update(report)

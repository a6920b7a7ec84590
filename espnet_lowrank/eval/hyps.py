"""The hypotheses a run kept (``<run>/hyps/<row>/<set>.txt``, written by
:func:`espnet_lowrank.eval.decode.write_hyps`), read back against the sets'
references: rescoring, pairing with another row, and cutting loops the way
the Whisper decoder's loop guard would have."""

import os
from typing import Dict, NamedTuple

from espnet_lowrank.scoring import read_text_file, utterance_errors
from espnet_lowrank.whisper.loop_guard import LOOP_REPEATS, LOOP_TOKENS, ends_in_loop
from espnet_lowrank.whisper.tokenizer import get_whisper_tokenizer


def loop_cutter(model):
    """text -> (the text the loop guard leaves, whether it cut), with the
    tokenizer of Whisper ``model`` (``tiny.en``, ``base``, ...)."""
    tokenizer = get_whisper_tokenizer(51864 if model.endswith(".en") else 51865)

    def cut(text):
        ids = tokenizer.encode(" " + text.strip())
        for end in range(1, len(ids) + 1):
            if ends_in_loop(ids[:end], LOOP_REPEATS, LOOP_TOKENS):
                return tokenizer.decode(ids[:end]).strip(), True
        return text, False
    return cut


def read_row(run, row, data, cut=None):
    """set -> (refs, hyps, how many cut) of one row's kept hypotheses, the
    references from ``data/<set>/text``; ``cut`` (see :func:`loop_cutter`)
    rewrites each hypothesis first."""
    folder = os.path.join(run, "hyps", row)
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: no such row (folders under {run}/hyps: "
                         f"{sorted(os.listdir(os.path.join(run, 'hyps')))})")
    out = {}
    for name in sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt")):
        hyps, n_cut = read_text_file(os.path.join(folder, f"{name}.txt")), 0
        if cut is not None:
            cuts = {k: cut(v) for k, v in hyps.items()}
            hyps, n_cut = {k: text for k, (text, _) in cuts.items()}, sum(was_cut for _, was_cut in cuts.values())
        refs = {k: v for k, v in read_text_file(os.path.join(data, name, "text")).items() if k in hyps}
        out[name] = (refs, hyps, n_cut)
    return out


class PairedRow(NamedTuple):
    """One row and its run's ``against`` row on one set, per utterance id."""

    refs: Dict[str, str]
    hyps: Dict[str, str]
    base_hyps: Dict[str, str]
    errors: Dict[str, int]
    base_errors: Dict[str, int]
    words: Dict[str, int]


def row_errors(folder, against, name, data) -> PairedRow:
    """The row in ``folder`` (``<run>/hyps/<row>``) paired with ``<run>/hyps/<against>`` on set ``name``."""
    run, row = os.path.dirname(os.path.dirname(os.path.abspath(folder))), os.path.basename(os.path.normpath(folder))
    rows = {r: read_row(run, r, data) for r in (row, against)}
    for r, sets in rows.items():
        if name not in sets:
            raise SystemExit(f"{run}/hyps/{r}: no hypotheses for {name}")
    (refs, hyps, _), (_, base, _) = rows[row][name], rows[against][name]
    if set(hyps) != set(base):
        raise SystemExit(f"{folder} and {against} hold different utterances of {name}")
    ours, theirs = utterance_errors(refs, hyps), utterance_errors(refs, base)
    return PairedRow(refs, hyps, base, {k: e for k, (e, _) in ours.items()}, {k: e for k, (e, _) in theirs.items()},
                     {k: w for k, (_, w) in theirs.items()})

"""WER/CER scoring in the style of ESPnet's RESULTS.md. Rates are corpus rates (all errors over all
reference units, not a mean of per-utterance rates); alignment counts come from jiwer 4."""

import logging
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import jiwer

from espnet_lowrank.data import read_kv_file

logger = logging.getLogger(__name__)

NORMALIZERS = ("whisper", "basic", "none")
COLUMNS = ["dataset", "Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
_MAX_LISTED = 10


@dataclass
class ScoreRow:
    """One row of an ESPnet results table: sentences, reference units (words, or characters for CER),
    then percentages of ``wrd`` (err = sub + del + ins) and of sentences with any error (``s_err``)."""

    dataset: str
    snt: int
    wrd: int
    corr: float
    sub: float
    dele: float
    ins: float
    err: float
    s_err: float
    unit: str = "word"

    def cells(self) -> List[str]:
        return [self.dataset, str(self.snt), str(self.wrd)] + [
            f"{v:.1f}" for v in (self.corr, self.sub, self.dele, self.ins, self.err, self.s_err)
        ]


def basic_normalize(text: str) -> str:
    """Upper-case, drop punctuation (keeping word-internal apostrophes), squeeze spaces."""
    text = text.upper()
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<![A-Z0-9])'|'(?![A-Z0-9])", " ", text)
    return " ".join(text.split())


def get_normalizer(normalize: str) -> Callable[[str], str]:
    """"whisper" (openai-whisper's ``EnglishTextNormalizer``), "basic" or "none" (whitespace squeezed)."""
    if normalize == "whisper":
        from whisper.normalizers import EnglishTextNormalizer

        norm = EnglishTextNormalizer()
        return lambda s: " ".join(norm(s).split())
    if normalize == "basic":
        return basic_normalize
    if normalize == "none":
        return lambda s: " ".join(s.split())
    raise ValueError(f"unknown normalize={normalize!r}; choose one of {NORMALIZERS}")


def _align(refs: Dict[str, str], hyps: Dict[str, str], normalize: str, unit: str) -> Dict[str, object]:
    """id -> jiwer alignment of the normalized reference and hypothesis, in id order."""
    norm = get_normalizer(normalize)
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    return {i: process(norm(refs[i]), norm(hyps[i])) for i in sorted(refs)}


def score_texts(
    refs: Dict[str, str],
    hyps: Dict[str, str],
    dataset: str = "test",
    normalize: str = "whisper",
    unit: str = "word",
) -> ScoreRow:
    """Corpus WER (``unit="word"``) or CER ("char"; spaces count) of ``hyps`` against ``refs`` (id -> text).
    Every reference needs a hypothesis (else ValueError); extra hypotheses are ignored with a warning."""
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    if not refs:
        raise ValueError("no references to score")
    missing = sorted(set(refs) - set(hyps))
    if missing:
        more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        raise ValueError(f"{len(missing)} of {len(refs)} reference ids have no hypothesis: "
                         f"{', '.join(missing[:_MAX_LISTED])}{more}")
    extra = set(hyps) - set(refs)
    if extra:
        logger.warning("%d hypothesis ids have no reference and are ignored", len(extra))
    aligned = list(_align(refs, hyps, normalize, unit).values())
    hits = sum(out.hits for out in aligned)
    subs = sum(out.substitutions for out in aligned)
    dels = sum(out.deletions for out in aligned)
    inss = sum(out.insertions for out in aligned)
    sent_err = sum(out.substitutions + out.deletions + out.insertions > 0 for out in aligned)
    n = hits + subs + dels
    if n == 0:
        logger.warning("references of %s are all empty after normalization", dataset)

    def pct(x: int, d: int) -> float:
        return 100.0 * x / d if d else (0.0 if x == 0 else float("inf"))

    return ScoreRow(dataset, len(aligned), n, pct(hits, n), pct(subs, n), pct(dels, n), pct(inss, n),
                    pct(subs + dels + inss, n), pct(sent_err, len(aligned)), unit)


def utterance_errors(refs: Dict[str, str], hyps: Dict[str, str], normalize: str = "whisper") -> Dict[str, tuple]:
    """id -> (word errors, reference words) per utterance, for paired tests."""
    return {i: (r.substitutions + r.deletions + r.insertions, r.hits + r.substitutions + r.deletions)
            for i, r in _align(refs, hyps, normalize, "word").items()}


def paired_bootstrap(base: Dict[str, tuple], other: Dict[str, tuple], samples: int = 2000,
                     seed: int = 0) -> tuple:
    """(delta, low, high): WER(other) - WER(base) in points with a 95% interval from resampling utterances
    (the same draw for both systems, so their shared hard utterances cancel); from ``utterance_errors``."""
    import numpy as np

    if set(base) != set(other):
        raise ValueError("paired_bootstrap needs the same utterance ids for both systems")
    ids = sorted(base)
    e = np.array([[base[i][0], other[i][0], base[i][1]] for i in ids], dtype=np.float64)
    delta = 100.0 * (e[:, 1].sum() - e[:, 0].sum()) / max(e[:, 2].sum(), 1.0)
    draw = np.random.default_rng(seed).integers(0, len(ids), size=(samples, len(ids)))
    s = e[draw].sum(axis=1)  # samples x 3
    deltas = 100.0 * (s[:, 1] - s[:, 0]) / np.maximum(s[:, 2], 1.0)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(delta), float(low), float(high)


def read_text_file(path: str) -> Dict[str, str]:
    """A Kaldi ``text`` file as id -> transcript; an id alone (ESPnet's empty
    hypothesis in ``1best_recog/text``) maps to "". Duplicate ids raise."""
    return read_kv_file(path, allow_empty_value=True)


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(rows: Sequence[ScoreRow], extra_columns: Optional[Dict[str, List]] = None) -> str:
    """ESPnet-style table of ``rows``; ``extra_columns`` (name -> one value per row) follow S.Err."""
    extra_columns = extra_columns or {}
    for name, values in extra_columns.items():
        if len(values) != len(rows):
            raise ValueError(f"extra column {name!r} has {len(values)} values for {len(rows)} rows")
    header = COLUMNS + list(extra_columns)
    lines = ["|" + "|".join(header) + "|", "|" + "|".join("---" for _ in header) + "|"]
    for i, row in enumerate(rows):
        cells = row.cells() + [_fmt(v[i]) for v in extra_columns.values()]
        lines.append("|" + "|".join(cells) + "|")
    return "\n".join(lines) + "\n"

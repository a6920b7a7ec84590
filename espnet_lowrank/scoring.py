"""Corpus-level WER/CER scoring in the style of ESPnet's RESULTS.md.

Rates are corpus rates: the sum of errors over all utterances divided by the
sum of reference units (words or characters), not the mean of per-utterance
rates. Alignment counts come from jiwer 4.
"""

import logging
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import jiwer

logger = logging.getLogger(__name__)

NORMALIZERS = ("whisper", "basic", "none")
COLUMNS = ["dataset", "Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
_MAX_LISTED = 10


@dataclass
class ScoreRow:
    """One row of an ESPnet results table.

    Attributes:
        dataset: Name of the evaluated set.
        snt: Number of sentences (utterances).
        wrd: Number of reference units (words for WER, characters for CER).
        corr: Correct units, percent of ``wrd``.
        sub: Substitutions, percent of ``wrd``.
        dele: Deletions, percent of ``wrd``.
        ins: Insertions, percent of ``wrd``.
        err: Error rate (sub + del + ins), percent of ``wrd``.
        s_err: Sentence error rate: percent of sentences with any error.
        unit: "word" or "char".
    """

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
        """Table cells in ``COLUMNS`` order, percentages with one decimal."""
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
    """Return a text normalizer.

    Args:
        normalize: "whisper" (openai-whisper's ``EnglishTextNormalizer``),
            "basic" (upper-case, punctuation stripped) or "none"
            (whitespace squeezed only).
    """
    if normalize == "whisper":
        from whisper.normalizers import EnglishTextNormalizer

        norm = EnglishTextNormalizer()
        return lambda s: " ".join(norm(s).split())
    if normalize == "basic":
        return basic_normalize
    if normalize == "none":
        return lambda s: " ".join(s.split())
    raise ValueError(f"unknown normalize={normalize!r}; choose one of {NORMALIZERS}")


def score_texts(
    refs: Dict[str, str],
    hyps: Dict[str, str],
    dataset: str = "test",
    normalize: str = "whisper",
    unit: str = "word",
) -> ScoreRow:
    """Score hypotheses against references with corpus WER or CER.

    Args:
        refs: Reference transcripts by utterance id.
        hyps: Hypotheses by utterance id; must cover every id of ``refs``
            (extra ids are ignored with a warning).
        dataset: Name put in the ``dataset`` column.
        normalize: See :func:`get_normalizer`.
        unit: "word" (WER) or "char" (CER; spaces count as characters).

    Returns:
        The score row.

    Raises:
        ValueError: Empty ``refs``, missing hypotheses, or a bad option.
    """
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    if not refs:
        raise ValueError("no references to score")
    missing = sorted(set(refs) - set(hyps))
    if missing:
        more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        raise ValueError(
            f"{len(missing)} of {len(refs)} reference ids have no hypothesis: "
            f"{', '.join(missing[:_MAX_LISTED])}{more}"
        )
    extra = set(hyps) - set(refs)
    if extra:
        logger.warning("%d hypothesis ids have no reference and are ignored", len(extra))
    norm = get_normalizer(normalize)
    ids = sorted(refs)
    ref_list = [norm(refs[i]) for i in ids]
    hyp_list = [norm(hyps[i]) for i in ids]
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    hits = subs = dels = inss = sent_err = 0
    for r, h in zip(ref_list, hyp_list):
        out = process(r, h)
        hits += out.hits
        subs += out.substitutions
        dels += out.deletions
        inss += out.insertions
        sent_err += int(out.substitutions + out.deletions + out.insertions > 0)
    n = hits + subs + dels
    if n == 0:
        logger.warning("references of %s are all empty after normalization", dataset)

    def pct(x: int, d: int) -> float:
        return 100.0 * x / d if d else (0.0 if x == 0 else float("inf"))

    return ScoreRow(
        dataset=dataset,
        snt=len(ids),
        wrd=n,
        corr=pct(hits, n),
        sub=pct(subs, n),
        dele=pct(dels, n),
        ins=pct(inss, n),
        err=pct(subs + dels + inss, n),
        s_err=pct(sent_err, len(ids)),
        unit=unit,
    )


def read_text_file(path: str) -> Dict[str, str]:
    """Read a Kaldi ``text`` file (``<utt_id> <transcript>`` lines).

    A line holding only ``<utt_id>`` (as ESPnet writes for an empty
    hypothesis in ``1best_recog/text``) maps to the empty string.

    Raises:
        FileNotFoundError: Missing file.
        ValueError: Duplicate ids (naming the line).
    """
    out: Dict[str, str] = {}
    with open(path, "r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            parts = raw.strip().split(maxsplit=1)
            if not parts:
                continue
            if parts[0] in out:
                raise ValueError(f"{path}:{lineno}: duplicate utterance id {parts[0]!r}")
            out[parts[0]] = parts[1] if len(parts) == 2 else ""
    return out


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(
    rows: Sequence[ScoreRow], extra_columns: Optional[Dict[str, List]] = None
) -> str:
    """Format rows as an ESPnet-style markdown table.

    Args:
        rows: Score rows.
        extra_columns: Extra columns appended after ``S.Err``, name -> one
            value per row (floats shown with 4 significant digits).

    Returns:
        The table, ending with a newline.
    """
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


__all__ = [
    "ScoreRow",
    "score_texts",
    "read_text_file",
    "markdown_table",
    "get_normalizer",
    "basic_normalize",
    "NORMALIZERS",
    "COLUMNS",
]

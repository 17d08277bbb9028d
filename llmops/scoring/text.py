"""Scores free-text answers with ROUGE-L (``rouge-score``) and chrF (``sacrebleu``), both 0..1.

``rouge_l``/``chrf`` give the split's score; ``rouge_l_scores``/``chrf_scores`` one score per row
(for the tolerance of a no-regression gate and for the worst examples). The libraries are imported
inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence


def _check(predictions: Sequence[str], references: Sequence[str]) -> bool:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references. "
                         "Pass one prediction per reference.")
    return bool(references)


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Returns each row's ROUGE-L F1 (longest common subsequence of words)."""
    if not _check(predictions, references):
        return []
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return [scorer.score(r, p)["rougeL"].fmeasure
            for p, r in zip(predictions, references, strict=True)]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float | None:
    """Returns the mean ROUGE-L F1 (longest common subsequence of words), None with no rows."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores) if scores else None


def chrf_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Returns each row's sentence chrF (sacrebleu's defaults) / 100."""
    if not _check(predictions, references):
        return []
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    return [metric.sentence_score(p, [r]).score / 100.0
            for p, r in zip(predictions, references, strict=True)]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float | None:
    """Returns corpus chrF (character n-gram F-score, sacrebleu's defaults) / 100, None with no
    rows."""
    if not _check(predictions, references):
        return None
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(list(predictions), [list(references)]).score / 100.0

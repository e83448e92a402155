"""Task metrics: pure functions over predictions and references (values in 0..1 unless noted).

    accuracy([True, False, None])             -> 0.5   (None = unscored, skipped)
    exact_match(preds, refs), token_f1(...)   SQuAD-style normalisation
    macro_f1(pred_labels, gold_labels)
    bleu(hyps, refs)                          sacrebleu corpus BLEU, 0..100
    chrf(hyps, refs)                          sacrebleu corpus chrF, 0..100
    rouge(hyps, refs)                         rouge-score F-measures {"rouge1", "rouge2", "rougeL"}, 0..1 (mean)

BLEU, chrF and ROUGE are those of sacrebleu and rouge-score on the same inputs (tested for parity).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..data.tasks import normalize_text


def accuracy(correct: Sequence[bool | None]) -> float | None:
    vals = [c for c in correct if c is not None]
    return sum(vals) / len(vals) if vals else None


def exact_match(preds: Sequence[str | None], refs: Sequence[str]) -> float:
    pairs = list(zip(preds, refs, strict=True))
    return sum(p is not None and normalize_text(p) == normalize_text(r) for p, r in pairs) / max(1, len(pairs))


def f1_one(pred: str | None, ref: str) -> float:
    p, r = normalize_text(pred or "").split(), normalize_text(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def token_f1(preds: Sequence[str | None], refs: Sequence[str]) -> float:
    pairs = list(zip(preds, refs, strict=True))
    return sum(f1_one(p, r) for p, r in pairs) / max(1, len(pairs))


def macro_f1(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    labels = sorted(set(golds))
    scores = []
    for lab in labels:
        tp = sum(p == lab and g == lab for p, g in zip(preds, golds, strict=True))
        fp = sum(p == lab and g != lab for p, g in zip(preds, golds, strict=True))
        fn = sum(p != lab and g == lab for p, g in zip(preds, golds, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hyps, refs, strict=True):
        s = scorer.score(r, h)
        for k in totals:
            totals[k] += s[k].fmeasure
    n = max(1, len(hyps))
    return {k: v / n for k, v in totals.items()}

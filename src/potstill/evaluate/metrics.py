"""Task metrics: pure functions over predictions and references (values in 0..1 unless noted).

    accuracy([True, False, None])             -> 0.5   (None = unscored, skipped)
    exact_match(preds, refs), token_f1(...)   SQuAD-style normalisation
    macro_f1(pred_labels, gold_labels)       over the labels in golds or predictions (as sklearn)
    bleu(hyps, refs)                          sacrebleu corpus BLEU, 0..100
    chrf(hyps, refs)                          sacrebleu corpus chrF, 0..100
    rouge(hyps, refs)                         rouge-score F-measures {"rouge1", "rouge2", "rougeL"}, 0..1 (mean)

BLEU, chrF and ROUGE are those of sacrebleu and rouge-score on the same inputs (tested for parity).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..data.parsers import is_choice, normalize_text
from ..data.tasks import nli_gold


def accuracy(correct: Sequence[bool | None]) -> float | None:
    vals = [c for c in correct if c is not None]
    return sum(vals) / len(vals) if vals else None


def _same_answer(pred: str | None, ref: str) -> bool:
    """SQuAD exact match; choice letters compare as letters (SQuAD's normalisation would drop "A")."""
    if pred is None:
        return False
    if is_choice(ref.strip().upper()) and len(ref.strip()) == 1:
        return pred.strip().upper() == ref.strip().upper()
    return normalize_text(pred) == normalize_text(ref)


def exact_match(preds: Sequence[str | None], refs: Sequence[str]) -> float:
    pairs = list(zip(preds, refs, strict=True))
    return sum(_same_answer(p, r) for p, r in pairs) / max(1, len(pairs))


def f1_one(pred: str | None, ref: str) -> float:
    if is_choice(ref.strip().upper()) and len(ref.strip()) == 1:
        return float(_same_answer(pred, ref))
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
    """Mean per-label F1 over the labels that occur in golds or predictions (sklearn's default label set)."""
    labels = sorted(set(golds) | {p for p in preds if p is not None})
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


def task_metrics(
    task_type: str,
    outputs: Sequence[str],
    parsed: Sequence[str | None],
    references: Sequence[str | None],
    correct: Sequence[bool | None],
) -> dict[str, float]:
    """The metrics a task type reports, over the rows that have a reference (empty dict when none do).

    ``outputs`` are the raw model texts, ``parsed`` the task parser's answers (the text metrics of conversation
    and summarization score these: with chain-of-thought, the reply or summary after the marker), ``references``
    the gold texts (None when a row has none) and ``correct`` the task scorer's verdict per row.
    """
    rows = [(o, p, r, c) for o, p, r, c in zip(outputs, parsed, references, correct, strict=True) if r is not None]
    if not rows:
        return {}
    outs, preds, refs, corr = (list(x) for x in zip(*rows, strict=True))
    out: dict[str, float] = {"accuracy": accuracy(corr) or 0.0}
    match task_type:
        case "nli":
            out["macro_f1"] = macro_f1(preds, [nli_gold(r) for r in refs])
        case "qa":
            out["exact_match"] = exact_match(preds, [r.strip() for r in refs])
            out["f1"] = token_f1(preds, [r.strip() for r in refs])
        case "conversation" | "summarization":
            texts = [p if p is not None else o for o, p in zip(outs, preds, strict=True)]  # CoT: the final text
            out["bleu"] = bleu(texts, refs)
            out["chrf"] = chrf(texts, refs)
            out.update(rouge(texts, refs))
    return out

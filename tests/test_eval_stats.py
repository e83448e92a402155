"""Confidence intervals, derived comparisons and row scoring, on fixed predictions (no model involved)."""

from __future__ import annotations

import random

import pytest

from potstill.config import JobSpec
from potstill.data.tasks import get_task
from potstill.evaluate.derived import compare
from potstill.evaluate.metrics import task_metrics
from potstill.evaluate.run import api_teacher_row, cost_per_1k, score_row
from potstill.evaluate.stats import (
    difference,
    metric_intervals,
    paired_interval,
    percentile,
    proportion_interval,
    ratio_pct,
    wilson,
)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962)],
)
def test_wilson_matches_published_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got is not None
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_narrows_with_more_rows_and_handles_no_rows() -> None:
    assert wilson(0, 0) is None
    small, big = wilson(7, 10), wilson(700, 1000)
    assert small and big and (big[1] - big[0]) < (small[1] - small[0]) / 5
    assert big[0] < 0.7 < big[1]


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5.0], 0.975) == 5.0


NLI_REFS = ["entailment", "neutral", "contradiction"] * 10
NLI_PREDS = ["entailment", "neutral", "neutral"] * 10  # every contradiction is called neutral


def _nli_rows() -> tuple[list[str], list[str | None], list[str | None], list[bool | None]]:
    outs = list(NLI_PREDS)
    parsed: list[str | None] = list(NLI_PREDS)
    refs: list[str | None] = list(NLI_REFS)
    correct: list[bool | None] = [p == r for p, r in zip(parsed, refs, strict=True)]
    return outs, parsed, refs, correct


def test_metric_intervals_wilson_for_accuracy_bootstrap_for_macro_f1() -> None:
    outs, parsed, refs, correct = _nli_rows()
    point = task_metrics("nli", outs, parsed, refs, correct)
    ci = metric_intervals("nli", outs, parsed, refs, correct, samples=300, seed=1)
    assert point["accuracy"] == pytest.approx(20 / 30)
    assert ci["accuracy"]["method"] == "wilson"
    assert (ci["accuracy"]["lo"], ci["accuracy"]["hi"]) == pytest.approx(wilson(20, 30))
    assert ci["macro_f1"]["method"].startswith("bootstrap")
    assert ci["macro_f1"]["lo"] < point["macro_f1"] < ci["macro_f1"]["hi"]
    # seeded: the same predictions give the same interval; another seed a (slightly) different one
    assert metric_intervals("nli", outs, parsed, refs, correct, samples=300, seed=1) == ci
    assert metric_intervals("nli", outs, parsed, refs, correct, samples=300, seed=2)["macro_f1"] != ci["macro_f1"]


def test_metric_intervals_skip_rows_without_reference_and_degenerate_cases() -> None:
    outs, parsed, refs, correct = _nli_rows()
    refs = [*refs, None, None]
    outs, parsed, correct = [*outs, "x", "y"], [*parsed, None, None], [*correct, None, None]
    ci = metric_intervals("nli", outs, parsed, refs, correct, samples=100, seed=0)
    assert (ci["accuracy"]["lo"], ci["accuracy"]["hi"]) == pytest.approx(wilson(20, 30))
    perfect = metric_intervals("nli", NLI_REFS, list(NLI_REFS), list(NLI_REFS), [True] * 30, samples=100)
    assert perfect["macro_f1"]["lo"] == perfect["macro_f1"]["hi"] == 1.0
    assert "macro_f1" not in metric_intervals("nli", outs, parsed, refs, correct, samples=0)
    assert metric_intervals("nli", ["a"], ["a"], [None], [None]) == {}


def test_bootstrap_covers_corpus_bleu_on_mixed_quality_outputs() -> None:
    rng = random.Random(0)
    refs: list[str | None] = [f"the cat number {i} sat on the mat today" for i in range(40)]
    outs = [r if rng.random() < 0.5 else "a completely different sentence here" for r in refs]  # type: ignore[misc]
    correct: list[bool | None] = [o == r for o, r in zip(outs, refs, strict=True)]
    point = task_metrics("summarization", outs, list(outs), refs, correct)
    ci = metric_intervals("summarization", outs, list(outs), refs, correct, samples=200, seed=0)
    for k in ("bleu", "chrf", "rouge1", "rougeL"):
        assert ci[k]["lo"] < point[k] < ci[k]["hi"], k
    assert ci["bleu"]["lo"] >= 0 and ci["bleu"]["hi"] <= 100


def test_paired_interval() -> None:
    a: list[bool | None] = [True] * 20
    b: list[bool | None] = [False] * 20
    assert paired_interval(difference, a, b, 100) == (1.0, 1.0)
    assert paired_interval(difference, a, a, 100) == (0.0, 0.0)
    rng = random.Random(3)
    x: list[bool | None] = [rng.random() < 0.7 for _ in range(200)]
    y: list[bool | None] = [rng.random() < 0.5 for _ in range(200)]
    lo, hi = paired_interval(difference, x, y, 500) or (0, 0)
    observed = sum(map(bool, x)) / 200 - sum(map(bool, y)) / 200
    assert lo < observed < hi
    lo, hi = paired_interval(ratio_pct, x, y, 500) or (0, 0)
    assert lo < 100 * sum(map(bool, x)) / sum(map(bool, y)) < hi
    # a ratio undefined on many resamples (the teacher right on one row only) gets no interval, not a false one
    one: list[bool | None] = [True] + [False] * 99
    assert paired_interval(ratio_pct, one, one, 200) is None
    # rows either side did not score are left out of the pairs
    assert paired_interval(difference, [True, None, False], [None, True, True], 50) is None
    assert proportion_interval([True, False, None]) == {
        "lo": wilson(1, 2)[0],
        "hi": wilson(1, 2)[1],
        "method": "wilson",
    }  # type: ignore[index]


def _row(name: str, role: str, acc: float, p50: float | None, mem: float | None, aps: float | None, params: int | None):
    return {
        "name": name,
        "role": role,
        "accuracy": acc,
        "parameters": params,
        "size_on_disk_mb": None if params is None else params / 1e6,
        "latency": {"p50_ms": p50} if p50 else None,
        "memory": {"peak_tensor_mb": mem} if mem else None,
        "throughput": {"answers_per_s": aps} if aps else None,
    }


def test_compare_derives_the_seed_numbers() -> None:
    rows = [
        _row("teacher", "teacher", 0.8, 400.0, 1000.0, 2.0, 7_000_000),
        _row("baseline", "baseline", 0.2, 50.0, 100.0, 20.0, 500_000),
        _row("distilled", "distilled", 0.6, 40.0, 100.0, 25.0, 500_000),
        _row("gold-only", "extra", 0.4, 45.0, 100.0, 22.0, 500_000),
    ]
    verdicts = {
        "teacher": [True] * 8 + [False] * 2,
        "baseline": [True] * 2 + [False] * 8,
        "distilled": [True] * 6 + [False] * 4,
        "gold-only": [True] * 4 + [False] * 6,
    }
    c = compare(rows, verdicts, samples=200, seed=0)  # type: ignore[arg-type]
    assert c["accuracy_retention_pct"] == pytest.approx(75.0)
    assert c["gain_over_baseline"] == pytest.approx(0.4)
    assert c["latency_reduction_pct"] == pytest.approx(90.0)
    assert c["speedup_x"] == pytest.approx(10.0)
    assert c["memory_reduction_pct"] == pytest.approx(90.0)
    assert c["throughput_x"] == pytest.approx(12.5)
    assert c["parameter_ratio"] == pytest.approx(500_000 / 7_000_000)
    lo, hi = c["gain_over_baseline_ci"]
    assert lo <= 0.4 <= hi and lo > 0  # distilled beats baseline on every row the baseline gets right
    assert set(c["by_model"]) == {"baseline", "distilled", "gold-only"}
    assert c["by_model"]["gold-only"]["gain_over_baseline"] == pytest.approx(0.2)
    assert "gain_over_baseline" not in c["by_model"]["baseline"]
    # an API teacher has no memory, throughput or size of ours: those ratios are left out, not invented
    rows[0] = _row("teacher", "teacher", 0.8, 900.0, None, None, None)
    c = compare(rows, verdicts, samples=50)  # type: ignore[arg-type]
    assert "memory_reduction_pct" not in c and "throughput_x" not in c and "parameter_ratio" not in c
    assert c["latency_reduction_pct"] == pytest.approx(100 * (1 - 40 / 900))


def _spec(**evaluation: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "t",
            "task_type": "math",
            "teacher": "t",
            "student": "s",
            "data": {"training": "a", "validation": "b"},
            "evaluation": {"bootstrap_samples": 100, **evaluation},
        }
    )


def test_score_row_against_references_and_against_the_teacher() -> None:
    task, spec = get_task("math"), _spec()
    texts = ["Answer: 4", "Answer: 5", "no idea", "Answer: 7"]
    refs: list[str | None] = ["4", "6", "2", "7"]
    teacher = ["4", "5", "2", None]
    row, parsed, correct = score_row(task, spec, texts, refs, teacher)
    assert parsed == ["4", "5", None, "7"] and correct == [True, False, False, True]
    assert row["accuracy"] == 0.5 and row["n_scored"] == 4
    assert row["agreement_with_teacher"] == 0.5  # rows 0 and 1; the teacher has no answer on row 3
    assert row["intervals"]["agreement_with_teacher"]["method"] == "wilson"
    # no reference anywhere: the teacher's answers are the reference; the teacher's own accuracy is its parse rate
    no_refs: list[str | None] = [None] * 4
    row, _, correct = score_row(task, spec, texts, no_refs, teacher)
    assert row["accuracy"] == row["agreement_with_teacher"] == 0.5 and correct == [True, True, False, False]
    t_row, t_parsed, _ = score_row(task, spec, ["Answer: 1", "x"], [None, None], None, is_teacher=True)
    assert t_row["accuracy"] == 0.5 and t_parsed == ["1", None]


def test_api_teacher_row_and_cost() -> None:
    row = api_teacher_row([{"text": "a", "latency_s": 0.2}, {"text": "b", "latency_s": 0.4}, {"text": "c"}])
    assert row["kind"] == "api" and row["latency"]["n"] == 2
    assert row["latency"]["p50_ms"] == pytest.approx(300.0)
    assert row["throughput"] is None and row["memory"] is None and row["parameters"] is None
    assert cost_per_1k({"calls": 200, "cost_usd": 0.5}) == pytest.approx(2.5)
    assert cost_per_1k({"calls": 200, "cost_usd": None}) is None
    assert cost_per_1k(None) is None


@pytest.mark.parametrize("task_type", ["qa", "summarization", "nli"])
def test_fast_bootstrap_paths_equal_recomputing_task_metrics(task_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-row means and sacrebleu statistics give the very intervals that calling task_metrics on every
    resample gives (same seed, same resamples)."""
    import potstill.evaluate.stats as stats

    rng = random.Random(5)
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "rug", "today", "big", "small", "red"]
    refs: list[str | None] = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(30)]
    outs = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in (r or "").split()) for r in refs]
    if task_type == "nli":
        refs = [rng.choice(["entailment", "neutral", "contradiction"]) for _ in refs]
        outs = [r if rng.random() < 0.6 else "neutral" for r in refs]  # type: ignore[misc]
    parsed: list[str | None] = list(outs)
    correct: list[bool | None] = [o == r for o, r in zip(outs, refs, strict=True)]
    fast = metric_intervals(task_type, outs, parsed, refs, correct, samples=60, seed=4)
    monkeypatch.setattr(stats, "fast_paths", lambda *a: {})
    slow = metric_intervals(task_type, outs, parsed, refs, correct, samples=60, seed=4)
    assert set(fast) == set(slow) == set(task_metrics(task_type, outs, parsed, refs, correct))
    for k in fast:
        assert fast[k]["lo"] == pytest.approx(slow[k]["lo"], abs=1e-9), k
        assert fast[k]["hi"] == pytest.approx(slow[k]["hi"], abs=1e-9), k
    monkeypatch.undo()
    point = task_metrics(task_type, outs, parsed, refs, correct)
    cols = (outs, parsed, refs, correct)
    used = stats.fast_paths(task_type, cols, point, list(range(30))[::-1])  # type: ignore[arg-type]
    expected = {"qa": {"accuracy", "exact_match", "f1"}, "nli": {"accuracy"}}.get(task_type)
    assert set(used) == (expected or set(point)), "macro-F1 has no fast path; every other metric has one"

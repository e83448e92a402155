"""Conversation turn-by-turn regeneration (with a scripted teacher) and metric parity with sacrebleu/rouge-score."""

from __future__ import annotations

from typing import Any

import pytest

from potstill.data.jsonl import Example
from potstill.evaluate.metrics import bleu, chrf, exact_match, macro_f1, rouge, task_metrics, token_f1
from potstill.teachers.turns import regenerate


def test_every_assistant_turn_is_regenerated_in_order() -> None:
    ex = Example(
        "c1",
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "old a1"},
            {"role": "user", "content": "u2"},
        ],
        reference="old a2",
    )
    short = Example("c2", [{"role": "user", "content": "only"}])
    seen: list[list[tuple[list[dict[str, str]], int]]] = []

    def ask(batch: list[tuple[list[dict[str, str]], int]]) -> list[dict[str, Any] | None]:
        seen.append(batch)
        return [
            {"response": f"T({m[-1]['content']}|{len(m)}|s{s})", "finish_reason": "stop", "completion_tokens": 3}
            for m, s in batch
        ]

    rows = regenerate([ex, short], 2, ask)
    assert [len(b) for b in seen] == [4, 2]  # turn 1 of all four (conversation, sample), then turn 2 of c1's two
    first_c1 = seen[1][0][0]
    assert first_c1 == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "T(u1|2|s0)"},  # the teacher's own earlier reply, not "old a1"
        {"role": "user", "content": "u2"},
    ]
    r = rows[0]
    assert (r["id"], r["sample"]) == ("c1", 0)
    assert r["messages"] == first_c1 and r["output"] == "T(u2|4|s0)"
    assert r["turn_outputs"] == ["T(u1|2|s0)", "T(u2|4|s0)"] and r["references"] == ["old a1", "old a2"]
    assert [(x["id"], x["sample"], x["output"]) for x in rows[2:]] == [
        ("c2", 0, "T(only|1|s0)"),
        ("c2", 1, "T(only|1|s1)"),
    ]


def test_a_failed_turn_stops_its_conversation() -> None:
    ex = Example(
        "c",
        [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}],
    )
    calls: list[int] = []

    def ask(batch: list[tuple[list[dict[str, str]], int]]) -> list[dict[str, Any] | None]:
        calls.append(len(batch))
        return [None for _ in batch]

    (row,) = regenerate([ex], 1, ask)
    assert calls == [1]
    assert row["output"] is None and row["finish_reason"] == "error"


HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi", "it rained all day long"]
REFS = ["the cat is on the mat", "the quick brown fox jumped over", "hello there", "it was sunny all day"]


def test_bleu_chrf_rouge_parity_with_the_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    assert bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert chrf(HYPS, REFS) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per = [scorer.score(r, h) for h, r in zip(HYPS, REFS, strict=True)]
    got = rouge(HYPS, REFS)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert got[k] == pytest.approx(sum(s[k].fmeasure for s in per) / len(per))
    assert bleu(["same words here ok"], ["same words here ok"]) == pytest.approx(100.0)


def test_rouge_by_hand() -> None:
    # hyp 3 unigrams all in ref (6 unigrams): P = 1, R = 0.5, F = 2/3; bigrams: 2 of 2 hyp, 2 of 5 ref -> F = 4/7
    got = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert got["rouge1"] == pytest.approx(2 / 3)
    assert got["rouge2"] == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert got["rougeL"] == pytest.approx(2 / 3)


def test_squad_em_f1_and_macro_f1_by_hand() -> None:
    assert exact_match(["The Eiffel Tower!", "B", "A", None], ["eiffel tower", "b", "B", "x"]) == pytest.approx(0.5)
    # "big red barn" vs "the red barn": common 2, P 2/3, R 2/2 -> F1 0.8
    assert token_f1(["big red barn"], ["the red barn"]) == pytest.approx(0.8)
    preds = ["entailment", "entailment", "neutral", "contradiction", None, "neutral"]
    golds = ["entailment", "neutral", "neutral", "contradiction", "contradiction", "entailment"]
    # entailment: tp1 fp1 fn1 -> .5; neutral: tp1 fp1 fn1 -> .5; contradiction: tp1 fp0 fn1 -> 2/3
    assert macro_f1(preds, golds) == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)


def test_task_metrics_per_task() -> None:
    nli = task_metrics("nli", ["x", "y"], ["entailment", "neutral"], ["0", "neutral"], [True, True])
    assert nli == {"accuracy": 1.0, "macro_f1": 1.0}
    qa = task_metrics("qa", ["", ""], ["Paris", "C"], ["paris", None], [True, None])
    assert qa == {"accuracy": 1.0, "exact_match": 1.0, "f1": 1.0}
    summ = task_metrics(
        "summarization",
        ["Key points: a, b. Summary: the cat sat", "the dog ran"],
        ["the cat sat", "the dog ran"],
        ["the cat sat", "the dog ran"],
        [True, True],
    )
    assert summ["bleu"] == pytest.approx(bleu(["the cat sat", "the dog ran"], ["the cat sat", "the dog ran"]))
    assert summ["rougeL"] == pytest.approx(1.0)

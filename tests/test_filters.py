"""The validate stage's filters, each on crafted teacher outputs; the report's counts; CoT training targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from potstill.config import validate_spec
from potstill.data.checks import balance_caps
from potstill.data.filters import apply_filters, run_validate
from potstill.data.tasks import get_task
from potstill.errors import ConfigError, DataError
from potstill.filter_spec import BalanceFilter, filter_steps
from potstill.run_dir import RunDir, read_jsonl


def spec_for(task_type: str, filters: list[Any], **over: Any) -> Any:
    d = {
        "name": "f",
        "task_type": task_type,
        "teacher": "t",
        "student": "s",
        "data": {"training": "a.jsonl", "validation": "b.jsonl"},
        "filters": filters,
        **over,
    }
    return validate_spec(d)


def out_row(i: Any, output: str | None, sample: int = 0, **kw: Any) -> dict[str, Any]:
    return {
        "id": str(i),
        "sample": sample,
        "messages": [{"role": "user", "content": kw.pop("prompt", f"question {i}")}],
        "output": output,
        "finish_reason": kw.pop("finish_reason", "stop"),
        "completion_tokens": kw.pop("completion_tokens", None if output is None else len(output.split())),
        "reference": kw.pop("reference", None),
        **kw,
    }


def validate(tmp_path: Path, spec: Any, train: list[dict], val: list[dict] | None = None) -> tuple[RunDir, dict]:
    rd = RunDir(tmp_path / "run")
    rd.create()
    for split, rows in (("train", train), ("validation", val or train[:1])):
        (rd.outputs / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_validate(spec, rd)
    return rd, json.loads((rd.data / "filter_report.json").read_text())


def kept_ids(rd: RunDir) -> list[str]:
    return [r["id"] for r in read_jsonl(rd.data / "train.jsonl")]


def rejected(rd: RunDir) -> dict[str, str]:
    return {
        f"{r['id']}/{r['sample']}": r["reason"] for r in read_jsonl(rd.data / "rejected.jsonl") if r["split"] == "train"
    }


def test_parse_and_answer_check_on_math(tmp_path: Path) -> None:
    rows = [
        out_row(1, "5 + 7 = 12.\nAnswer: 12", reference="She has 12.\n#### 12"),
        out_row(2, "5 + 7 = 13.\nAnswer: 13", reference="#### 12"),
        out_row(3, "I do not know", reference="#### 4"),
        out_row(4, "Answer: 0.3333", reference="#### 1/3"),
        out_row(5, "Answer: 9"),  # no gold answer: kept
    ]
    rd, rep = validate(tmp_path, spec_for("math", ["parse", {"answer_check": {"tolerance": 1e-3}}]), rows)
    assert kept_ids(rd) == ["1", "4", "5"]
    why = rejected(rd)
    assert why == {"2/0": "answer differs from the gold answer", "3/0": "no parseable answer"}
    s = rep["splits"]["train"]
    assert s["rows_in"] == s["kept"] + s["rejected"] == 5
    assert s["rejected_by_filter"] == {"parse": 1, "answer_check": 1}
    assert [(f["filter"], f["in"], f["out"]) for f in s["funnel"]] == [("parse", 5, 4), ("answer_check", 4, 3)]
    rd2, _ = validate(tmp_path / "strict", spec_for("math", [{"answer_check": {"require_reference": True}}]), rows)
    assert kept_ids(rd2) == ["1"]


def test_self_consistency_keeps_one_majority_sample(tmp_path: Path) -> None:
    outs = {
        "a": ["Answer: 7", "Answer: 7.0", "Answer: 8", "no idea"],  # 2 of 4 agree: 0.5 passes min 0.5
        "b": ["Answer: 1", "Answer: 2", "Answer: 3", "Answer: 1"],  # 2 of 4
        "c": ["Answer: 5", "Answer: 6", "Answer: 7", "Answer: 8"],  # 1 of 4 < 0.5
    }
    rows = [out_row(i, o, sample=s) for i, samples in outs.items() for s, o in enumerate(samples)]
    spec = spec_for("math", [{"self_consistency": 0.5}], generation={"samples": 4, "temperature": 0.8})
    rd, rep = validate(tmp_path, spec, rows)
    kept = list(read_jsonl(rd.data / "train.jsonl"))
    assert [(r["id"], r["sample"], r["answer"]) for r in kept] == [("a", 0, "7"), ("b", 0, "1")]
    why = rejected(rd)
    assert why["a/1"] == "majority answer kept in another sample"
    assert why["a/2"] == why["a/3"] == why["b/1"] == "minority answer"
    assert all(why[f"c/{s}"].startswith("samples agree less than") for s in range(4))
    assert rep["splits"]["train"]["rejected"] == 10  # 12 samples, 2 kept


def test_self_consistency_needs_samples() -> None:
    with pytest.raises(ConfigError, match=r"self_consistency filter needs generation\.samples"):
        spec_for("math", ["self_consistency"])


def test_length_dedup_refusal(tmp_path: Path) -> None:
    long = "word " * 30
    rows = [
        out_row(1, "Paris is the capital of France.", prompt="Capital of France?"),
        out_row(2, "paris is the capital of france", prompt="capital of France"),  # exact duplicate after normalising
        out_row(3, "Short.", prompt="Say something"),
        out_row(4, long, prompt="Talk a lot"),
        out_row(5, "I'm sorry, but I can't help with that request.", prompt="Do something bad"),
        out_row(6, "As an AI language model, I cannot browse.", prompt="Browse"),
        out_row(
            7,
            "The quick brown fox jumps over the lazy dog near the river bank today",
            prompt="Describe the scene please",
        ),
        out_row(
            8,
            "The quick brown fox jumps over the lazy dog near the river bank again",
            prompt="Describe the scene please",
        ),
        out_row(9, "I'm sorry to hear that; here is how to fix the leak.", prompt="My sink leaks"),
    ]
    filters = [{"length": {"min": 2, "max": 20, "unit": "words"}}, "refusal", {"dedup": {"near": 0.7, "ngram": 3}}]
    rd, rep = validate(tmp_path, spec_for("qa", filters), rows)
    assert kept_ids(rd) == ["1", "7", "9"]
    why = rejected(rd)
    assert why == {
        "2/0": "exact duplicate",
        "3/0": "shorter than 2 words",
        "4/0": "longer than 20 words",
        "5/0": "refusal or apology",
        "6/0": "refusal or apology",
        "8/0": "near duplicate",
    }
    assert rep["splits"]["train"]["reasons"]["refusal: refusal or apology"] == 2
    rd2, _ = validate(tmp_path / "exact", spec_for("qa", [{"dedup": {"near": None}}]), rows)
    assert "8" in kept_ids(rd2) and "2" not in kept_ids(rd2)
    rd3, _ = validate(tmp_path / "extra", spec_for("qa", [{"refusal": {"patterns": [r"\bleak"]}}]), rows)
    assert "9" not in kept_ids(rd3)


def test_max_tokens_and_nonempty(tmp_path: Path) -> None:
    rows = [
        out_row(1, "Answer: 3", completion_tokens=3),
        out_row(2, "Answer: 33333", completion_tokens=9),
        out_row(3, "Answer: 3", finish_reason="length"),
        out_row(4, None, finish_reason="error"),
    ]
    rd, _ = validate(tmp_path, spec_for("math", ["nonempty", {"max_tokens": 5}]), rows)
    assert kept_ids(rd) == ["1"]
    assert rejected(rd) == {
        "2/0": "more than 5 tokens",
        "3/0": "cut off at generation.max_tokens",
        "4/0": "teacher call failed",
    }


@pytest.mark.parametrize(
    ("counts", "share"),
    [({"e": 50, "n": 10, "c": 5}, 0.5), ({"e": 7, "n": 7, "c": 7}, 0.34), ({"e": 30, "n": 1}, 0.6), ({"A": 9}, 0.5)],
)
def test_balance_caps_hold_and_keep_the_most(counts: dict[str, int], share: float) -> None:
    caps = balance_caps(counts, share)
    total = sum(caps.values())
    assert all(c <= share * total + 1e-9 for c in caps.values())
    assert all(caps[k] <= counts[k] for k in counts)
    bigger = {k: min(n, max(caps.values()) + 1) for k, n in counts.items()}  # one more per label breaks the cap
    if bigger != caps:
        assert max(bigger.values()) > share * sum(bigger.values())


def test_balance_on_nli(tmp_path: Path) -> None:
    labels = ["entailment"] * 12 + ["neutral"] * 4 + ["contradiction"] * 2
    rows = [out_row(i, f"Answer: {lab}", prompt=f"Premise {i}") for i, lab in enumerate(labels)]
    _, rep = validate(tmp_path, spec_for("nli", ["parse", {"balance": {"max_share": 0.5, "seed": 3}}]), rows)
    s = rep["splits"]["train"]
    assert s["labels_before"] == {"contradiction": 2, "entailment": 12, "neutral": 4}
    assert s["labels_after"] == {"contradiction": 2, "entailment": 6, "neutral": 4}
    assert max(s["labels_after"].values()) <= 0.5 * s["kept"]
    assert s["kept"] + s["rejected"] == s["rows_in"]
    assert sum(s["rejected_by_filter"].values()) == s["rejected"] == 6


def test_balance_leaves_free_answers_alone() -> None:
    task = get_task("qa")
    rows = [{"id": str(i), "answer": a} for i, a in enumerate(["B", "B", "B", "Paris", "Rome", "A"])]
    kept, rej, _ = apply_filters(rows, [("balance", BalanceFilter(max_share=0.5))], task)
    assert {r["answer"] for r in kept} >= {"Paris", "Rome", "A"}
    assert [r["answer"] for r in kept].count("B") == 1
    assert len(rej) == 2


def test_cot_targets(tmp_path: Path) -> None:
    out = "She had 5, then 7 more: 5 + 7 = 12.\nAnswer: 12"
    rows = [out_row(1, out, logprobs={"tokens": ["x"], "top": [[["x", -0.1]]]})]
    for cot, expected in (
        ("keep", [("question 1", out)]),
        ("drop", [("question 1", "Answer: 12")]),
        ("multitask", [("[answer] question 1", "Answer: 12"), ("[rationale] question 1", out.split("\nAnswer")[0])]),
    ):
        spec = spec_for("math", ["parse"], generation={"chain_of_thought": True, "cot": cot})
        rd, rep = validate(tmp_path / cot, spec, rows)
        got = list(read_jsonl(rd.data / "train.jsonl"))
        assert [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in got] == expected
        assert ("logprobs" in got[0]) is (cot == "keep")  # logprobs belong to the full output only
        assert rep["splits"]["train"]["training_rows"] == len(expected)


def test_no_kept_rows_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no teacher output passed validation"):
        validate(tmp_path, spec_for("math", ["parse"]), [out_row(1, "no idea")])


def test_filter_settings_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        spec_for("nli", [{"balance": 2}, {"dedup": {"ngrams": 3}}, {"refusal": {"patterns": ["("]}}, "parse_it"])
    text = str(info.value)
    assert "filters[0].balance.max_share" in text
    assert "filters[1].dedup.ngrams" in text
    assert "not a valid regular expression" in text
    assert "did you mean 'parse'" in text
    steps = filter_steps(["parse", {"length": 50}, {"balance": 0.4}])
    assert [n for n, _ in steps] == ["parse", "length", "balance"]
    assert steps[1][1].max == 50 and steps[2][1].max_share == 0.4


def test_cot_drop_in_conversations_trims_every_teacher_turn() -> None:
    from potstill.data.cot import targets

    task = get_task("conversation", chain_of_thought=True)
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "They greet me. Reply: Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    ((msgs, target),) = targets(task, history, "They leave. Reply: Goodbye.", "Goodbye.", "drop")
    assert [m["content"] for m in msgs] == ["Hi", "Hello!", "Bye"] and target == "Goodbye."
    assert history[1]["content"].startswith("They greet")  # the input is not modified

"""A job's own answer extraction (prompts.answer_marker, filters: [{parse: {pattern}}]): checked when the spec
loads, used by validation, answer_check, self-consistency and evaluation; and the validate stage's advice when a
filter rejects most rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from potstill import config, config_remote, filter_spec
from potstill.config import load_spec, validate_spec
from potstill.data.filters import run_validate
from potstill.data.tasks import Extraction, get_task, task_for
from potstill.errors import ConfigError, DataError
from potstill.evaluate.run import score_row
from potstill.run_dir import RunDir, read_jsonl

PATTERN = r"A:\s*(.+)$"


def spec_for(task_type: str, filters: list[Any], **over: Any) -> Any:
    d = {
        "name": "x",
        "task_type": task_type,
        "teacher": "t",
        "student": "s",
        "data": {"training": "a.jsonl", "validation": "b.jsonl"},
        "filters": filters,
        **over,
    }
    return validate_spec(d)


def row(i: Any, output: str, sample: int = 0, reference: str | None = None) -> dict[str, Any]:
    return {
        "id": str(i),
        "sample": sample,
        "messages": [{"role": "user", "content": f"question {i}"}],
        "output": output,
        "finish_reason": "stop",
        "completion_tokens": len(output.split()),
        "reference": reference,
    }


def validate(tmp_path: Path, spec: Any, train: list[dict]) -> tuple[RunDir, dict]:
    rd = RunDir(tmp_path / "run")
    rd.create()
    for split, rows in (("train", train), ("validation", [row("v", "#### 1")])):
        (rd.outputs / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_validate(spec, rd)
    return rd, json.loads((rd.data / "filter_report.json").read_text())


# A teacher that ends every answer mid-line with '=> A: N': the default parser finds no marker there.
INLINE = [
    row(1, "Janet had 5 and bought 13 more => A: 18", reference="#### 18"),
    row(2, "Tom had 10 and lost 4 => A: 6", reference="#### 6"),
    row(3, "Ann had 2 and found 5 => A: 8", reference="#### 7"),  # wrong: answer_check drops it
]


def test_a_parse_pattern_keeps_what_the_defaults_drop(tmp_path: Path) -> None:
    rd, rep = validate(tmp_path / "default", spec_for("math", ["parse", "answer_check"]), [*INLINE, row(4, "#### 1")])
    assert [r["id"] for r in read_jsonl(rd.data / "train.jsonl")] == ["4"]
    rd, rep = validate(tmp_path / "own", spec_for("math", [{"parse": {"pattern": PATTERN}}, "answer_check"]), INLINE)
    kept = list(read_jsonl(rd.data / "train.jsonl"))
    assert [(r["id"], r["answer"]) for r in kept] == [("1", "18"), ("2", "6")]
    assert rep["splits"]["train"]["rejected_by_filter"] == {"answer_check": 1}


def test_the_parse_shorthand_and_answer_marker_do_the_same(tmp_path: Path) -> None:
    for name, spec in (
        ("short", spec_for("math", [{"parse": PATTERN}, "answer_check"])),
        ("marker", spec_for("math", ["parse", "answer_check"], prompts={"answer_marker": "=> A:"})),
    ):
        rd, _ = validate(tmp_path / name, spec, INLINE)
        assert [r["answer"] for r in read_jsonl(rd.data / "train.jsonl")] == ["18", "6"], name


def test_self_consistency_votes_on_the_jobs_own_answers(tmp_path: Path) -> None:
    outs = ["so => A: 18", "hence => A: 18.0", "so => A: 17", "I think 5"]
    rows = [row("q", o, sample=s) for s, o in enumerate(outs)]
    spec = spec_for("math", [{"parse": PATTERN}, {"self_consistency": 0.5}], generation={"samples": 4})
    rd, _ = validate(tmp_path, spec, rows)
    assert [(r["sample"], r["answer"]) for r in read_jsonl(rd.data / "train.jsonl")] == [(0, "18")]


def test_evaluation_scores_with_the_jobs_extraction() -> None:
    texts, refs = ["5 + 13 => A: 18", "=> A: 6", "Answer: 9"], ["#### 18", "#### 6", "#### 9"]
    with_pattern = spec_for("math", [{"parse": PATTERN}])
    scored, parsed, _ = score_row(task_for(with_pattern), with_pattern, texts, refs, None)
    assert parsed == ["18", "6", "9"] and scored["accuracy"] == 1.0  # the default format still reads
    plain = spec_for("math", ["parse"])
    scored, parsed, _ = score_row(task_for(plain), plain, texts, refs, None)
    assert parsed == [None, None, "9"]


def test_every_task_reads_the_span_with_its_own_normaliser() -> None:
    nli = get_task("nli", config.PromptSpec(answer_marker="Verdict:"))
    text = "Verdict: neutral. (A contradiction would need him to be asleep.)"
    assert get_task("nli").parse(text) == "contradiction"  # the default takes the last label named
    assert nli.parse(text) == "neutral"
    qa = get_task("qa", patterns=[r"^Pick:\s*(.*)$"])
    assert qa.parse("B looks right.\nPick: B) Paris") == "B"
    assert qa.parse("Pick: Paris, the capital") == "Paris, the capital"
    convo = get_task("conversation", config.PromptSpec(answer_marker="Response:"))
    assert convo.parse("Plan: greet back.\nResponse: Hello there!") == "Hello there!"
    assert get_task("conversation").parse("Plan: greet back.\nResponse: Hello there!").startswith("Plan")
    math = get_task("math", config.PromptSpec(answer_marker="Final count:"))
    assert math.parse("They count again.\nFinal count: 18 apples, after 3 were eaten") == "18"
    assert get_task("math").parse("They count again.\nFinal count: 18 apples, after 3 were eaten") is None


def test_a_found_span_is_authoritative_and_the_default_reads_the_rest() -> None:
    math = get_task("math", patterns=[PATTERN])
    assert math.parse("Tried 5 + 13 = 18 => A: none of these") is None  # matched, but holds no number
    assert math.parse("5 + 13 = 18\n#### 18") == "18"  # not matched: GSM8K still reads
    assert math.parse("x => A: 5\nredo => A: 7") == "7"  # the last match
    boxed = get_task("math", config.PromptSpec(answer_marker="Result:"))
    assert boxed.parse("Result:\n\\[\n\\boxed{18}\n\\]") == "18"
    assert boxed.parse("Result: 18 apples\nCheck: 18 = 5 + 13\n\n\\boxed{17} was wrong") == "18"


def test_a_marker_is_found_case_insensitively_but_never_inside_a_word() -> None:
    ex = Extraction(marker="A:")
    assert ex.find("DATA: 5, AREA: 7") is None
    assert ex.find("q? a: 18") == (3, " 18")
    assert Extraction(patterns=("x(y)?z",)).find("xz") == (0, "")  # an unmatched group: an empty span


def test_rationale_and_answer_format_follow_the_jobs_marker(tmp_path: Path) -> None:
    spec = spec_for(
        "math",
        ["parse"],
        prompts={"answer_marker": "Final count:"},
        generation={"chain_of_thought": True, "cot": "multitask"},
    )
    out = "5 + 13 makes 18 in all.\nFinal count: 18"
    rd, _ = validate(tmp_path, spec, [row(1, out)])
    targets = [r["messages"][-1]["content"] for r in read_jsonl(rd.data / "train.jsonl")]
    assert targets == ["Final count: 18", "5 + 13 makes 18 in all."]
    assert task_for(spec).parse(targets[0]) == "18"  # what the student learns reads back the same way
    task = get_task("math", patterns=[PATTERN])
    assert task.rationale("Add them => A: 18") == "Add them =>"


# ------------------------------------------------------------------------------------------- spec errors
def test_a_bad_pattern_or_marker_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: x\ntask_type: math\nteacher: t\nstudent: s\n"
        "data: {training: a.jsonl, validation: b.jsonl}\n"
        "prompts:\n  answer_marker: '  '\n"
        "filters:\n  - {parse: {pattern: '(A:'}}\n  - {parse: {pattern: 'A:.*'}}\n  - {parse: '(A):(.*)'}\n"
        "generation: {temprature: 0.5}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_spec(job)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "filters[0].parse.pattern: pattern '(A:' is not a valid regular expression" in text
    assert "filters[1].parse.pattern: pattern 'A:.*' has 0 capture groups; it needs exactly one" in text
    assert "filters[2].parse.pattern: pattern '(A):(.*)' has 2 capture groups" in text
    assert any(p.startswith(f"{job}:7: prompts.answer_marker: answer_marker must hold some text") for p in problems)
    assert any("generation.temprature: unknown field" in p for p in problems)  # listed with the others
    assert "Value error" not in text


def test_one_strict_base_for_every_spec_model() -> None:
    assert config._Strict is config_remote._Strict is filter_spec._Strict
    assert config.PromptSpec.model_config["extra"] == "forbid"
    assert config_remote.OpenAITeacher.model_config["extra"] == "forbid"


# ------------------------------------------------------------------------------------------- advice
def test_a_filter_rejecting_most_rows_warns_with_examples_and_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long = "She counted every apple in the basket twice, " * 4 + "=> A: 21"
    rows = [*INLINE, row(4, long), row(5, "Answer: 2")]
    with caplog.at_level(logging.WARNING, logger="potstill"):
        _, rep = validate(tmp_path, spec_for("math", ["parse"]), rows)
    (warning,) = rep["splits"]["train"]["warnings"]
    assert warning.startswith("filter 'parse' rejected 4 of 5 train outputs")
    assert "'Janet had 5 and bought 13 more => A: 18'" in warning and "=> A: 8'" in warning
    assert "She counted" not in warning  # three examples
    assert "prompts.answer_marker" in warning and "filters: [{parse: {pattern:" in warning
    assert warning in caplog.text
    _, rep = validate(tmp_path / "long", spec_for("math", ["parse"]), [row(4, long), *INLINE[:2], row(5, "#### 2")])
    (warning,) = rep["splits"]["train"]["warnings"]
    assert f"...{long[-80:]!r}" in warning and long[:-80] not in warning  # the last 80 characters


def test_no_warning_while_most_rows_pass(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [INLINE[0], row(2, "Answer: 6"), row(3, "#### 7")]
    with caplog.at_level(logging.WARNING, logger="potstill"):
        _, rep = validate(tmp_path, spec_for("math", ["parse"]), rows)
    assert rep["splits"]["train"]["warnings"] == [] and "validate" not in caplog.text


def test_no_row_left_is_still_a_data_error_now_with_examples_and_the_fix(tmp_path: Path) -> None:
    spec = spec_for("math", ["parse", {"max_tokens": 3}])
    with pytest.raises(DataError) as info:
        validate(tmp_path, spec, [*INLINE, row(9, "Answer: 1 2 3 4 5")])
    text = str(info.value)
    assert text.startswith("no teacher output passed validation (4 rows in)")
    assert "filter 'parse' rejected 3 of 4 train outputs" in text and "prompts.answer_marker" in text
    assert "filter 'max_tokens' rejected 1 of 1 train outputs" in text and "generation.max_tokens" in text

"""The spec of several teachers: every problem at once with its file:line, exit 2 and nothing written; `teacher:`
stays one teacher whose cache keys and stage fingerprints are what they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import job_dict, run_cli

from potstill import ConfigError
from potstill.config import load_spec, validate_spec
from potstill.pipeline import _stage_inputs
from potstill.teachers.generate import request_body

HEAD = "name: x\ntask_type: math\nstudent: s\ndata: {training: a.jsonl, validation: b.jsonl}\n"


def problems(tmp_path: Path, text: str) -> list[str]:
    job = tmp_path / "job.yaml"
    job.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_spec(job)
    return [p.replace(f"{job}:", "job.yaml:") for p in info.value.problems]


def test_teacher_problems_all_at_once_with_their_lines(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        HEAD + "teachers:\n"  # line 5
        "  - name: small\n"
        "    kind: hf\n"
        "    model: ./s\n"
        "    batch_sise: 8\n"  # line 9
        "  - kind: openai\n"  # line 10: no name
        "    model: gpt\n"
        "    base_url: ftp://x\n"  # line 12
        "teaching:\n"  # line 13
        "  strategy: cascade\n"
        "  escalate_on: [parse, bogus]\n"  # line 15
        "  ordr: [small]\n",  # line 16
    )
    assert "job.yaml:9: teachers.0.batch_sise: unknown field 'batch_sise'; did you mean 'batch_size'?" in got
    assert any(
        p.startswith("job.yaml:12: teachers.1.base_url: Value error, base_url must start with")
        or p.startswith("job.yaml:12: teachers.1.base_url: base_url must start with")
        for p in got
    ), got
    assert any(p.startswith("job.yaml:15: teaching.escalate_on: escalate_on[1]: unknown check 'bogus'") for p in got)
    assert "job.yaml:16: teaching.ordr: unknown field 'ordr'; did you mean 'order'?" in got
    assert len(got) == 4, got  # the missing name waits until the teachers parse (reported on the next run)


def test_teaching_problems_all_at_once(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        HEAD + "generation: {temperature: 0}\n"
        "teachers:\n"  # line 6
        "  - {name: small, kind: hf, model: ./s}\n"
        "  - {kind: hf, model: ./l}\n"  # no name
        "  - {name: small, kind: hf, model: ./m}\n"  # a second 'small'
        "teaching:\n"  # line 10
        "  strategy: pool\n"
        "  select: majority\n",  # line 12
    )
    assert any(
        p.startswith("job.yaml:6: teachers: teachers[1] has no name") and "two teachers are named 'small'" in p
        for p in got
    ), got
    assert any(p.startswith("job.yaml:12: teaching.select: Input should be 'vote', 'answer_check'") for p in got), got

    got = problems(
        tmp_path,
        HEAD + "generation: {temperature: 0}\n"
        "teachers:\n"
        "  - {name: small, kind: hf, model: ./s}\n"
        "  - {name: large, kind: hf, model: ./l}\n"
        "hyperparameters: {kd: {source: teacher}}\n"  # line 9
        "teaching:\n"  # line 10
        "  strategy: cascade\n"
        "  order: [small, larg]\n"
        "  escalate_on: [{self_consistency: {samples: 3}}]\n",
    )
    assert any(
        p.startswith("job.yaml:9: hyperparameters: kd.source 'teacher' and hidden run one local teacher")
        and "kd.source: logprobs" in p
        for p in got
    ), got
    teaching = next(p for p in got if p.startswith("job.yaml:10: teaching: "))
    assert "teaching.order[1]: no teacher is named 'larg'; did you mean 'large'?" in teaching
    assert "set generation.temperature above 0" in teaching


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "teacher: required field is missing"),
        ("teacher: ./t\nteachers: [{name: a, kind: hf, model: ./a}]\n", "give teacher: (one) or teachers: (several)"),
        (
            "teachers: [{name: a, kind: hf, model: ./a}, {name: b, kind: hf, model: ./b}]\n",
            "teaching: several teachers need teaching: (strategy: route, cascade or pool",
        ),
        ("teacher: ./t\nteaching: {strategy: pool}\n", "teaching: shares rows among several teachers: list them"),
        (
            "teachers: [{name: a, kind: hf, model: ./a}, {name: b, kind: hf, model: ./b}]\n"
            "teaching: {strategy: route, map: {x: a}}\n",
            "teaching.field is missing: by: field routes on a row field",
        ),
        (
            "teachers: [{name: a, kind: hf, model: ./a}, {name: b, kind: hf, model: ./b}]\n"
            "teaching: {strategy: route, by: length, map: {short: a, '*': b}}\n",
            "by: length takes whole numbers",
        ),
        (
            "teachers: [{name: a, kind: hf, model: ./a}]\nteaching: {strategy: cascade}\n",
            "a cascade needs at least two teachers",
        ),
        ("teachers: [{name: baseline, kind: hf, model: ./a}]\n", "'baseline' is taken by an evaluation row"),
        ("teachers: []\n", "teachers is empty"),
    ],
)
def test_each_rule(tmp_path: Path, extra: str, expected: str) -> None:
    got = problems(tmp_path, HEAD + extra)
    assert any(expected in p for p in got), got


def test_conversation_jobs_route_only(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        HEAD.replace("math", "conversation")
        + "teachers: [{name: a, kind: hf, model: ./a}, {name: b, kind: hf, model: ./b}]\nteaching: {strategy: pool}\n",
    )
    assert any("conversation jobs take strategy: route" in p for p in got), got


def test_cli_exits_2_and_writes_nothing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path / "data")
    d["teachers"] = [{"name": "a", **d.pop("teacher")}, {"name": "b", "kind": "hf", "model": "x", "modle": 1}]
    d["teaching"] = {"strategy": "cascade", "escalate_on": ["parse", "nope"]}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d, sort_keys=False))
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if f"{job}:" in ln]
    assert any("teachers.1.modle: unknown field 'modle'" in ln for ln in lines), res.stderr
    assert any("teaching.escalate_on: escalate_on[1]: unknown check 'nope'" in ln for ln in lines), res.stderr
    assert not (tmp_path / "run").exists()


def test_one_teacher_keeps_its_keys_and_fingerprints(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path / "data")
    one = validate_spec(d)
    assert "teachers" not in one.public_dict() and "teaching" not in one.public_dict()
    msgs = [{"role": "user", "content": "2+3?"}]
    assert "teacher" not in request_body(one, msgs, 0)  # the cache of an earlier run stays valid
    assert len(_stage_inputs("generate", one)) == 7  # and so does its generate fingerprint
    listed = {**d, "teachers": [{"name": "t", **d["teacher"]}]}
    del listed["teacher"]
    spec: Any = validate_spec(listed)  # a list of one: every row to it, its name in its keys
    assert spec.named_teachers() == {"t": spec.teachers[0]}
    assert request_body(spec.for_teacher("t"), msgs, 0)["teacher"] == "t"
    assert {k: v for k, v in request_body(spec.for_teacher("t"), msgs, 0).items() if k != "teacher"} == request_body(
        one, msgs, 0
    )


def test_the_readme_and_docs_examples_validate(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    blocks = []
    for doc in ("README.md", "docs/teachers.md"):
        text = (root / doc).read_text()
        blocks += [b.split("```")[0] for b in text.split("```yaml\n")[1:] if b.lstrip().startswith("teachers:")]
    assert len(blocks) == 2
    for block in blocks:
        spec = validate_spec({**yaml.safe_load(HEAD), **yaml.safe_load(block)})
        assert [t.name for t in spec.teacher_list()] == ["small", "large"]
        assert spec.teaching is not None and spec.teaching.strategy == "cascade"

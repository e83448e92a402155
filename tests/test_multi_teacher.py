"""Several teachers in one job (teachers: + teaching:), against fake OpenAI servers, one per teacher, each with
scripted answers: route exactness, cascade escalation on each check, pool selection, failing teachers and the
per-teacher gate, and the per-teacher ledger."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl

from potstill import TeacherError
from potstill.config import load_spec
from potstill.pipeline import run_pipeline

N = 12  # training questions; validation has 4


def question(i: int) -> str:
    return f"Question {i}: what is {i} plus 1?"


def index_of(body: dict[str, Any]) -> int:
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    m = re.match(r"(?:Question|Check) (\d+)", user)
    assert m, user
    return int(m.group(1))


def is_check(body: dict[str, Any]) -> bool:
    return any(m["content"].startswith("Check") for m in body["messages"] if m["role"] == "user")


def right(body: dict[str, Any]) -> str:
    """The true answer (questions: i + 1, validation checks: i)."""
    i = index_of(body)
    return f"Answer: {i if is_check(body) else i + 1}"


def multi_job(tmp: Path, teachers: list[dict[str, Any]], teaching: dict[str, Any] | None, **over: Any) -> Path:
    data = tmp / "data"
    train = write_jsonl(
        data / "train.jsonl",
        [{"question": question(i), "answer": str(i + 1), "domain": "math" if i % 3 == 0 else "chat"} for i in range(N)],
    )
    val = write_jsonl(data / "val.jsonl", [{"question": f"Check {i}?", "answer": str(i)} for i in range(4)])
    d: dict[str, Any] = {
        "name": "multi",
        "task_type": "math",
        "teachers": [
            {"kind": "openai", "retry_backoff_s": 0.01, "max_backoff_s": 0.05, "max_retries": 1, **t} for t in teachers
        ],
        "student": {"model": "unused-student"},
        "data": {"training": str(train), "validation": str(val)},
        "generation": {"temperature": 0.7, "max_tokens": 16, "concurrency": 4},
        "filters": ["nonempty"],
        **over,
    }
    if teaching is not None:
        d["teaching"] = teaching
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def generate(job: Path, run: Path) -> dict[str, Any]:
    run_pipeline(load_spec(job), run, only=["generate"])
    return json.loads((run / "teacher" / "teaching.json").read_text())


def rows(run: Path, split: str = "train", name: str = "outputs") -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "teacher" / name / f"{split}.jsonl").read_text().splitlines()]


def asked(srv: Any, checks: bool = False) -> list[int]:
    """The question indices a server answered (ok), in arrival order."""
    return [index_of(e.body) for e in srv.log if e.outcome == "ok" and is_check(e.body) == checks]


# --------------------------------------------------------------------------------------------- route
def test_route_by_field_each_teacher_gets_exactly_its_rows(fake_openai: Any, tmp_path: Path) -> None:
    small, large = fake_openai(), fake_openai()
    for s in (small, large):
        s.answer_fn = right
    job = multi_job(
        tmp_path,
        [
            {"name": "small", "model": "m", "base_url": small.base_url},
            {"name": "large", "model": "m", "base_url": large.base_url},
        ],
        {"strategy": "route", "by": "field", "field": "domain", "map": {"math": "large", "*": "small"}},
    )
    summary = generate(job, tmp_path / "run")
    math_rows = [i for i in range(N) if i % 3 == 0]
    assert sorted(asked(large)) == math_rows  # the same model name on two servers: the name keeps them apart
    assert sorted(asked(small)) == [i for i in range(N) if i % 3 != 0]
    assert sorted(asked(small, checks=True)) == [0, 1, 2, 3]  # validation rows have no domain: the '*' entry
    out = rows(tmp_path / "run")
    assert sorted(_by_index(out)) == list(range(N)) and len(out) == N
    for r in out:
        i = int(re.search(r"Question (\d+)", r["messages"][-1]["content"]).group(1))  # type: ignore[union-attr]
        assert r["teacher"] == ("large" if i % 3 == 0 else "small")
        assert r["chosen"].startswith("route: domain = ")
    assert summary["teachers"]["large"]["rows_chosen"] == len(math_rows)
    assert summary["teachers"]["small"]["requests"] == N - len(math_rows) + 4


def test_route_by_length_and_a_value_without_teacher(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai()
    srv.answer_fn = right
    teachers = [
        {"name": "short", "model": "a", "base_url": srv.base_url},
        {"name": "long", "model": "b", "base_url": srv.base_url},
    ]
    job = multi_job(
        tmp_path, teachers, {"strategy": "route", "by": "length", "unit": "chars", "map": {20: "short", "*": "long"}}
    )
    generate(job, tmp_path / "run")
    for split in ("train", "validation"):
        for r in rows(tmp_path / "run", split):
            n = len(r["messages"][-1]["content"])
            assert r["teacher"] == ("short" if n <= 20 else "long"), (n, r["teacher"])
    fresh = fake_openai()
    teachers = [{**t, "base_url": fresh.base_url} for t in teachers]
    job = multi_job(
        tmp_path / "b", teachers, {"strategy": "route", "field": "domain", "map": {"math": "long", "chat": "short"}}
    )
    with pytest.raises(Exception, match=r"row 'validation-0' has no field 'domain' and teaching.map has no '\*' entry"):
        generate(job, tmp_path / "b" / "run")
    assert fresh.log == []  # every row is routed before anything is asked
    assert not (tmp_path / "b" / "run" / "teacher" / "outputs" / "train.jsonl").exists()


# --------------------------------------------------------------------------------------------- cascade
def _cascade(fake_openai: Any, tmp_path: Path, escalate_on: list[Any], small_answer: Any, logprob: Any = None) -> tuple:
    small, large = fake_openai(), fake_openai()
    small.answer_fn, large.answer_fn = small_answer, right
    if logprob is not None:
        small.logprob_fn = logprob
    job = multi_job(
        tmp_path,
        [
            {
                "name": "small",
                "model": "s",
                "base_url": small.base_url,
                "input_price_per_mtok": 0.1,
                "output_price_per_mtok": 0.2,
            },
            {
                "name": "large",
                "model": "l",
                "base_url": large.base_url,
                "input_price_per_mtok": 2,
                "output_price_per_mtok": 8,
            },
        ],
        {"strategy": "cascade", "order": ["small", "large"], "escalate_on": escalate_on},
    )
    summary = generate(job, tmp_path / "run")
    return small, large, summary, rows(tmp_path / "run")


def _chosen_teachers(out: list[dict[str, Any]]) -> dict[int, str]:
    return {int(re.search(r"Question (\d+)", r["messages"][-1]["content"]).group(1)): r["teacher"] for r in out}  # type: ignore[union-attr]


HARD = {1, 4, 7, 10}  # the questions the cheap teacher gets wrong, one way or another


def off(body: dict[str, Any]) -> str:
    """Wrong on the hard training questions, right elsewhere."""
    return "Answer: 999" if index_of(body) in HARD and not is_check(body) else right(body)


@pytest.mark.parametrize(
    ("check", "small_answer", "logprob"),
    [
        ("parse", lambda b: "I am not sure." if index_of(b) in HARD and not is_check(b) else right(b), None),
        ("answer_check", lambda b: "Answer: 999" if index_of(b) in HARD and not is_check(b) else right(b), None),
        (
            "refusal",
            lambda b: "I'm sorry, but I can't help with that." if index_of(b) in HARD and not is_check(b) else right(b),
            None,
        ),
        ({"logprob": {"min_mean": -1.0}}, right, lambda b: -2.5 if index_of(b) in HARD and not is_check(b) else -0.1),
    ],
)
def test_cascade_escalates_on_each_check(
    fake_openai: Any, tmp_path: Path, check: Any, small_answer: Any, logprob: Any
) -> None:
    small, large, summary, out = _cascade(fake_openai, tmp_path, [check], small_answer, logprob)
    name = check if isinstance(check, str) else next(iter(check))
    assert sorted(asked(large)) == sorted(HARD)  # exactly the rows the cheap answer failed went on
    assert asked(large, checks=True) == []
    assert sorted(asked(small)) == list(range(N))
    assert _chosen_teachers(out) == {i: "large" if i in HARD else "small" for i in range(N)}
    assert all(r["output"] == f"Answer: {i + 1}" for i, r in sorted(_by_index(out).items()))
    step1, step2 = summary["funnel"]
    assert step1 == {
        "teacher": "small",
        "in": N + 4,
        "accepted": N + 4 - len(HARD),
        "escalated": len(HARD),
        "kept_failing": 0,
        "reasons": {name: len(HARD)},
    }
    assert step2["teacher"] == "large" and step2["in"] == len(HARD) and step2["accepted"] == len(HARD)
    if name == "logprob":
        assert all(e.body.get("logprobs") is True and "top_logprobs" not in e.body for e in small.log)
        assert all(not e.body.get("logprobs") for e in large.log)  # the last teacher is not checked
    answers = rows(tmp_path / "run", name="answers")
    escalated = [a for a in answers if a["teacher"] == "small" and not a["selected"]]
    assert len(escalated) == len(HARD) and all(a["why"].startswith(f"escalated: {name}") for a in escalated)
    cost = summary["cost"]
    assert (
        cost["reference"] == "large" and cost["saved_usd"] > 0 and 0 < cost["actual_usd"] < cost["all_to_reference_usd"]
    )


def _by_index(out: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(re.search(r"Question (\d+)", r["messages"][-1]["content"]).group(1)): r for r in out}  # type: ignore[union-attr]


def test_cascade_self_consistency_over_samples(fake_openai: Any, tmp_path: Path) -> None:
    def unsure(b: dict[str, Any]) -> str:  # on the hard rows each sample (seed) gives another answer
        if index_of(b) in HARD and not is_check(b):
            return f"Answer: {index_of(b) + 1 + int(str(b['seed']).split('/')[0]) % 3}"
        return right(b)

    small, large, summary, out = _cascade(fake_openai, tmp_path, [{"self_consistency": {"samples": 3}}], unsure)
    assert sorted(asked(small)) == sorted(list(range(N)) * 3)  # three samples of every row from the cheap one
    assert sorted(asked(large)) == sorted(HARD)  # one from the last: nothing after it to escalate to
    assert summary["funnel"][0]["reasons"] == {"self_consistency": len(HARD)}
    kept = _by_index(out)
    assert len(out) == N and all(r["sample"] == 0 for r in out)  # generation.samples: 1 row per prompt
    assert all("3 of 3 samples agree" in kept[i]["chosen"] for i in range(N) if i not in HARD)


def test_cascade_last_teacher_keeps_failing_rows_and_says_so(fake_openai: Any, tmp_path: Path) -> None:
    wrong = lambda b: "no idea" if index_of(b) in HARD and not is_check(b) else right(b)  # noqa: E731
    small, large = fake_openai(), fake_openai()
    small.answer_fn = large.answer_fn = wrong
    job = multi_job(
        tmp_path,
        [
            {"name": "small", "model": "s", "base_url": small.base_url},
            {"name": "large", "model": "l", "base_url": large.base_url},
        ],
        {"strategy": "cascade", "escalate_on": ["parse"]},
    )
    summary = generate(job, tmp_path / "run")
    kept = _by_index(rows(tmp_path / "run"))
    assert all(
        kept[i]["teacher"] == "large" and "the last: kept although it fails parse" in kept[i]["chosen"] for i in HARD
    )
    assert summary["funnel"][1]["kept_failing"] == len(HARD)


# --------------------------------------------------------------------------------------------- pool
def _pool(fake_openai: Any, tmp_path: Path, answers: list[Any], teaching: dict[str, Any], **over: Any) -> tuple:
    servers = [fake_openai() for _ in answers]
    for s, a in zip(servers, answers, strict=True):
        s.answer_fn = a
    names = ["a", "b", "c"][: len(answers)]
    job = multi_job(
        tmp_path,
        [{"name": n, "model": "m", "base_url": s.base_url} for n, s in zip(names, servers, strict=True)],
        {"strategy": "pool", **teaching},
        **over,
    )
    summary = generate(job, tmp_path / "run")
    return servers, summary, rows(tmp_path / "run")


def test_pool_majority_vote_over_three_teachers(fake_openai: Any, tmp_path: Path) -> None:
    servers, summary, out = _pool(fake_openai, tmp_path, [off, right, right], {"select": "vote"})
    for s in servers:
        assert sorted(asked(s)) == list(range(N))  # every teacher answers every row
    kept = _by_index(out)
    assert len(out) == N
    for i, r in kept.items():
        assert r["output"] == f"Answer: {i + 1}"
        assert r["teacher"] == ("b" if i in HARD else "a")  # "a" is preferred where it is in the majority
        assert r["chosen"].startswith(f"pool vote: {2 if i in HARD else 3} of 3 answers agree")
    pairs = {tuple(p["teachers"]): p for p in summary["agreement"]}
    assert pairs[("a", "b")]["rows"] == N + 4 and pairs[("a", "b")]["agree"] == N + 4 - len(HARD)
    assert pairs[("b", "c")]["rate"] == 1.0


def test_pool_tie_goes_to_the_preferred_teacher_and_min_agreement_drops(fake_openai: Any, tmp_path: Path) -> None:
    _, _, out = _pool(fake_openai, tmp_path / "tie", [off, right], {"select": "vote", "order": ["b", "a"]})
    assert {i: r["teacher"] for i, r in _by_index(out).items()} == {i: "b" for i in range(N)}
    assert all(r["output"] == f"Answer: {i + 1}" for i, r in _by_index(out).items())
    _, summary, out = _pool(fake_openai, tmp_path / "strict", [off, right], {"select": "vote", "min_agreement": 1.0})
    assert sorted(_by_index(out)) == [i for i in range(N) if i not in HARD]
    assert summary["splits"]["train"]["dropped"] == {
        "pool vote: only 1 of 2 answers agree (< min_agreement 1)": len(HARD)
    }
    answers = rows(tmp_path / "strict" / "run", name="answers")
    dropped = [a for a in answers if a["why"].startswith("pool vote: only")]
    assert len(dropped) == 2 * len(HARD) and not any(a["selected"] for a in dropped)
    assert sum(1 for a in answers if a["selected"]) == N - len(HARD)


def test_pool_answer_check_logprob_and_all_agreeing(fake_openai: Any, tmp_path: Path) -> None:
    _, _, out = _pool(fake_openai, tmp_path / "check", [off, right], {"select": "answer_check"})
    assert {i: r["teacher"] for i, r in _by_index(out).items()} == {i: "b" if i in HARD else "a" for i in range(N)}

    servers = [fake_openai(), fake_openai()]
    servers[0].answer_fn, servers[1].answer_fn = off, right
    servers[0].logprob_fn = lambda b: -3.0 if index_of(b) in HARD else -0.05
    servers[1].logprob_fn = lambda b: -0.5
    job = multi_job(
        tmp_path / "lp2",
        [
            {"name": "a", "model": "m", "base_url": servers[0].base_url},
            {"name": "b", "model": "m", "base_url": servers[1].base_url},
        ],
        {"strategy": "pool", "select": "logprob"},
    )
    generate(job, tmp_path / "lp2" / "run")
    assert all(e.body.get("logprobs") is True for s in servers for e in s.log)
    kept = _by_index(rows(tmp_path / "lp2" / "run"))  # "a" is surer except on the hard rows: the surest wins
    assert {i: r["teacher"] for i, r in kept.items()} == {i: "b" if i in HARD else "a" for i in range(N)}
    assert all("mean token logprob" in r["chosen"] for r in kept.values())

    _, _, out = _pool(fake_openai, tmp_path / "all", [off, right, right], {"select": "all_agreeing"})
    per = {}
    for r in out:
        per.setdefault(r["id"], []).append(r)
    assert {k: len(v) for k, v in per.items()} == {f"train-{i}": 2 if i in HARD else 3 for i in range(N)}
    assert all([r["sample"] for r in v] == list(range(len(v))) for v in per.values())  # one row each, numbered


# --------------------------------------------------------------------------------------------- failing teachers
def _failing_pair(fake_openai: Any, tmp_path: Path, teaching: dict[str, Any]) -> tuple[Any, Any, Path]:
    bad, good = fake_openai(), fake_openai()
    bad.fault_fn = lambda body, attempt: "500"
    good.answer_fn = right
    job = multi_job(
        tmp_path,
        [
            {"name": "bad", "model": "m", "base_url": bad.base_url},
            {"name": "good", "model": "m", "base_url": good.base_url},
        ],
        teaching,
    )
    return bad, good, job


@pytest.mark.parametrize("strategy", ["cascade", "pool"])
def test_a_failing_teacher_the_other_answers(fake_openai: Any, tmp_path: Path, strategy: str) -> None:
    _, good, job = _failing_pair(fake_openai, tmp_path, {"strategy": strategy})
    summary = generate(job, tmp_path / "run")
    assert sorted(asked(good)) == list(range(N))
    assert {r["teacher"] for r in rows(tmp_path / "run")} == {"good"}
    t = summary["teachers"]
    assert t["bad"]["failed"] == t["bad"]["requests"] == N + 4 and t["bad"]["answered"] == 0
    assert t["good"]["answered"] == N + 4 and t["good"]["failed"] == 0
    assert "HTTP 500" in next(iter(t["bad"]["failure_reasons"]))
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    counts = state["stages"]["generate"]["counts"]
    assert counts["teachers"]["bad"]["failed"] == N + 4 and counts["teachers"]["good"]["answered"] == N + 4
    assert counts["ledger"]["teachers"]["good"]["calls"] == N + 4 and "bad" not in counts["ledger"]["teachers"]
    if strategy == "cascade":
        assert summary["funnel"][0]["reasons"] == {"no answer": N + 4}


def test_route_to_a_failing_teacher_fails_the_gate_for_that_teacher(fake_openai: Any, tmp_path: Path) -> None:
    bad, good, job = _failing_pair(
        fake_openai, tmp_path, {"strategy": "route", "field": "domain", "map": {"math": "bad", "*": "good"}}
    )
    with pytest.raises(TeacherError, match=r"teacher 'bad': only 0 of 4 of its rows got an answer"):
        generate(job, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "teacher" / "teaching.json").read_text())
    assert summary["teachers"]["bad"]["failed"] == 4 and summary["teachers"]["good"]["answered"] == N - 4 + 4
    before = len(good.log)
    bad.fault_fn = None
    bad.answer_fn = right
    generate(job, tmp_path / "run")  # the server is back: only the failed rows are asked
    assert len(good.log) == before
    assert sorted(asked(bad)) == [0, 3, 6, 9]


def test_cascade_whose_last_teacher_fails_counts_unanswered_rows(fake_openai: Any, tmp_path: Path) -> None:
    bad, good = fake_openai(), fake_openai()
    bad.fault_fn = lambda body, attempt: "503"
    good.answer_fn = lambda b: "no idea"
    job = multi_job(
        tmp_path,
        [
            {"name": "cheap", "model": "m", "base_url": good.base_url},
            {"name": "dear", "model": "m", "base_url": bad.base_url},
        ],
        {"strategy": "cascade", "escalate_on": ["parse"]},
    )
    with pytest.raises(
        TeacherError, match=r"only 0 of 16 rows got an answer from any teacher .* dear: 16 of 16 failed"
    ):
        generate(job, tmp_path / "run")


def test_one_teacher_listed_takes_every_row(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai()
    srv.answer_fn = right
    job = multi_job(tmp_path, [{"name": "only", "model": "m", "base_url": srv.base_url}], None)
    summary = generate(job, tmp_path / "run")
    assert sorted(asked(srv)) == list(range(N)) and sorted(asked(srv, checks=True)) == [0, 1, 2, 3]
    assert {r["teacher"] for r in rows(tmp_path / "run")} == {"only"}
    assert summary["strategy"] == "route" and summary["teachers"]["only"]["rows_chosen"] == N + 4


def test_route_by_task_type_and_pool_answer_check_without_gold() -> None:
    from potstill.config_teachers import PoolTeaching, RouteTeaching
    from potstill.data.jsonl import Example
    from potstill.data.tasks import get_task
    from potstill.teachers.strategies import route_of, select

    ex = Example("r1", [{"role": "user", "content": "2+3?"}])
    teaching = RouteTeaching(by="task_type", map={"math": "large", "*": "small"})
    assert route_of(teaching, ex, "math") == ("large", "route: task_type = 'math'")
    assert route_of(teaching, ex, "qa")[0] == "small"
    task = get_task("math")
    answers = [
        {"teacher": "a", "answer": "4", "output": "Answer: 4"},
        {"teacher": "b", "answer": "5", "output": "Answer: 5"},
        {"teacher": "c", "answer": "5", "output": "Answer: 5"},
    ]
    keep, why = select(PoolTeaching(select="answer_check"), task, answers, None)  # no gold answer: the vote
    assert keep == [answers[1]] and why.startswith("pool vote (no gold answer to check): 2 of 3 answers agree")
    keep, why = select(PoolTeaching(select="answer_check"), task, answers, "4")
    assert keep == [answers[0]] and "matches the gold answer" in why


def test_cost_saved_when_the_dearest_answered_nothing(fake_openai: Any, tmp_path: Path) -> None:
    _, large, summary, out = _cascade(fake_openai, tmp_path, ["parse"], right)
    assert asked(large) == [] and {r["teacher"] for r in out} == {"small"}
    t = summary["teachers"]["small"]
    answers = t["answered"]
    per_answer = (t["prompt_tokens"] / answers * 2 + t["completion_tokens"] / answers * 8) / 1e6  # large's prices
    cost = summary["cost"]
    assert "the answers' mean tokens" in cost["how"] and cost["reference"] == "large"
    assert cost["all_to_reference_usd"] == pytest.approx((N + 4) * per_answer, rel=1e-4)
    assert cost["actual_usd"] == pytest.approx(t["cost_usd"]) and cost["saved_pct"] > 90


def test_route_conversations_each_stays_with_its_teacher(fake_openai: Any, tmp_path: Path) -> None:
    a, b = fake_openai(), fake_openai()
    convs = [
        {
            "messages": [
                {"role": "user", "content": f"Hello {i}"},
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": f"Bye {i}"},
            ],
            "team": "ab"[i % 2],
        }
        for i in range(6)
    ]
    train = write_jsonl(tmp_path / "conv.jsonl", convs)
    job = multi_job(
        tmp_path,
        [{"name": "a", "model": "m", "base_url": a.base_url}, {"name": "b", "model": "m", "base_url": b.base_url}],
        {"strategy": "route", "field": "team", "map": {"a": "a", "*": "b"}},
        task_type="conversation",
    )
    d = yaml.safe_load(job.read_text())
    d["data"]["training"] = str(train)
    job.write_text(yaml.safe_dump(d))
    generate(job, tmp_path / "run")
    users = lambda srv: sorted(e.body["messages"][-1]["content"] for e in srv.log)  # noqa: E731
    assert [u for u in users(a) if not u.startswith("Check")] == sorted(
        [f"Bye {i}" for i in (0, 2, 4)] + [f"Hello {i}" for i in (0, 2, 4)]
    )
    assert [u for u in users(b) if not u.startswith("Check")] == sorted(
        [f"Bye {i}" for i in (1, 3, 5)] + [f"Hello {i}" for i in (1, 3, 5)]
    )
    out = rows(tmp_path / "run")
    assert [r["teacher"] for r in out if r["id"].startswith("train")] == ["a", "b"] * 3
    assert all(len(r["turn_outputs"]) == 2 for r in out if r["id"].startswith("train"))


def test_each_teacher_spends_its_own_budget(fake_openai: Any, tmp_path: Path) -> None:
    a, b = fake_openai(), fake_openai()
    a.answer_fn = b.answer_fn = right
    each = {"input_price_per_mtok": 100.0, "output_price_per_mtok": 100.0, "concurrency": 1, "budget_usd": 0.07}
    # one teacher's 16 answers cost ~$0.05 and a request at most ~$0.02: each fits its $0.07 alone, the two
    # together do not, so a budget that counted the other teacher's calls would stop the second one
    job = multi_job(
        tmp_path,
        [
            {"name": "a", "model": "m", "base_url": a.base_url, **each},
            {"name": "b", "model": "m", "base_url": b.base_url, **each},
        ],
        {"strategy": "pool"},
    )
    summary = generate(job, tmp_path / "run")
    costs = [summary["teachers"][n]["cost_usd"] for n in ("a", "b")]
    assert all(c < 0.07 for c in costs) and sum(costs) > 0.07, costs
    assert sorted(asked(b)) == list(range(N))
    d = yaml.safe_load(job.read_text())
    d["teachers"][1]["budget_usd"] = 0.01  # now b's own spend is over its budget: b alone is stopped, named
    job.write_text(yaml.safe_dump(d))
    with pytest.raises(TeacherError, match=r"budget reached: .* of teacher 'b': budget_usd=\$0.01"):
        generate(job, tmp_path / "run2")

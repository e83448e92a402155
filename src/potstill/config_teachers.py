"""The job spec's several teachers: `teachers:` (a list of named teachers) and `teaching:` (how rows are shared).

    teachers:                                   teaching:
      - {name: small, kind: hf, model: ./s}       strategy: cascade          # route | cascade | pool
      - {name: large, kind: openai, ...}          order: [small, large]      # cheapest first
                                                  escalate_on: [parse, {self_consistency: {samples: 3}}]

config.py joins these into JobSpec; `teacher:` stays valid (one teacher, no `teaching:`). The strategies run in
teachers/multi.py; docs/teachers.md describes them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, field_validator

from .config_errors import _Strict, suggest
from .filter_spec import AnswerCheckFilter, RefusalFilter

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RESERVED_TEACHER_NAMES = ("baseline", "distilled")  # evaluation rows of their own


# --------------------------------------------------------------------------------------------- cascade checks
class SelfConsistencyCheck(_Strict):
    samples: int = Field(3, ge=2, le=64, description="answers the teacher gives to each prompt; they must agree")
    min_agreement: float = Field(
        1.0, gt=0, le=1, description="share of the samples that must give the majority answer (1: all of them)"
    )


class LogprobCheck(_Strict):
    min_mean: float = Field(le=0, description="escalate when the answer's mean token logprob is below this")


class ParseCheck(_Strict):
    """No settings: the answer is read as validation reads it (prompts.answer_marker, the parse filters' pattern)."""


# name -> (settings model, the field a scalar shorthand sets)
CHECK_OPTIONS: dict[str, tuple[type[BaseModel], str | None]] = {
    "parse": (ParseCheck, None),
    "answer_check": (AnswerCheckFilter, "tolerance"),
    "self_consistency": (SelfConsistencyCheck, "samples"),
    "refusal": (RefusalFilter, None),
    "logprob": (LogprobCheck, "min_mean"),
}
CHECK_NAMES = tuple(CHECK_OPTIONS)


def check_steps(items: list[str | dict[str, Any]]) -> list[tuple[str, BaseModel]]:
    """`escalate_on` as (name, settings) in order; ValueError names every problem."""
    out: list[tuple[str, BaseModel]] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        pairs = [(item, None)] if isinstance(item, str) else list(item.items())
        for name, arg in pairs:
            if name not in CHECK_OPTIONS:
                problems.append(f"escalate_on[{i}]: unknown check {name!r}{suggest(name, CHECK_NAMES)}")
                continue
            model, main = CHECK_OPTIONS[name]
            try:
                if arg is None or arg is True:
                    out.append((name, model()))
                elif isinstance(arg, dict):
                    out.append((name, model.model_validate(arg)))
                elif main is not None:
                    out.append((name, model.model_validate({main: arg})))
                else:
                    problems.append(f"escalate_on[{i}]: check {name!r} takes a mapping of settings (got {arg!r})")
            except ValidationError as exc:
                for e in exc.errors(include_url=False):
                    field = ".".join(str(x) for x in e["loc"]) or name
                    msg = e["msg"].removeprefix("Value error, ")
                    problems.append(f"escalate_on[{i}].{name}.{field}: {msg}")
    names = [n for n, _ in out]
    if dup := next((n for n in names if names.count(n) > 1), None):
        problems.append(f"escalate_on names {dup!r} twice; list each check once")
    if problems:
        raise ValueError("; ".join(problems))
    return out


# --------------------------------------------------------------------------------------------- strategies
class RouteTeaching(_Strict):
    """Each row goes to one teacher, by a row field, the job's task type, or the prompt's length."""

    strategy: Literal["route"] = "route"
    by: Literal["field", "task_type", "length"] = Field("field", description="what decides a row's teacher")
    field: str | None = Field(None, description="by: field: the input row's field whose value is looked up in map")
    unit: Literal["words", "chars"] = Field("words", description="by: length: how the prompt is measured")
    map: dict[str, str] = Field(
        description="value -> teacher name; '*' catches every other value. by: length: keys are the longest "
        "prompt (in `unit`) a teacher takes, e.g. {200: small, '*': large}"
    )

    @field_validator("map", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v


class CascadeTeaching(_Strict):
    """Teachers in order of cost: a row goes on to the next teacher when the previous one's answer fails a check."""

    strategy: Literal["cascade"] = "cascade"
    order: list[str] | None = Field(None, description="teacher names, cheapest first; default: the teachers' order")
    escalate_on: list[str | dict[str, Any]] = Field(
        ["parse"],
        description="checks that send a row to the next teacher: parse, answer_check, self_consistency "
        "({samples, min_agreement}), refusal, logprob ({min_mean}); the first that fails is recorded",
    )

    @field_validator("escalate_on")
    @classmethod
    def _known_checks(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        if not v:
            raise ValueError("escalate_on is empty: name at least one check, e.g. [parse]")
        check_steps(v)
        return v

    def checks(self) -> list[tuple[str, BaseModel]]:
        return check_steps(self.escalate_on)


class PoolTeaching(_Strict):
    """Every teacher answers every row; one answer (or every agreeing one) is kept."""

    strategy: Literal["pool"] = "pool"
    select: Literal["vote", "answer_check", "logprob", "all_agreeing"] = Field(
        "vote",
        description="vote: the majority answer over all teachers' answers; answer_check: an answer matching the "
        "row's gold answer (rows without one: vote); logprob: the highest mean token logprob; all_agreeing: every "
        "answer that gives the majority answer, each its own training row",
    )
    min_agreement: float = Field(
        0.0, ge=0, le=1, description="vote / all_agreeing: share of the answers that must agree, else it is dropped"
    )
    order: list[str] | None = Field(
        None, description="preference: ties and whose text is kept among agreeing answers; default the teachers' order"
    )
    tolerance: float = Field(1e-6, ge=0, le=1, description="answer_check, math: relative tolerance (absolute below 1)")


TeachingSpec = Annotated[Union[RouteTeaching, CascadeTeaching, PoolTeaching], Field(discriminator="strategy")]  # noqa: UP007


# --------------------------------------------------------------------------------------------- the dearest
def price(t: Any) -> float | None:
    """A teacher's price per million tokens, prompt and completion together (None: unpriced)."""
    p = [getattr(t, f, None) for f in ("input_price_per_mtok", "output_price_per_mtok")]
    return None if all(x is None for x in p) else sum(x or 0.0 for x in p)


def reference_teacher(teachers: list[Any], teaching: Any) -> str:
    """The teacher the others are measured against (the report's "teacher" row, the cost saved): the dearest
    priced one; unpriced, a cascade's last (its strongest), else the first listed."""
    priced = [(p, i, t.name) for i, t in enumerate(teachers) if (p := price(t)) is not None]
    if priced:
        return max(priced, key=lambda x: (x[0], -x[1]))[2]
    if isinstance(teaching, CascadeTeaching):
        return (teaching.order or [t.name for t in teachers])[-1]
    return teachers[0].name or "teacher"


# --------------------------------------------------------------------------------------------- cross-checks
def teachers_problems(teachers: list[Any]) -> list[str]:
    """Every teacher of `teachers:` has a unique, file-safe name."""
    problems = []
    if not teachers:
        return ["teachers is empty: list at least one teacher (or use teacher: for one)"]
    names = [t.name for t in teachers]
    for i, t in enumerate(teachers):
        if t.name is None:
            problems.append(f"teachers[{i}] has no name: give each teacher one (name: large); rows record it")
        elif t.name in RESERVED_TEACHER_NAMES:
            problems.append(f"teachers[{i}].name {t.name!r} is taken by an evaluation row; pick another name")
    if dup := next((n for n in names if n is not None and names.count(n) > 1), None):
        problems.append(f"two teachers are named {dup!r}; names must be unique")
    return problems


def teaching_problems(teaching: Any, names: list[str], task_type: str, temperature: float) -> list[str]:
    """What `teaching:` asks that the teachers or the job cannot give."""
    problems = []

    def known(where: str, name: str) -> None:
        if name not in names:
            problems.append(f"{where}: no teacher is named {name!r}{suggest(name, names)} (teachers: {names})")

    order = getattr(teaching, "order", None)
    if order is not None:
        for i, n in enumerate(order):
            known(f"teaching.order[{i}]", n)
        if dup := next((n for n in order if order.count(n) > 1), None):
            problems.append(f"teaching.order lists {dup!r} twice; list each teacher once")
    match teaching:
        case RouteTeaching():
            for key, n in teaching.map.items():
                known(f"teaching.map[{key!r}]", n)
            if teaching.by == "field" and not teaching.field:
                problems.append("teaching.field is missing: by: field routes on a row field, e.g. field: domain")
            if teaching.by == "length":
                bad = [k for k in teaching.map if k != "*" and not k.isdigit()]
                if bad:
                    problems.append(
                        f"teaching.map key {bad[0]!r}: by: length takes whole numbers (the longest prompt a "
                        "teacher takes) and '*'"
                    )
        case CascadeTeaching():
            if len(order or names) < 2:
                problems.append("teaching: a cascade needs at least two teachers (cheapest first)")
            checks = dict(teaching.checks())
            sc = checks.get("self_consistency")
            if sc is not None and temperature == 0:
                problems.append(
                    "teaching.escalate_on self_consistency samples the teacher several times: set "
                    "generation.temperature above 0 (identical samples otherwise)"
                )
            if task_type == "conversation":
                problems.append("teaching: conversation jobs take strategy: route (each conversation, one teacher)")
        case PoolTeaching():
            if len(names) < 2:
                problems.append("teaching: a pool needs at least two teachers")
            if task_type == "conversation":
                problems.append("teaching: conversation jobs take strategy: route (each conversation, one teacher)")
    return problems

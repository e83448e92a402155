"""The ``tune:`` section of a job spec: what `potstill tune` searches, for how long, and what it optimises.

    tune:
      space:                                    # dotted paths of the train stage's settings
        hyperparameters.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
        hyperparameters.max_steps: {low: 100, high: 800, step: 100}
        student.model: {choices: [students/s, students/m, students/l]}
      trials: 20
      objective: {metric: accuracy, direction: maximize, constraints: ["latency_ms_p50 <= 30"]}
      pruner: median                      # median | hyperband | none | {kind, startup_trials, warmup_pct, noise_margin}

Each space entry is checked against the spec's own field (its type and range), so a typo in a path, a range
with low > high or a choice of the wrong type is a ``file:line`` error before anything runs.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

from .config_errors import _Strict, suggest

SEARCHABLE = ("hyperparameters", "student")  # the train stage's inputs: a trial never regenerates teacher data
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "nli": ("accuracy", "macro_f1"),
    "qa": ("accuracy", "exact_match", "f1"),
    "math": ("accuracy",),
    "conversation": ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "accuracy"),
    "summarization": ("rougeL", "rouge1", "rouge2", "bleu", "chrf", "accuracy"),
}  # the first of each is the task's main metric: the default objective
METRICS = tuple(sorted({m for ms in TASK_METRICS.values() for m in ms}))
MEASURES = (  # what a trial measures beside its metric (constraints name these)
    "latency_ms_p50",
    "latency_ms_p95",
    "parameters",
    "size_on_disk_mb",
    "peak_memory_mb",
    "train_seconds",
)
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(\S+)\s*$")


# --------------------------------------------------------------------------------------------- the spec's fields
@dataclass(frozen=True)
class SpecField:
    """A leaf field of the job spec, found by its dotted path."""

    path: str
    info: FieldInfo
    kind: str  # int | float | bool | str | literal | other

    def check(self, value: Any) -> Any:
        """The value as the spec would hold it (ValueError with pydantic's message when it does not fit)."""
        if self.kind in ("int", "float") and isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return TypeAdapter(Annotated[self.info.annotation, self.info]).validate_python(value)
        except ValidationError as exc:
            raise ValueError(exc.errors(include_url=False)[0]["msg"]) from None


def _model_of(ann: Any) -> type[BaseModel] | None:
    if typing.get_origin(ann) is Annotated:
        return _model_of(typing.get_args(ann)[0])
    if typing.get_origin(ann) in (Union, types.UnionType):
        models = [m for a in typing.get_args(ann) if (m := _model_of(a)) is not None]
        return models[0] if len(models) == 1 else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _kind(ann: Any) -> str:
    if typing.get_origin(ann) is Annotated:
        return _kind(typing.get_args(ann)[0])
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if typing.get_origin(ann) in (Union, types.UnionType):  # a number that also takes a name (max_steps: auto)
        kinds = {_kind(a) for a in args} - {"literal"}
        if len(kinds) == 1 and kinds <= {"int", "float"}:
            return kinds.pop()
    if typing.get_origin(ann) is Literal:
        return "literal"
    for t in (bool, int, float, str):
        if ann is t:
            return t.__name__
    return "other"


def searchable_paths() -> list[str]:
    """Every dotted path tune.space accepts (for suggestions)."""
    from .config import JobSpec

    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            sub = _model_of(f.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
            elif _kind(f.annotation) != "other":
                out.append(prefix + name)

    for root in SEARCHABLE:
        sub = _model_of(JobSpec.model_fields[root].annotation)
        assert sub is not None
        walk(sub, f"{root}.")
    return out


def spec_field(path: str) -> SpecField:
    """The leaf field at ``path``; ValueError saying what is wrong (and the closest valid path) otherwise."""
    from .config import JobSpec

    parts = path.split(".")
    if parts[0] not in SEARCHABLE:
        raise ValueError(
            f"unknown path {path!r}{suggest(path, searchable_paths())} (tune searches the train stage's settings: "
            "hyperparameters.* and student.*; other sections would change the teacher data of every trial)"
        )
    model: type[BaseModel] | None = JobSpec
    info: FieldInfo | None = None
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            raise ValueError(f"unknown path {path!r}{suggest(path, searchable_paths())}")
        info = model.model_fields[part]
        model = _model_of(info.annotation)
        if model is not None and i == len(parts) - 1:
            raise ValueError(
                f"{path!r} is a section; name one of its fields (e.g. {path}.{next(iter(model.model_fields))})"
            )
    assert info is not None
    kind = _kind(info.annotation)
    if kind == "other":
        raise ValueError(f"{path!r} is not a number, text or flag, so it cannot be searched")
    return SpecField(path, info, kind)


# --------------------------------------------------------------------------------------------- the section
class Param(_Strict):
    """One searched setting: a range (``{low, high, log?, step?}``) or a list of choices (``{choices: [...]}``)."""

    low: int | float | None = Field(None, description="smallest value (a range)")
    high: int | float | None = Field(None, description="largest value (a range)")
    log: bool = Field(False, description="sample on a log scale (learning rates)")
    step: int | float | None = Field(None, gt=0, description="grid step of the range")
    choices: list[Any] | None = Field(None, min_length=1, description="the values to try")
    path: str = Field("", exclude=True, description="its key in tune.space (filled in)")

    @model_validator(mode="after")
    def _fits_the_field(self) -> Param:
        if self.choices is not None and (self.low is not None or self.high is not None):
            raise ValueError("give either choices or low/high, not both")
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("needs low and high (a range) or choices (a list of values)")
        field = spec_field(self.path)
        if self.choices is not None:
            self.__dict__["choices"] = [_checked(field, c, f"choices[{i}]") for i, c in enumerate(self.choices)]
            return self
        if field.kind not in ("int", "float"):
            what = {"literal": "takes one of a few names", "bool": "is a flag", "str": "is text"}[field.kind]
            raise ValueError(f"{self.path} {what}: list its values as choices, not a range")
        low, high = self.low, self.high
        assert low is not None and high is not None
        if field.kind == "int":
            for name, v in (("low", low), ("high", high), ("step", self.step)):
                if v is not None and float(v) != int(v):
                    raise ValueError(f"{self.path} is a whole number: {name} must be one (got {v!r})")
            self.__dict__.update(low=int(low), high=int(high), step=None if self.step is None else int(self.step))
        if low > high:
            raise ValueError(f"low ({low}) is above high ({high})")
        if self.log and low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {low})")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        _checked(field, low, "low")
        _checked(field, high, "high")
        return self

    def fits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None and self.high is not None
        return not isinstance(value, bool) and isinstance(value, int | float) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {self.choices}"
        return f"{self.low}..{self.high}" + (" (log)" if self.log else "") + (f" step {self.step}" if self.step else "")


def _checked(field: SpecField, value: Any, what: str) -> Any:
    try:
        return field.check(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc} (got {value!r})") from None


@dataclass(frozen=True)
class Constraint:
    """``name <= bound`` or ``name >= bound``; ``violation`` is <= 0 when met (Optuna's convention)."""

    name: str
    op: str
    bound: float

    def violation(self, value: float) -> float:
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.bound:g}"


def parse_constraint(text: str) -> Constraint:
    m = _CONSTRAINT.match(text)
    if m is None:
        raise ValueError(f"constraint {text!r} must read 'NAME <= NUMBER' or 'NAME >= NUMBER'")
    name, op, num = m.groups()
    if name not in (*MEASURES, *METRICS):
        raise ValueError(f"constraint {text!r}: unknown measure {name!r}{suggest(name, (*MEASURES, *METRICS))}")
    try:
        bound = float(num)
    except ValueError:
        raise ValueError(f"constraint {text!r}: {num!r} is not a number") from None
    return Constraint(name, op, bound)


Direction = Literal["maximize", "minimize"]


class Objective(_Strict):
    """One objective (``metric``, ``direction``) or two (``metrics: [accuracy, latency_ms_p50]``, ``directions``):
    the task's metric and a measure, searched as a Pareto front (Optuna's multi-objective study, never pruned)."""

    metric: str | None = Field(None, description="validation metric to optimise; default the task's main one")
    direction: Direction = "maximize"
    metrics: list[str] | None = Field(
        None, description="two objectives: the task's metric, then a measure (e.g. [accuracy, latency_ms_p50])"
    )
    directions: list[Direction] | None = Field(
        None, description="with metrics: one each (default: maximize the metric, minimize the measure)"
    )
    constraints: list[str] = Field(
        [], description="e.g. 'latency_ms_p50 <= 30', 'parameters <= 1e6': a trial that misses one is infeasible"
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        if v is not None and v not in METRICS:
            raise ValueError(f"unknown metric {v!r}{suggest(v, METRICS)} (one of {', '.join(METRICS)})")
        return v

    @model_validator(mode="after")
    def _two_objectives(self) -> Objective:
        if self.metrics is None:
            if self.directions is not None:
                raise ValueError("directions go with metrics (two objectives); with one metric use direction")
            return self
        problems = []
        if self.metric is not None:
            problems.append("give metric (one objective) or metrics (two), not both")
        directions = self.directions or ["maximize", "minimize"]
        if "direction" in self.model_fields_set and self.direction != directions[0]:
            problems.append("with metrics (two objectives) give directions: [..., ...], not direction")
        if len(self.metrics) != 2:
            problems.append(f"metrics names two objectives, the task's metric then a measure (got {self.metrics})")
        else:
            main, measure = self.metrics
            if main not in METRICS:
                problems.append(f"metrics[0]: {main!r} is not a task metric{suggest(main, METRICS)}")
            if measure not in MEASURES:
                problems.append(
                    f"metrics[1]: {measure!r} is not a measure{suggest(measure, MEASURES)} "
                    f"(one of {', '.join(MEASURES)})"
                )
        if self.directions is not None and len(self.directions) != len(self.metrics):
            problems.append(f"directions needs one per metric ({len(self.metrics)}), got {len(self.directions)}")
        if problems:
            raise ValueError("; ".join(problems))
        self.__dict__.update(direction=directions[0], directions=directions)  # one spelling when written back
        return self

    def objectives(self, task_type: str) -> list[tuple[str, str]]:
        """(name, direction) of each objective: the task's metric first."""
        if self.metrics is None:
            return [(self.metric or TASK_METRICS[task_type][0], self.direction)]
        assert self.directions is not None
        return list(zip(self.metrics, self.directions, strict=True))

    @field_validator("constraints")
    @classmethod
    def _parse(cls, v: list[str]) -> list[str]:
        problems = []
        for text in v:
            try:
                parse_constraint(text)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return v

    def parsed(self) -> list[Constraint]:
        return [parse_constraint(c) for c in self.constraints]


class PrunerSpec(_Strict):
    kind: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(5, ge=0, description="median: trials that finish before any is pruned")
    warmup_pct: int = Field(0, ge=0, le=100, description="median: no pruning before this % of a trial's training")
    noise_margin: bool = Field(
        True,
        description="median, accuracy or exact_match: prune only below the median by more than the report's "
        "sampling noise (1.96 binomial standard errors over the rows a report scores)",
    )


class ConfirmSpec(_Strict):
    top: int = Field(3, ge=1, le=100, description="the best trials (on validation) trained again")
    seeds: int = Field(2, ge=1, le=100, description="more trainings of each, with seeds seed+1 .. seed+seeds")


class TuneSpec(_Strict):
    space: dict[str, Param] = Field(min_length=1, description="dotted spec path -> range or choices")
    trials: int = Field(20, ge=1, le=100_000, description="finished trials wanted (complete or pruned)")
    timeout_s: float | None = Field(None, gt=0, description="start no trial after this many seconds")
    objective: Objective = Objective()
    pruner: PrunerSpec = PrunerSpec()
    reports: int = Field(10, ge=1, le=100, description="times during a trial's training its metric is reported")
    report_rows: int = Field(64, ge=1, description="validation rows scored for each report")
    seed: int = Field(0, description="seed of the sampler")
    start_with: list[dict[str, Any]] = Field(
        [], description="trials run first, e.g. [{hyperparameters.learning_rate: 2.0e-5}] (the rest sampled)"
    )
    confirm: ConfirmSpec | None = Field(
        None,
        description="after the search, train the best trials again with other seeds; the winner has the best mean "
        "(one objective only)",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _name_entries(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        return {k: {**e, "path": str(k)} if isinstance(e, dict) else e for k, e in v.items()}

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("pruner")
    @classmethod
    def _no_pruning_with_two_objectives(cls, v: PrunerSpec, info: ValidationInfo) -> PrunerSpec:
        objective = info.data.get("objective")
        if objective is not None and objective.metrics is not None and v.kind != "none":
            raise ValueError(
                f"{v.kind} cannot stop trials of a two-objective study (Optuna prunes single-objective studies "
                "only): remove pruner or set it to none"
            )
        return v

    @field_validator("confirm")
    @classmethod
    def _confirm_one_objective(cls, v: ConfirmSpec | None, info: ValidationInfo) -> ConfirmSpec | None:
        objective = info.data.get("objective")
        if v is not None and objective is not None and objective.metrics is not None:
            raise ValueError(
                "confirm picks the winner by its mean metric over seeds, which a two-objective study (a Pareto "
                "front) does not have: remove confirm or the second objective"
            )
        return v

    @model_validator(mode="after")
    def _unpruned_with_two_objectives(self) -> TuneSpec:
        if self.objective.metrics is not None:  # the default pruner (median) is off for two objectives
            self.__dict__["pruner"] = PrunerSpec(kind="none")
        return self

    @model_validator(mode="after")
    def _start_with_in_space(self) -> TuneSpec:
        problems = []
        for i, row in enumerate(self.start_with):
            for path, value in row.items():
                param = self.space.get(path)
                if param is None:
                    problems.append(f"start_with[{i}]: {path!r} is not in tune.space{suggest(path, self.space)}")
                    continue
                try:
                    value = spec_field(path).check(value)
                except ValueError as exc:
                    problems.append(f"start_with[{i}].{path}: {exc} (got {value!r})")
                    continue
                if not param.fits(value):
                    problems.append(f"start_with[{i}].{path}: {value!r} is outside its space ({param.describe()})")
                row[path] = value
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def metric(self, task_type: str) -> str:
        """The task metric optimised (the first objective)."""
        return self.objective.objectives(task_type)[0][0]


# --------------------------------------------------------------------------------------------- applying values
def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a spec dict, making the sections on the way (e.g. hyperparameters.kd)."""
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = value


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the spec dict ``base`` with each dotted path set."""
    import copy

    out = copy.deepcopy(base)
    for path, value in params.items():
        set_path(out, path, value)
    return out


def tune_problems(tune: TuneSpec, task_type: str, base: dict[str, Any] | None) -> list[str]:
    """What only the whole spec can tell: the metric fits the task, and each value of the space (each bound,
    each choice, each start_with row) gives a valid job. ``base``: the rest of the spec as a dict (None when it
    has errors of its own)."""
    from .config import JobSpec
    from .config_errors import format_problems

    problems = []
    allowed = TASK_METRICS[task_type]
    names = [tune.objective.metric, *(tune.objective.metrics or [])[:1]]
    names += [c.name for c in tune.objective.parsed() if c.name in METRICS]
    for m in names:
        if m is not None and m not in allowed:
            problems.append(f"objective: {task_type} runs do not measure {m!r} (they have {', '.join(allowed)})")
    if base is None:
        return problems
    tries = [{p: v} for p, e in tune.space.items() for v in (e.choices or [e.low, e.high])] + tune.start_with
    for params in tries:
        try:
            JobSpec.model_validate(with_params(base, params))
        except ValidationError as exc:
            shown = ", ".join(f"{p} = {v!r}" for p, v in params.items())
            why = format_problems(exc, JobSpec, None, {})[0].removeprefix("(top level): ")
            problems.append(f"space: {shown} makes the job invalid: {why}")
    return problems

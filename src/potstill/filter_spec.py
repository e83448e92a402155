"""The `filters:` part of the job spec: each filter's settings (pydantic, extra="forbid") and their shorthands.

    filter_steps(["parse", {"length": 50}, {"balance": 0.4}])
    # -> [("parse", ParseFilter()), ("length", LengthFilter(max=50)), ("balance", BalanceFilter(max_share=0.4))]

A filter is a plain name (default settings), `{name: scalar}` (sets its main field, FILTER_OPTIONS says which)
or `{name: {field: value, ...}}`. The filters themselves live in data/checks.py.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from .config_errors import _Strict

__all__ = ["FILTER_NAMES", "FILTER_OPTIONS", "filter_options", "filter_steps"]


def _compiles(p: str) -> re.Pattern[str]:
    try:
        return re.compile(p, re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"pattern {p!r} is not a valid regular expression ({exc})") from None


class ParseFilter(_Strict):
    pattern: str | None = Field(
        None,
        description="where the answer is: a regular expression with exactly one group around it, e.g. "
        "'Verdict:\\s*(.+)$', searched in the whole output with ^ and $ matching at every line (the last match "
        "wins); its group is read by the task (number, label, letter or text). Outputs it does not match are "
        "read by the task's own parser. Also used by answer_check, self_consistency and evaluation",
    )

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, v: str | None) -> str | None:
        if v is None:
            return v
        groups = _compiles(v).groups
        if groups != 1:
            raise ValueError(
                f"pattern {v!r} has {groups} capture groups; it needs exactly one, around the answer "
                "(write other groups as (?:...))"
            )
        return v


class AnswerCheckFilter(_Strict):
    tolerance: float = Field(1e-6, ge=0, le=1, description="math: relative tolerance (absolute below 1)")
    require_reference: bool = Field(False, description="reject rows that have no gold answer (default: keep them)")


class SelfConsistencyFilter(_Strict):
    min_agreement: float = Field(
        0.5, gt=0, le=1, description="share of a prompt's samples that must give the majority answer"
    )


class LengthFilter(_Strict):
    min: int = Field(1, ge=0, description="fewest tokens (or words) an output may have")
    max: int | None = Field(None, ge=1, description="most tokens (or words); null: no upper limit")
    unit: Literal["tokens", "words"] = Field("tokens", description="tokens: the teacher's count, else words")


class DedupFilter(_Strict):
    near: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="drop a row whose word n-gram Jaccard overlap with a kept row reaches this; "
        "null: exact duplicates only",
    )
    ngram: int = Field(3, ge=1, le=10, description="n of the word n-grams compared")


class RefusalFilter(_Strict):
    patterns: list[str] = Field([], description="extra regular expressions (case-insensitive) marking a refusal")

    @field_validator("patterns")
    @classmethod
    def _all_compile(cls, v: list[str]) -> list[str]:
        for p in v:
            _compiles(p)
        return v


class BalanceFilter(_Strict):
    max_share: float = Field(0.5, gt=0, le=1, description="the largest share of kept rows any one label may have")
    seed: int = Field(0, description="which surplus rows are dropped (seeded, reproducible)")


class MaxTokensFilter(_Strict):
    max_tokens: int | None = Field(None, ge=1, description="most completion tokens; cut-off outputs always fail")


# name -> (options model, the field a scalar shorthand sets: `{balance: 0.4}` = `{balance: {max_share: 0.4}}`)
FILTER_OPTIONS: dict[str, tuple[type[BaseModel] | None, str | None]] = {
    "nonempty": (None, None),
    "parse": (ParseFilter, "pattern"),
    "max_tokens": (MaxTokensFilter, "max_tokens"),
    "answer_check": (AnswerCheckFilter, "tolerance"),
    "self_consistency": (SelfConsistencyFilter, "min_agreement"),
    "length": (LengthFilter, "max"),
    "dedup": (DedupFilter, "near"),
    "refusal": (RefusalFilter, None),
    "balance": (BalanceFilter, "max_share"),
}
FILTER_NAMES = tuple(FILTER_OPTIONS)


def filter_options(name: str, arg: Any) -> BaseModel | None:
    """A filter's settings: no argument -> defaults, a scalar -> its main field, a mapping -> the fields."""
    model, main = FILTER_OPTIONS[name]
    if model is None:
        if arg not in (None, True, {}):
            raise ValueError(f"filter {name!r} takes no settings (got {arg!r}); write it as a plain name")
        return None
    if arg is None or arg is True:
        return model()
    if isinstance(arg, dict):
        return model.model_validate(arg)
    if main is None:
        raise ValueError(f"filter {name!r} takes a mapping of settings ({', '.join(model.model_fields)})")
    return model.model_validate({main: arg})


def filter_steps(filters: list[str | dict[str, Any]]) -> list[tuple[str, BaseModel | None]]:
    """The job's filters in order, as (name, settings)."""
    out: list[tuple[str, BaseModel | None]] = []
    for item in filters:
        pairs = [(item, None)] if isinstance(item, str) else list(item.items())
        out.extend((name, filter_options(name, arg)) for name, arg in pairs)
    return out

"""Spec problems as users read them: field paths without pydantic's union tags, YAML line numbers, and the
closest valid name for a typo.

    format_problems(exc, JobSpec, "job.yaml", yaml_lines(text))  -> ["job.yaml:5: teacher.modle: unknown ...", ...]

Also home of ``_Strict``, the one base of every spec model (extra="forbid": the errors formatted here).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class _Strict(BaseModel):
    """The base of every spec model (config.py, config_remote.py, filter_spec.py): an unknown field is an error,
    reported by format_problems with the closest valid name; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def format_problems(
    exc: ValidationError, root: type[BaseModel], source: str | None, lines: dict[tuple[str, ...], int]
) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(x) for x in err["loc"])
        shown = _user_loc(root, loc)
        path = ".".join(shown) or "(top level)"
        line = lines.get(shown) or _nearest_line(shown, lines)
        where = f"{source}:{line}: " if source and line else (f"{source}: " if source else "")
        if err["type"] == "extra_forbidden":
            valid = _fields_at(root, loc[:-1])
            msg = f"unknown field '{loc[-1]}'{suggest(loc[-1], valid)}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "missing_part":  # a field the rest of the spec makes necessary: the message says why
            msg = err["msg"]
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list):
                msg += f" (got {err['input']!r})"
        problems.append(f"{where}{path}: {msg}")
    return problems


def suggest(name: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.7)
    return f"; did you mean '{close[0]}'?" if close else ""


def _user_loc(root: type[BaseModel], loc: tuple[str, ...]) -> tuple[str, ...]:
    """Drop pydantic's union tags (e.g. ('teacher', 'hf', 'model') -> ('teacher', 'model'))."""
    out: list[str] = []
    model: Any = root
    for part in loc:
        if isinstance(model, _ListOf) and part.isdigit():  # an item of a list of models
            out.append(part)
            model = model.item
            continue
        fields = _model_fields(model)
        if fields is None:
            out.append(part)
            continue
        if part in fields:
            out.append(part)
            model = fields[part]
        elif isinstance(model, list):  # discriminated union: part is the tag
            model = next((m for m in model if _tag(m) == part), None)
        elif _tag(model) == part:  # a one-member discriminated union
            continue
        else:
            out.append(part)
            model = None
    return tuple(out)


def _fields_at(root: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(model, _ListOf) and part.isdigit():
            model = model.item
            continue
        fields = _model_fields(model)
        if isinstance(model, list) and not (fields and part in fields):
            model = next((m for m in model if _tag(m) == part), None)
            continue
        if fields and part not in fields and _tag(model) == part:
            continue
        model = fields.get(part) if fields else None
    fields = _model_fields(model)
    return list(fields) if fields else []


class _ListOf:
    """A list of models (or of a union of them) in a spec: its items' locations are indices."""

    def __init__(self, item: Any) -> None:
        self.item = item


def _model_fields(model: Any) -> dict[str, Any] | None:
    """Field name -> nested model (a class, a list of union members, or None)."""
    if isinstance(model, list):
        merged: dict[str, Any] = {}
        for m in model:
            merged.update(_model_fields(m) or {})
        return merged
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: _nested(f.annotation) for name, f in model.model_fields.items()}
    return None


def _nested(ann: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _nested(typing.get_args(ann)[0])
    if origin in (Union, types.UnionType):
        models: list[Any] = []
        for a in typing.get_args(ann):
            inner = _nested(a)
            if isinstance(inner, list):
                models += inner
            elif isinstance(inner, type | _ListOf):
                models.append(inner)
        return models[0] if len(models) == 1 else (models or None)
    if origin is list:
        inner = _nested(typing.get_args(ann)[0])
        return _ListOf(inner) if inner is not None else None
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _tag(model: Any) -> str | None:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    f = model.model_fields.get("kind") or model.model_fields.get("strategy")
    return f.default if f is not None else None


def yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path to its 1-based line in the YAML text."""
    out: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                out[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[(*path, str(i))] = v.start_mark.line + 1
                walk(v, (*path, str(i)))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return out


def _nearest_line(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    for n in range(len(loc) - 1, 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None

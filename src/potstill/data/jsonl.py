"""Streaming reader for input rows: chat JSONL and simple {prompt, answer} JSONL.

    for ex in read_examples(Path("train.jsonl"), split="train"):   # one Example per line, lazily
        ex.messages    # the prompt: [system?, user, (assistant, user)*]
        ex.reference   # the gold answer text when the row has one, else None

Accepted rows (one JSON object per line, blank lines ignored):
    {"messages": [{"role": "system", "content": ...}, {"role": "user", ...}, {"role": "assistant", ...}?]}
    {"prompt": "...", "answer": "..."?}            ("completion" is accepted for "answer")
A trailing assistant message is the row's reference answer. Errors name the file and line:
``train.jsonl:7: not valid JSON (...)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 10


@dataclass
class Example:
    id: str
    messages: list[dict[str, str]]
    reference: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The last user message: what the row asks."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.messages, "reference": self.reference}


def parse_row(obj: Any, where: str, split: str, index: int) -> Example:
    """One decoded JSON value -> Example, or DataError naming ``where`` (file:line)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    ex_id = str(obj.get("id", f"{split}-{index}"))
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        clean: list[dict[str, str]] = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise DataError(f"{where}: messages[{i}].role is {m['role']!r}; use one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise DataError(f"{where}: messages[{i}].content must be a string")
            if m["role"] == "system" and i != 0:
                raise DataError(f"{where}: messages[{i}] is a system message; only the first may be system")
            clean.append({"role": m["role"], "content": m["content"]})
        reference = None
        if clean[-1]["role"] == "assistant":
            reference = clean.pop()["content"]
        if not any(m["role"] == "user" for m in clean):
            raise DataError(f"{where}: no user message; each row needs at least one {{'role': 'user'}} turn")
        return Example(ex_id, clean, reference, obj)
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
        answer = obj.get("answer", obj.get("completion"))
        if answer is not None and not isinstance(answer, str | int | float):
            raise DataError(f"{where}: 'answer' must be a string or a number")
        msgs = [{"role": "user", "content": prompt}]
        if isinstance(obj.get("system"), str):
            msgs.insert(0, {"role": "system", "content": obj["system"]})
        return Example(ex_id, msgs, None if answer is None else str(answer), obj)
    keys = ", ".join(sorted(obj)[:6]) or "none"
    raise DataError(f"{where}: unknown row format (keys: {keys}); expected 'messages' or 'prompt'")


def _numbered_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(file:line, decoded JSON or the DataError for that line) for each non-blank line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield (
                    where,
                    DataError(
                        f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object"
                    ),
                )


def _open_check(path: Path, split: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found (check data.{_field(split)} in the job spec)")


def read_examples(path: Path, split: str = "train") -> Iterator[Example]:
    """Yield Examples line by line; raises DataError at the first bad line."""
    path = Path(path)
    _open_check(path, split)
    n = 0
    for where, obj in _numbered_rows(path):
        if isinstance(obj, DataError):
            raise obj
        yield parse_row(obj, where, split, n)
        n += 1
    if n == 0:
        raise DataError(f"{path}: the file has no rows (expected one JSON object per line)")


def check_file(path: Path, split: str) -> int:
    """Read the whole file once, collecting up to 10 problems at once; return the row count."""
    path = Path(path)
    _open_check(path, split)
    problems: list[str] = []
    ids: set[str] = set()
    n = 0
    for where, obj in _numbered_rows(path):
        try:
            if isinstance(obj, DataError):
                raise obj
            ex = parse_row(obj, where, split, n)
            if ex.id in ids:
                raise DataError(f"{where}: duplicate id {ex.id!r}; ids must be unique within a file")
            ids.add(ex.id)
        except DataError as exc:
            problems.append(str(exc))
            if len(problems) >= MAX_REPORTED:
                break
        n += 1
    if n == 0:
        problems.append(f"{path}: the file has no rows (expected one JSON object per line)")
    if problems:
        raise DataError("\n".join(problems))
    return n


def _field(split: str) -> str:
    return {"train": "training", "validation": "validation", "test": "test"}.get(split, split)

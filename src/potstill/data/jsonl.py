"""Streaming reader for input rows: JSONL, CSV and Parquet files, in any row format of data/rows.py.

    for ex in read_examples(Path("train.jsonl"), split="train"):   # one Example per row, lazily
        ex.messages    # the prompt: [system?, user, (assistant, user)*]
        ex.reference   # the gold answer text when the row has one, else None

The file type comes from the suffix: .csv (a header row; cells holding JSON lists/objects, e.g. "choices", are
decoded; empty cells are missing values), .parquet / .pq (read batch by batch, needs pyarrow), anything else is
JSONL (one JSON object per line, blank lines ignored). Errors name the file and line:
``train.jsonl:7: not valid JSON (...)``; CSV errors name the line, Parquet errors the row number.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from .rows import ROLES, Example, parse_row

__all__ = ["MIN_ROWS", "ROLES", "Example", "check_file", "parse_row", "read_examples"]

MAX_REPORTED = 10
MIN_ROWS = {"train": 50, "validation": 10, "test": 10}  # below these a split says little (Azure asks for 65)
log = logging.getLogger("potstill")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
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


def _cell(value: str) -> Any:
    v = value.strip()
    if not v:
        return None
    if v[0] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return value
    return value


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"{path}:1", DataError(f"{path}:1: not valid CSV ({exc})")
            return
        start = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield f"{path}:{start}", DataError(f"{path}:{start}: not valid CSV ({exc})")
                return
            where, start = f"{path}:{start}", reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield where, DataError(f"{where}: {len(cells)} cells but the header has {len(header)} columns")
                continue
            yield where, {k: v for k, c in zip(header, cells, strict=True) if (v := _cell(c)) is not None}


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; pip install 'potstill[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}: row {n}", {k: v for k, v in row.items() if v is not None}


def numbered_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, decoded row or the DataError for it) for each non-blank row of a JSONL, CSV or Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix in (".parquet", ".pq"):
        return _parquet_rows(path)
    return _jsonl_rows(path)


def _open_check(path: Path, split: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found (check data.{_field(split)} in the job spec)")


def read_examples(path: Path, split: str = "train", template: str | None = None) -> Iterator[Example]:
    """Yield Examples row by row; raises DataError at the first bad row."""
    path = Path(path)
    _open_check(path, split)
    n = 0
    for where, obj in numbered_rows(path):
        if isinstance(obj, DataError):
            raise obj
        yield parse_row(obj, where, split, n, template)
        n += 1
    if n == 0:
        raise DataError(f"{path}: the file has no rows (expected one JSON object per line)")


def check_file(path: Path, split: str, template: str | None = None) -> int:
    """Read the whole file once, collecting up to 10 problems at once; return the row count.

    Logs a warning (logger "potstill") when the split has fewer rows than MIN_ROWS says is useful.
    """
    path = Path(path)
    _open_check(path, split)
    problems: list[str] = []
    ids: set[str] = set()
    n = 0
    for where, obj in numbered_rows(path):
        try:
            if isinstance(obj, DataError):
                raise obj
            ex = parse_row(obj, where, split, n, template)
            if ex.id in ids:
                raise DataError(f"{where}: duplicate id {ex.id!r}; ids must be unique within a file")
            ids.add(ex.id)
        except DataError as exc:
            problems.append(str(exc))
            if len(problems) >= MAX_REPORTED:
                break
        n += 1
    if n == 0:
        problems.append(f"{path}: the file has no rows (expected one row per line)")
    if problems:
        raise DataError("\n".join(problems))
    if n < MIN_ROWS.get(split, 0):
        log.warning(
            "warning: %s has %d %s rows; at least %d make a useful split (results on fewer are noisy)",
            path,
            n,
            split,
            MIN_ROWS[split],
        )
    return n


def _field(split: str) -> str:
    return {"train": "training", "validation": "validation", "test": "test"}.get(split, split)

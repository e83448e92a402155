"""The offline demo, end to end (`potstill demo --quick`), and its task generator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from potstill.data.tasks import parse_math
from potstill.demo.task import col_add, col_mul, col_sub, problems


def _check_columns(text: str) -> None:
    """Every 'x op y = z' in a worked answer is true arithmetic."""
    for a, op, b, rest, z in re.findall(r"(\d+) ([-+*]) (\d+)((?: [-+] \d+)*) = (\d+)", text):
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        for sign, n in re.findall(r" ([-+]) (\d+)", rest):
            value += int(n) if sign == "+" else -int(n)
        assert value == int(z), text


@pytest.mark.parametrize("steps", [1, 2])
def test_worked_answers_are_right_and_parse(steps: int) -> None:
    rows = problems(3000, seed=7, steps=steps)
    assert len({r["prompt"] for r in rows}) == 3000
    for r in rows:
        assert parse_math(str(r["answer"])) == str(r["value"])
        _check_columns(str(r["answer"]))


def test_column_arithmetic_carries_and_borrows() -> None:
    assert col_add(47, 38) == "47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8"
    assert col_add(85, 82) == "85 + 82: 5 + 2 = 7, 8 + 8 = 16"
    assert col_sub(85, 29) == "85 - 29: 15 - 9 = 6, 8 - 1 - 2 = 5"
    assert col_sub(205, 98) == "205 - 98: 15 - 8 = 7, 10 - 1 - 9 = 0, 2 - 1 = 1"
    assert col_mul(9, 49) == "9 * 49: 9 * 9 = 81, 9 * 4 + 8 = 44"


def test_splits_do_not_overlap() -> None:
    test = problems(300, seed=3, steps=1)
    train = problems(1000, seed=1, exclude={str(r["prompt"]) for r in test}, steps=1)
    assert not {str(r["prompt"]) for r in test} & {str(r["prompt"]) for r in train}


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    res = run_cli("demo", "--quick", "--run-dir", str(tmp_path / "demo"), timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    rd = tmp_path / "demo"
    results = json.loads((rd / "eval" / "results.json").read_text())
    acc = {m["name"]: m["accuracy"] for m in results["models"]}
    assert acc["teacher"] >= 0.5  # the teacher trained here answers correctly most of the time
    assert acc["distilled"] > acc["baseline"]  # distillation beats the untrained student
    by = {m["name"]: m for m in results["models"]}
    assert by["distilled"]["parameters"] < by["teacher"]["parameters"]
    assert (rd / "report" / "report.html").exists() and (rd / "report" / "report.md").exists()
    assert "accuracy retention" in res.stdout

"""The "still improving" warning: from a training's loss history, on the console and in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_report import synthetic_run

from potstill.report.build import build_report
from potstill.run_dir import RunDir
from potstill.train.advice import still_improving


def _history(n: int, loss: Any, every: int = 0) -> list[dict[str, Any]]:
    out = []
    for s in range(1, n + 1):
        rec: dict[str, Any] = {"step": s, "loss": loss(s)}
        if every and (s % every == 0 or s == n):
            rec["val_loss"] = loss(s) + 0.1
        out.append(rec)
    return out


def test_a_validation_loss_still_falling_is_reported_with_its_figures() -> None:
    more = still_improving(_history(1000, lambda s: 2.0 / s**0.5, every=100))
    assert more is not None and more.kind == "validation"
    assert (more.from_step, more.to_step) == (900, 1000)  # the last measurement at or before 90 %, and the end
    assert more.before == 2.0 / 900**0.5 + 0.1 and more.after == 2.0 / 1000**0.5 + 0.1
    msg = more.message()
    assert "0.1667 at step 900" in msg and "at step 1,000" in msg and "more steps would help" in msg
    assert f"−{more.drop_pct:.0f} %" in msg


def test_a_flat_or_rising_end_is_not_reported() -> None:
    flat = _history(1000, lambda s: max(0.5, 2.0 - s / 100), every=100)
    assert still_improving(flat) is None
    rising = _history(1000, lambda s: 1.0 + s / 10_000, every=100)
    assert still_improving(rising) is None
    # a 1 % fall is noise, not "still improving"
    assert still_improving(_history(1000, lambda s: 1.0 - 0.01 * (s > 950), every=100)) is None
    assert still_improving(_history(10, lambda s: 1.0 / s, every=2)) is None  # too short to judge


def test_without_validation_the_training_loss_decides() -> None:
    more = still_improving(_history(400, lambda s: 4.0 / s))
    assert more is not None and more.kind == "training" and more.to_step == 400
    assert (more.before, more.after) == (
        sum(4.0 / s for s in range(361, 381)) / 20,
        sum(4.0 / s for s in range(381, 401)) / 20,
    )
    assert still_improving(_history(400, lambda s: 1.0)) is None
    # validation measured only at the end: nothing to compare it with, so the training loss decides
    only_end = _history(400, lambda s: 4.0 / s)
    only_end[-1]["val_loss"] = 0.5
    assert still_improving(only_end) is not None and still_improving(only_end).kind == "training"  # type: ignore[union-attr]


def test_the_report_and_the_console_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic_run(tmp_path)
    rd = RunDir(tmp_path)
    build_report(tmp_path)
    assert "still improving" not in (tmp_path / "report" / "report.md").read_text()  # 4 steps: too short
    rd.event("train", "start")
    for rec in _history(200, lambda s: 30.0 / s, every=20):
        rd.event("train", "step", **rec)
    build_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "> **The student is still improving: its validation loss fell from" in md
    assert '<p class="advice">The student is still improving' in html

    import io

    from rich.console import Console

    import potstill.cli as cli

    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=200))
    cli.print_results(tmp_path)
    assert "still improving" not in buf.getvalue()  # no training summary: nothing to judge
    rd.write_json(rd.root / "student" / "training_summary.json", {"history": _history(200, lambda s: 30.0 / s, 20)})
    cli.print_results(tmp_path)
    line = next(x for x in buf.getvalue().splitlines() if "still improving" in x)
    assert line.startswith("  ! the student is still improving: its validation loss fell from")

"""kill -9 in the middle of a cascade over two HTTP teachers, then resume: no teacher is asked again for an answer
it already gave (each teacher's cache keys carry its name), and the chosen data equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from fake_openai import row_id
from test_multi_teacher import HARD, is_check, multi_job, right

N_TRAIN = 60


def committed(db: Path) -> dict[str, set[str]]:
    """Teacher name -> the rows (server row ids) its answers in the cache stand for."""
    out: dict[str, set[str]] = {}
    if not db.exists():
        return out
    con = sqlite3.connect(db)
    try:
        for (req,) in con.execute("SELECT request FROM calls"):
            b = json.loads(req)
            out.setdefault(b["teacher"], set()).add(
                row_id({"messages": b["messages"], "seed": b["seed"] + b["sample"]})
            )
    except sqlite3.OperationalError:
        pass
    finally:
        con.close()
    return out


@pytest.mark.slow
def test_kill_9_in_a_cascade_then_resume(fake_openai: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import test_multi_teacher

    monkeypatch.setattr(test_multi_teacher, "N", N_TRAIN)
    small, large = fake_openai(delay_s=0.02), fake_openai(delay_s=0.02)

    def unsure(b: dict[str, Any]) -> str:  # the hard rows' samples disagree: they go on to the large teacher
        i = int(b["messages"][-1]["content"].split()[1].rstrip(":?"))
        if i % 12 in HARD and not is_check(b):
            return f"Answer: {i + int(str(b['seed']).split('/')[0]) % 3}"
        return right(b)

    small.answer_fn, large.answer_fn = unsure, right
    teachers = [
        {"name": "small", "model": "m", "base_url": small.base_url},
        {"name": "large", "model": "m", "base_url": large.base_url},
    ]
    teaching = {"strategy": "cascade", "escalate_on": ["parse", {"self_consistency": {"samples": 3}}]}
    runs = {}
    for name in ("crashed", "clean"):
        job = multi_job(tmp_path / name, teachers, teaching)
        runs[name] = tmp_path / name / "run"
        runs[name].mkdir(parents=True)
        (runs[name] / "job.yaml").write_text(job.read_text())

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "potstill", "generate", str(runs["crashed"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    db = runs["crashed"] / "teacher" / "cache.sqlite"
    deadline = time.time() + 120
    while len(committed(db).get("small", ())) < 60 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = committed(db)
    assert 60 <= len(done.get("small", ())) < 3 * (N_TRAIN + 4), "the kill must land in the middle of the cascade"
    logs_before = {"small": len(small.log), "large": len(large.log)}

    res = run_cli("generate", str(runs["crashed"]), timeout=300)
    assert res.returncode == 0, res.stderr
    for name, srv in (("small", small), ("large", large)):
        resumed = [e.row for e in srv.log[logs_before[name] :] if e.outcome == "ok"]
        assert not set(resumed) & done.get(name, set())  # nothing this teacher already answered is asked again
        assert len(resumed) == len(set(resumed))
    assert len(large.log) > logs_before["large"] or done.get("large")  # the hard rows reached the large teacher

    res = run_cli("generate", str(runs["clean"]), timeout=300)
    assert res.returncode == 0, res.stderr
    for split in ("train", "validation"):
        for folder in ("outputs", "answers"):
            crashed = (runs["crashed"] / "teacher" / folder / f"{split}.jsonl").read_text()
            assert crashed == (runs["clean"] / "teacher" / folder / f"{split}.jsonl").read_text()
    chosen = [json.loads(x) for x in (runs["crashed"] / "teacher" / "outputs" / "train.jsonl").read_text().splitlines()]
    assert {r["teacher"] for r in chosen} == {"small", "large"}

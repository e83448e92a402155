"""kill -9 in the middle of generation, resume: no answered row is requested again; the data equals a clean run's."""

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
from conftest import api_job_dict, run_cli
from fake_openai import row_id


def committed_rows(db: Path) -> set[str]:
    if not db.exists():
        return set()
    con = sqlite3.connect(db)
    try:
        reqs = [json.loads(r[0]) for r in con.execute("SELECT request FROM calls")]
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()
    return {row_id({"messages": b["messages"], "seed": b["seed"] + b["sample"]}) for b in reqs}


@pytest.mark.slow
def test_kill_9_midway_then_resume(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai(delay_s=0.03)
    d = api_job_dict(tmp_path / "data", {"base_url": srv.base_url}, n_train=150, generation={"concurrency": 4})
    runs = {}
    for name in ("crashed", "clean"):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "job.yaml").write_text(json.dumps(d))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "potstill", "generate", str(runs["crashed"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    db = runs["crashed"] / "teacher" / "cache.sqlite"
    deadline = time.time() + 60
    while len(committed_rows(db)) < 40 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = committed_rows(db)
    assert 40 <= len(done) < 154, "the kill must land in the middle of generation"
    sent_before = len(srv.log)
    answered_before = {e.row for e in srv.log[:sent_before] if e.outcome == "ok"}

    res = run_cli("generate", str(runs["crashed"]), timeout=120)
    assert res.returncode == 0, res.stderr
    resumed = [e.row for e in srv.log[sent_before:]]
    assert not set(resumed) & done  # zero requests for rows already committed
    assert len(resumed) == len(set(resumed)) == 154 - len(done)
    assert len(set(resumed) & answered_before) <= 4  # at most the in-flight ones are repeated

    res = run_cli("generate", str(runs["clean"]), timeout=120)
    assert res.returncode == 0, res.stderr
    for split in ("train", "validation"):
        crashed = (runs["crashed"] / "teacher" / "outputs" / f"{split}.jsonl").read_text()
        clean = (runs["clean"] / "teacher" / "outputs" / f"{split}.jsonl").read_text()
        assert crashed == clean

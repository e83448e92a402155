"""Crash-safe files and runs: the lock comes before any write, files get the user's umask, the student folder
is swapped whole, a failing worker stops the others, and nothing escapes the CLI as a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import job_dict, run_cli

from potstill.run_dir import RunDir, atomic_jsonl, atomic_replace_dir, atomic_write_text
from potstill.train.dist import spawn_cpu_workers


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    import potstill.run_dir as run_dir

    old = os.umask(mask)
    run_dir._UMASK = None  # read afresh, as a new process would
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        with atomic_jsonl(tmp_path / "b.jsonl") as write:
            write({"x": 1})
        plain = tmp_path / "c.txt"
        plain.write_text("reference")
    finally:
        os.umask(old)
        run_dir._UMASK = None
    want = plain.stat().st_mode & 0o777
    assert want == 0o666 & ~mask
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == want
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == want


def test_run_takes_the_lock_before_writing_anything(tiny_models: dict, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "job.yaml").write_text("name: the running job\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(rd / '.lock')!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(job_dict(tiny_models, tmp_path / "data")))
        res = run_cli("run", str(job), "--run-dir", str(rd))
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 1 and "in use by another potstill process" in res.stderr
    assert (rd / "job.yaml").read_text() == "name: the running job\n"  # the running job's spec is untouched
    assert sorted(p.name for p in rd.iterdir()) == [".lock", "job.yaml"]


def test_student_swap_interrupted_between_renames_is_recovered(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.create()
    (rd.student / "model.safetensors").write_text("old weights")
    new = tmp_path / "run" / ".student.tmp"
    new.mkdir()
    (new / "model.safetensors").write_text("new weights")
    rd.student.rename(rd.student.with_name(".student.old"))  # the first rename of the swap, then a crash
    assert not rd.student.exists()
    rd.create()  # the next run of any stage
    assert (rd.student / "model.safetensors").read_text() == "old weights"
    atomic_replace_dir(new, rd.student)
    assert (rd.student / "model.safetensors").read_text() == "new weights"
    assert not rd.student.with_name(".student.old").exists()


def test_a_failing_worker_stops_the_others(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            rank = int(os.environ["RANK"])
            if rank == 1:
                raise RuntimeError("rank 1 fails")
            time.sleep(30)  # rank 0: as if blocked in a collective, waiting for rank 1
            open({str(tmp_path / "rank0-finished")!r}, "w").write("done")
            """
        )
    )
    rc = spawn_cpu_workers(2, ["arg"], command=[sys.executable, str(script)])
    assert rc == 1  # the failing worker's code
    assert not (tmp_path / "rank0-finished").exists()  # rank 0 was stopped, not waited for


def test_unexpected_errors_end_in_one_error_line(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "state.json").write_text('{"stages": ')  # torn: not JSON
    res = run_cli("status", str(rd))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: JSONDecodeError")


def test_a_spec_with_several_problems_ends_in_an_error_line(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"name": "x", "task_type": "poetry", "teacher": "t", "student": "s", "bogus": 1}))
    res = run_cli("run", str(job))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "problem" in lines[-1]
    assert any("task_type" in ln for ln in lines[:-1]) and any("bogus" in ln for ln in lines[:-1])

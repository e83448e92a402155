"""``potstill tune --workers K``: K worker processes on this machine share the study (and the run folder).

    run_workers(spec, rd, url, target, limit, k, say)     # called by run_tune, which holds the run folder's lock

The tune process has generated and validated the data and opened the study (failing and queueing the trials of
an earlier tune that died); it then starts K workers (``main`` in a new Python process; the job arrives on
stdin), and relays their lines to its log. Each worker runs the same search loop as a single tune
(tune/run.py): it counts the finished and running trials and starts the next one under the study's lock (a flock
beside the SQLite file; PostgreSQL: an advisory lock), so the study ends with exactly ``target`` finished trials
and no trial runs twice. Each worker trains its trials in the run's tune/trials/NNN/ with cores // K torch threads
and samples with its own seed (so simultaneous draws differ).

A worker lives no longer than the tune that started it: it checks its parent every ``WATCH_S`` and ends itself
with SIGKILL when the parent is gone (its running trial is left RUNNING, as after a kill -9, and the next tune
runs it again). Workers hold a shared lock on tune/.workers.lock for their whole life; a new tune takes that lock
exclusively before it fails the earlier tune's RUNNING trials, so it never fails a trial a live worker still runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ..config import JobSpec
from ..errors import PotstillError
from ..run_dir import RunDir, read_jsonl

MAIN = "import sys; from potstill.tune.workers import main; sys.exit(main(sys.argv[1:]))"  # a worker process
WATCH_S = 0.2  # how often a worker checks that the tune that started it is alive
SEED_SALT = 1000  # worker i samples with seed + i * SEED_SALT


def workers_lock(rd: RunDir) -> Path:
    return rd.root / "tune" / ".workers.lock"


@contextmanager
def no_live_workers(rd: RunDir) -> Iterator[None]:
    """Wait until no worker of an earlier tune of this run folder is alive (they end within WATCH_S of it)."""
    path = workers_lock(rd)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def threads_each(k: int) -> int:
    return max(1, (os.cpu_count() or 1) // k)


def run_workers(
    spec: JobSpec, rd: RunDir, url: str, target: int, limit: float | None, k: int, say: Callable[[str], None]
) -> list[int]:
    """Start K workers, relay their lines, wait for them; their exit codes (0: their search ended normally)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_each(k)), "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[str]] = []
    relays: list[threading.Thread] = []
    job = json.dumps(spec.public_dict())
    say(f"tune: {k} workers on this machine, {threads_each(k)} torch thread(s) each")
    try:
        for i in range(k):
            args = [str(rd.root), url, str(target), str(limit or 0), str(i)]
            p = subprocess.Popen(
                [sys.executable, "-c", MAIN, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the tune, which passes it on once
            )
            assert p.stdin is not None
            p.stdin.write(job)
            p.stdin.close()
            procs.append(p)
            t = threading.Thread(target=_relay, args=(p.stdout, f"worker {i + 1}: ", say), daemon=True)
            t.start()
            relays.append(t)
        codes = [p.wait() for p in procs]
    except BaseException:  # Ctrl-C: each worker queues its running trial again and ends
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    for t in relays:
        t.join(timeout=5)
    return codes


def _relay(stream: IO[str] | None, prefix: str, say: Callable[[str], None]) -> None:
    if stream is None:
        return
    for line in stream:
        say(prefix + line.rstrip("\n"))


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # as if killed with the tune: the next tune runs its trial again
        time.sleep(WATCH_S)


def main(argv: list[str]) -> int:
    """A worker: ``main([RUN_DIR, URL, TARGET, LIMIT, INDEX])`` with the job (JSON) on stdin."""
    import torch

    from .run import _search
    from .study import open_study
    from .trial import Trial

    root, url, target, limit, index = argv
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = JobSpec.model_validate(json.loads(sys.stdin.read()))
    rd = RunDir(Path(root))
    say = lambda msg: print(msg, flush=True)  # noqa: E731 (relayed by the tune)
    say(f"started, {torch.get_num_threads()} torch thread(s)")
    with open(workers_lock(rd), "a") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # released when this process ends, however it ends
        try:
            study = open_study(spec, rd, url, salt=int(index) * SEED_SALT)
            n_rows = sum(1 for _ in read_jsonl(rd.data / "train.jsonl"))
            _search(study, Trial(spec, rd, n_rows, say), spec, rd, url, int(target), float(limit) or None, say)
        except PotstillError as exc:
            say(f"error: {exc}")
            return 1
        except KeyboardInterrupt:
            return 130
    return 0

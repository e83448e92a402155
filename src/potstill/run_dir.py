"""The on-disk contract of a run (see DESIGN.md): paths, state.json, atomic writes, fingerprints, events.

    rd = RunDir(Path("runs/support-bot"))
    rd.write_json(rd.eval / "results.json", {...})   # tmp file + rename: never half-written
    rd.mark_done("train", fingerprint, counts={...}) # completion mark, written last
    rd.event("train", "step", step=10, loss=1.2)     # one JSON line in logs/events.jsonl

Only rank 0 of a multi-process run writes (``RunDir.writer`` is False elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

STAGES = ("generate", "validate", "train", "evaluate", "report")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


class RunDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.writer = _rank() == 0

    # ---------------------------------------------------------------- paths
    @property
    def job_yaml(self) -> Path:
        return self.root / "job.yaml"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def cache_db(self) -> Path:
        return self.teacher / "cache.sqlite"

    @property
    def outputs(self) -> Path:
        """Raw teacher outputs per split, before validation."""
        return self.teacher / "outputs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def checkpoints(self) -> Path:
        return self.student / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self) -> None:
        if not self.writer:
            return
        for d in (self.teacher, self.outputs, self.data, self.student, self.eval, self.report, self.logs):
            d.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- atomic writes
    def write_text(self, path: Path, text: str) -> None:
        if self.writer:
            atomic_write_text(path, text)

    def write_json(self, path: Path, obj: Any) -> None:
        self.write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

    @contextlib.contextmanager
    def open_jsonl(self, path: Path) -> Iterator[Any]:
        """Write JSON lines to a temp file, renamed over ``path`` only when the block completes."""
        with atomic_jsonl(path, enabled=self.writer) as write:
            yield write

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"stages": {}}

    def stage(self, name: str) -> dict[str, Any]:
        return self.state().get("stages", {}).get(name, {})

    def _update_stage(self, name: str, **fields: Any) -> None:
        if not self.writer:
            return
        st = self.state()
        entry = st.setdefault("stages", {}).setdefault(name, {})
        entry.update(fields)
        st["updated"] = time.time()
        self.write_json(self.state_path, st)

    def mark_running(self, name: str, fingerprint: str) -> None:
        self._update_stage(name, status="running", fingerprint=fingerprint, started=time.time(), finished=None)

    def mark_done(self, name: str, fingerprint: str, **counts: Any) -> None:
        started = self.stage(name).get("started") or time.time()
        now = time.time()
        self._update_stage(
            name,
            status="done",
            fingerprint=fingerprint,
            finished=now,
            elapsed_s=round(now - started, 3),
            counts=counts,
        )

    def mark_failed(self, name: str, error: str) -> None:
        self._update_stage(name, status="failed", error=error, finished=time.time())

    def invalidate(self, names: Iterable[str]) -> None:
        if not self.writer:
            return
        st = self.state()
        for n in names:
            if n in st.get("stages", {}):
                st["stages"][n]["status"] = "stale"
        self.write_json(self.state_path, st)

    def is_done(self, name: str, fingerprint: str) -> bool:
        s = self.stage(name)
        return s.get("status") == "done" and s.get("fingerprint") == fingerprint

    # ---------------------------------------------------------------- events
    def event(self, stage: str, event: str, **fields: Any) -> None:
        if not self.writer:
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        rec = {"ts": round(time.time(), 3), "stage": stage, "event": event, **fields}
        line = json.dumps(rec, default=str)
        with open(self.logs / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def events(self, stage: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        path = self.logs / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line torn by kill -9
                continue
            if (stage is None or rec.get("stage") == stage) and (event is None or rec.get("event") == event):
                out.append(rec)
        return out


# -------------------------------------------------------------------- helpers
def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place: a crash leaves the old folder or none, never a half-written one."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_jsonl(path: Path, enabled: bool = True) -> Iterator[Any]:
    if not enabled:
        yield lambda obj: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield lambda obj: f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file potstill wrote itself (inputs go through potstill.data.jsonl)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]

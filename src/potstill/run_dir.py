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
        """Resumable training state, beside student/ so that student/ can be swapped in whole."""
        return self.root / "checkpoints"

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
        recover_dir(self.student)  # a crash between the two renames of the student's swap
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

    def mark_running(self, name: str, fingerprint: str, fresh: bool = False) -> str:
        """Mark ``name`` running; returns its attempt id. An unfinished earlier attempt with the same fingerprint
        is continued (its journal resumes: the request cache, the training checkpoints) unless ``fresh``."""
        prev = self.stage(name)
        same = prev.get("fingerprint") == fingerprint and prev.get("status") in ("running", "failed")
        attempt = prev.get("attempt") if same and not fresh and prev.get("attempt") else os.urandom(4).hex()
        self._update_stage(
            name, status="running", fingerprint=fingerprint, attempt=attempt, started=time.time(), finished=None
        )
        return str(attempt)

    def attempt_key(self, name: str) -> str:
        """``fingerprint:attempt`` of the stage's current attempt: what its resumable state is tied to."""
        s = self.stage(name)
        return f"{s.get('fingerprint')}:{s.get('attempt')}"

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

    def copy_stages(self, src: RunDir, names: Iterable[str]) -> None:
        """Take ``src``'s state of each named stage as this folder's (tune: a trial starts from the run's finished
        generate and validate; the winner's train stage becomes the run's)."""
        for name in names:
            self._update_stage(name, **src.stage(name))

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
_UMASK: int | None = None


def _file_mode() -> int:
    """0666 less the process's umask: what open() would give a new file (mkstemp gives 0600)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place: a crash leaves the old folder or the new one, never a half-written
    one (between the two renames the old one waits as ``.NAME.old``, which ``recover_dir`` puts back)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """After a crash between atomic_replace_dir's two renames, put the previous folder back."""
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.exists():
        old.rename(final)


@contextlib.contextmanager
def atomic_open(path: Path, enabled: bool = True) -> Iterator[Any]:
    """A text file written to a temp name in the same folder, fsync'd, then renamed over ``path`` (and the
    folder fsync'd): readers see the old file or the whole new one. Mode as open() gives (the umask applies)."""
    if not enabled:
        with open(os.devnull, "w", encoding="utf-8") as null:
            yield null
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_jsonl(path: Path, enabled: bool = True) -> Iterator[Any]:
    with atomic_open(path, enabled) as f:
        yield lambda obj: f.write(json.dumps(obj, ensure_ascii=False) + "\n")


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

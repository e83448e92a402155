"""One progress display for every stage: a rich bar on a terminal, a periodic log line elsewhere.

Both show done/total, the rate, the time left, and any counters the stage passes (retries=, failed=, loss=).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    def __init__(self, label: str, total: int, live: bool) -> None:
        self.label, self.total, self.done, self.live = label, total, 0, live
        self.t0 = self.last = time.monotonic()
        self.extra: dict[str, Any] = {}
        self._bar: Any = None
        self._task: Any = None

    def advance(self, n: int = 1, **extra: Any) -> None:
        self.done += n
        self.extra.update(extra)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=self._info())
        elif time.monotonic() - self.last > 10:
            self.last = time.monotonic()
            print(f"{self.label}: {self.done}/{self.total} {self._info()}", file=sys.stderr, flush=True)

    def _info(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{rate:.1f}/s"]
        if self._bar is None and rate > 0 and self.total > self.done:
            parts.append(f"eta {(self.total - self.done) / rate:.0f}s")
        return " ".join(parts + [f"{k}={v}" for k, v in self.extra.items()])


@contextmanager
def progress(label: str, total: int) -> Iterator[Progress]:
    live = sys.stderr.isatty()
    p = Progress(label, total, live)
    if not live:
        yield p
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    ) as bar:
        p._bar, p._task = bar, bar.add_task(label, total=total, info="")
        yield p

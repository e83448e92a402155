"""SQLite request cache and journal of every teacher call: a paid call is never made twice.

    cache = RequestCache(run_dir.cache_db)
    key = request_key({"model": ..., "messages": [...], "temperature": 0.7, "sample": 0, ...})
    if (hit := cache.get(key)) is None:
        ...call the teacher...
        cache.put(key, request, text, finish_reason="stop", prompt_tokens=12, completion_tokens=30, latency_s=0.4)

The key is the sha256 of the canonical JSON of the whole request (model, messages, every sampling parameter,
the sample index, logprob settings), so a changed prompt or parameter is a new call, and N samples of one prompt
are N entries. A row is answered only once its response is committed (WAL mode, one commit per put_many).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_s REAL,
    cost_usd REAL,
    extra TEXT,
    created REAL NOT NULL
);
"""


def extra_fields(logprobs: dict[str, Any] | None, mean_logprob: float | None) -> dict[str, Any] | None:
    """A row's ``extra``: the top-k logprobs (logit distillation), the answer's mean token logprob."""
    out = {k: v for k, v in (("logprobs", logprobs), ("mean_logprob", mean_logprob)) if v is not None}
    return out or None


def request_key(request: dict[str, Any]) -> str:
    canon = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class RequestCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM calls WHERE key = ?", (key,)).fetchone()
        return self._row(row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM calls WHERE key IN ({','.join('?' * len(chunk))})"
            for row in self.conn.execute(q, chunk):
                out[row[0]] = self._row(row)
        return out

    def put(self, key: str, request: dict[str, Any], response: str, **fields: Any) -> None:
        self.put_many([(key, request, response, fields)])

    def put_many(self, rows: Iterable[tuple[str, dict[str, Any], str, dict[str, Any]]]) -> None:
        now = time.time()
        data = [
            (
                key,
                json.dumps(req, ensure_ascii=False),
                resp,
                f.get("finish_reason"),
                f.get("prompt_tokens"),
                f.get("completion_tokens"),
                f.get("latency_s"),
                f.get("cost_usd"),
                json.dumps(f["extra"]) if f.get("extra") is not None else None,
                now,
            )
            for key, req, resp, f in rows
        ]
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?)", data)

    def stats(self) -> dict[str, Any]:
        calls, pt, ct, lat, cost = self.conn.execute(
            "SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), AVG(latency_s), SUM(cost_usd) FROM calls"
        ).fetchone()
        return {
            "calls": calls,
            "prompt_tokens": pt or 0,
            "completion_tokens": ct or 0,
            "mean_latency_s": lat,
            "cost_usd": cost,
        }

    def stats_by_teacher(self) -> dict[str, dict[str, Any]]:
        """The ledger per named teacher (the "teacher" of each request; requests without one are left out)."""
        q = (
            "SELECT json_extract(request, '$.teacher') AS t, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
            "AVG(latency_s), SUM(cost_usd) FROM calls WHERE t IS NOT NULL GROUP BY t ORDER BY t"
        )
        return {
            t: {
                "calls": calls,
                "prompt_tokens": pt or 0,
                "completion_tokens": ct or 0,
                "mean_latency_s": lat,
                "cost_usd": cost,
            }
            for t, calls, pt, ct, lat, cost in self.conn.execute(q)
        }

    @staticmethod
    def _row(row: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "key": row[0],
            "request": json.loads(row[1]),
            "response": row[2],
            "finish_reason": row[3],
            "prompt_tokens": row[4],
            "completion_tokens": row[5],
            "latency_s": row[6],
            "cost_usd": row[7],
            "extra": json.loads(row[8]) if row[8] else None,
            "created": row[9],
        }

"""Teacher throughput: the generate stage against a local OpenAI-compatible server with fixed service latency.

    PYTHONPATH=src python benchmarks/teacher_throughput.py [--prompts 2000] [--concurrency 32] [--latency 0.1]

Prints: throughput as a share of the ideal (concurrency / latency), the speed-up over the seed's sequential loop
(`for sample in data: teacher.generate(sample)`: one blocking request at a time), and client CPU seconds per
1,000 requests. The server (tests/fake_openai.py) runs in its own process, so its CPU is not counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from potstill.config import validate_spec
from potstill.pipeline import run_pipeline
from potstill.teachers.cache import RequestCache

ROOT = Path(__file__).resolve().parent.parent


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--delay", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1"


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sequential(base_url: str, n: int) -> float:
    """The seed's loop: one blocking request after another. Returns requests per second."""
    with httpx.Client(timeout=30) as client:
        t0 = time.perf_counter()
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"sequential {i}?"}], "max_tokens": 16}
            client.post(f"{base_url}/chat/completions", json=body).raise_for_status()
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.1, help="server service time per request, seconds")
    ap.add_argument("--sequential", type=int, default=50, help="requests timed for the sequential baseline")
    args = ap.parse_args()

    proc, base_url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            job = {
                "name": "bench",
                "task_type": "qa",
                "teacher": {"kind": "openai", "model": "fake", "base_url": base_url},
                "student": "unused",
                "data": {
                    "training": write_jsonl(d / "t.jsonl", [{"prompt": f"Q{i}?"} for i in range(args.prompts)]),
                    "validation": write_jsonl(d / "v.jsonl", [{"prompt": "V?"}]),
                },
                "generation": {"temperature": 0.7, "max_tokens": 16, "concurrency": args.concurrency},
            }
            spec = validate_spec(job)
            cpu0, t0 = time.process_time(), time.perf_counter()
            rd = run_pipeline(spec, d / "run", only=["generate"])
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            with RequestCache(rd.cache_db) as cache:
                calls = cache.stats()["calls"]
            ev = rd.events("generate")
            first = next(e["ts"] for e in ev if e["event"] == "split" and e["split"] == "train")
            last = next(e["ts"] for e in ev if e["event"] == "teacher_done" and e["split"] == "train")
            assert calls == args.prompts + 1, calls
        seq_rate = sequential(base_url, args.sequential)
    finally:
        proc.kill()
        proc.wait()

    rate = calls / wall
    ideal = args.concurrency / args.latency
    print(f"requests          {calls} at concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms")
    print(f"generate stage    {wall:.2f} s wall, {rate:.1f} req/s = {100 * rate / ideal:.1f} % of ideal {ideal:.0f}")
    sent = args.prompts / (last - first)
    print(
        f"  of which engine {last - first:.2f} s for the {args.prompts} training prompts: {sent:.1f} req/s = "
        f"{100 * sent / ideal:.1f} % of ideal"
    )
    print(f"sequential loop   {seq_rate:.2f} req/s ({args.sequential} requests)")
    print(f"speed-up          {rate / seq_rate:.1f}x over the sequential loop")
    print(f"client CPU        {cpu:.2f} s = {1000 * cpu / calls:.2f} s per 1,000 requests")


if __name__ == "__main__":
    main()

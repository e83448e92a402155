"""Shared by the tune benchmarks: the machine line they print, and a job spec with a tune: section."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def machine() -> str:
    """CPU model, AVX flags, cores and the load average now (other jobs share the CPUs)."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        info = ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Model name")), "")
    flags = next((ln for ln in info.splitlines() if ln.startswith("Flags")), "")
    avx = sorted({f for f in flags.split() if f.startswith("avx")})
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model or platform.processor() or '?'}; {' '.join(avx) or 'no AVX'}; {os.cpu_count()} cores; "
        f"load average {load}"
    )


def with_tune(spec: dict[str, Any], tune: dict[str, Any]) -> dict[str, Any]:
    return {**spec, "tune": tune}

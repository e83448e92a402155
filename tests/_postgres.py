"""A throwaway PostgreSQL cluster for tests: initdb into a temporary folder, pg_ctl start on a free loopback port.

    with postgres_server() as url:      # postgresql://potstill@127.0.0.1:PORT/postgres
        ...

Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, off PATH; both places are searched. As root
(CI) the server runs as the ``postgres`` user, in folders made under /tmp and given to it (pytest's tmp folders
are closed to other users). The test is skipped only when PostgreSQL is not installed at all.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def find_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (the newest Debian version when several), or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: (len(p), p))  # 9.6 < 15 < 16
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    bindir = find_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin)")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    data, sock = tempfile.mkdtemp(prefix="potstill-pg-"), tempfile.mkdtemp(prefix="potstill-pgsock-")
    if as_root:
        for d in (data, sock):
            shutil.chown(d, "postgres", "postgres")
    port = _free_port()
    log = Path(sock) / "server.log"

    def run(*args: str) -> None:
        res = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}{server_log}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", data, "--auth=trust", "-U", "potstill", "--no-sync")
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", data, "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
        started = True
        yield f"postgresql://potstill@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)

"""Every YAML example shipped in the repo loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from potstill import load_job

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(ROOT.glob("examples/**/*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads(path: Path) -> None:
    job = load_job(path)
    assert job.spec.name
    assert job.spec.data.training.is_absolute()

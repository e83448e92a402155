"""The local teacher keeps its top-k logprobs per generated token when generation.logprobs is set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from conftest import job_dict

from potstill.config import validate_spec
from potstill.pipeline import run_pipeline
from potstill.run_dir import read_jsonl
from potstill.teachers.cache import RequestCache


def test_hf_teacher_top_k_logprobs(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    d: dict[str, Any] = job_dict(tiny_models, tmp_path / "data", generation={"logprobs": 3})
    rd = run_pipeline(validate_spec(d), tmp_path / "run", only=["generate"])
    rows = list(read_jsonl(rd.outputs / "train.jsonl"))
    assert len(rows) == 12
    for r in rows:
        lp = r["logprobs"]
        n = r["completion_tokens"]
        assert len(lp["tokens"]) == len(lp["token_ids"]) == len(lp["top"]) == len(lp["top_ids"]) == n > 0
        for pos in range(n):
            vals = [v for _, v in lp["top"][pos]]
            assert len(vals) == 3 and vals == sorted(vals, reverse=True)
            assert all(v <= 0 for v in vals) and sum(math.exp(v) for v in vals) <= 1.0 + 1e-3
            assert lp["token_ids"][pos] == lp["top_ids"][pos][0]  # greedy: the chosen token is the top one
            assert lp["tokens"][pos] == lp["top"][pos][0][0]
    # the capture lives in the cache's extra column, so a resumed run writes the same rows without the model
    with RequestCache(rd.cache_db) as cache:
        stats = cache.stats()
    assert stats["calls"] == 12  # the 6 validation prompts repeat training prompts: same request, one call
    again = run_pipeline(validate_spec(d), tmp_path / "run", only=["generate"], force=True)
    assert list(read_jsonl(again.outputs / "train.jsonl")) == rows
    # without logprobs the request (and its key) is different, and rows carry no logprobs
    d["generation"] = {"temperature": 0.0, "max_tokens": 8}
    rd = run_pipeline(validate_spec(d), tmp_path / "run2", only=["generate"])
    assert all("logprobs" not in r for r in read_jsonl(rd.outputs / "train.jsonl"))

"""The share of the teacher data as a searched value: hyperparameters.data_share (a seeded subset of the kept rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tune import GOOD, LR, summary, tune_job

from potstill.config import validate_spec
from potstill.errors import ConfigError
from potstill.run_dir import RunDir
from potstill.train.stage import share_of
from potstill.tune import run_tune

SHARE = "hyperparameters.data_share"


def test_share_of_is_a_seeded_nested_subset() -> None:
    assert share_of(10, None, 0) == list(range(10)) == share_of(10, 1.0, 0)
    quarter = share_of(100, 0.25, seed=7)
    assert len(quarter) == 25 and quarter == sorted(quarter) and len(set(quarter)) == 25
    assert share_of(100, 0.25, seed=7) == quarter  # deterministic
    assert share_of(100, 0.25, seed=8) != quarter  # another seed, another subset
    assert set(quarter) < set(share_of(100, 0.6, seed=7))  # one seed: a smaller share is inside a larger one
    assert len(share_of(3, 0.01, seed=0)) == 1  # never empty
    assert len(share_of(12, 0.5, seed=0)) == 6


def test_the_share_is_checked_like_any_searched_field(tiny_models: dict, tmp_path: Path) -> None:
    ok = validate_spec(tune_job(tiny_models, tmp_path, space={SHARE: {"low": 0.25, "high": 1.0}}))
    assert ok.tune is not None and ok.tune.space[SHARE].high == 1.0
    with pytest.raises(ConfigError, match=r"tune.space.hyperparameters.data_share: high: Input should be less than"):
        validate_spec(tune_job(tiny_models, tmp_path, space={SHARE: {"low": 0.5, "high": 1.5}}))
    with pytest.raises(ConfigError, match=r"data_share: low: Input should be greater than 0"):
        validate_spec(tune_job(tiny_models, tmp_path, space={SHARE: {"low": 0, "high": 1}}))


def test_each_trial_trains_on_its_share_of_the_kept_rows(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(
        tiny_models,
        tmp_path,
        space={SHARE: {"low": 0.25, "high": 1.0}, LR: {"choices": [GOOD]}},
        start_with=[{SHARE: 0.25, LR: GOOD}, {SHARE: 1.0, LR: GOOD}],
        trials=2,
    )
    d["hyperparameters"]["max_steps"] = 6
    rd = run_tune(validate_spec(d), tmp_path / "run").root
    kept = len((rd / "data" / "train.jsonl").read_text().splitlines())
    s = summary(rd)
    assert [t["params"][SHARE] for t in s["trials"]] == [0.25, 1.0]
    starts = [RunDir(rd / t["folder"]).events("train", "start")[-1] for t in s["trials"]]
    assert starts[0]["rows"] == round(0.25 * kept) and starts[0]["of_rows"] == kept and starts[0]["data_share"] == 0.25
    assert starts[1]["rows"] == kept

"""tune.confirm: the best trials trained again with other seeds; the best mean over them wins, not the luckiest
single run. Selection on a real Optuna study with scripted scores, then a whole tune on tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import run_cli
from test_tune import GOOD, LR, _problems, summary, tune_job, write_job

from potstill.config import validate_spec
from potstill.report.tuning import tuning_notes
from potstill.run_dir import RunDir
from potstill.tune import confirm as confirm_mod
from potstill.tune.summary import best_trial
from potstill.tune.summary import summary as summary_of


def test_confirm_needs_one_objective_and_sane_counts(tiny_models: dict, tmp_path: Path) -> None:
    two = {"metrics": ["accuracy", "latency_ms_p50"], "directions": ["maximize", "minimize"]}
    text = _problems(tiny_models, tmp_path, objective=two, confirm={"top": 2, "seeds": 1})
    assert "confirm picks the winner by its mean" in text and "job.yaml:" in text
    assert "tune.confirm.top" in _problems(tiny_models, tmp_path, confirm={"top": 0, "seeds": 1})


def _study(values: list[float]) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {LR: optuna.distributions.FloatDistribution(1e-9, 1.0)}
    for i, v in enumerate(values):
        attrs = {"feasible": True, "folder": f"tune/trials/{i:03d}"}
        study.add_trial(optuna.trial.create_trial(params={LR: 0.1 * (i + 1)}, distributions=dist, value=v,
                                                  user_attrs=attrs))  # fmt: skip
    return study


def test_the_best_mean_wins_not_the_luckiest_run(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#000 scored 0.9 once and 0.2, 0.3 with seeds 43, 44; #001 0.8 then 0.8, 0.7: #001 wins on the mean. A second
    confirm trains nothing; a new best trial is trained with the seeds alone, wins only once it has them, and then
    only on its mean, against the trials confirmed before it too."""
    spec = validate_spec(tune_job(tiny_models, tmp_path, confirm={"top": 2, "seeds": 2}))
    scripted = {(0, 43): 0.2, (0, 44): 0.3, (1, 43): 0.8, (1, 44): 0.7, (3, 43): 0.5, (3, 44): 0.6}
    trained: list[tuple[int, int]] = []

    def fake(spec: Any, rd: Any, n_rows: int, trial: Any, seed: int, metric: str) -> float:
        trained.append((trial.number, seed))
        return scripted[(trial.number, seed)]

    monkeypatch.setattr(confirm_mod, "train_seed", fake)
    study = _study([0.9, 0.8, 0.5])
    assert best_trial(study).number == 0  # before confirming: the best single run
    lines: list[str] = []
    confirm_mod.confirm(study, spec, RunDir(tmp_path / "run"), 6, lines.append)
    assert sorted(trained) == [(0, 43), (0, 44), (1, 43), (1, 44)]  # the top 2 only, each seed once
    assert best_trial(study).number == 1
    rows = summary_of(study, spec, "sqlite:///x", 3)["confirm"]
    assert [r["number"] for r in rows] == [1, 0]
    assert rows[0]["seeds"] == {"43": 0.8, "44": 0.7} and rows[0]["mean"] == pytest.approx(0.7667, abs=1e-4)
    assert rows[0]["best_run"] == "tune/trials/001"  # 0.8 ties seed 43's 0.8: the trial's own student
    assert "#001 has the best mean" in lines[-1] and "#000, the best single run (0.9), averages 0.4667" in lines[-1]
    note = tuning_notes({"metric": "accuracy", "confirm": rows})[0]
    assert "2 more training seed(s)" in note and note.endswith("Winner: #001.")

    trained.clear()
    confirm_mod.confirm(study, spec, RunDir(tmp_path / "run"), 6, lines.append)  # a re-run: all scored already
    assert trained == []
    dist = {LR: optuna.distributions.FloatDistribution(1e-9, 1.0)}
    study.add_trial(optuna.trial.create_trial(params={LR: 0.4}, distributions=dist, value=0.95,
                                              user_attrs={"feasible": True, "folder": "tune/trials/003"}))  # fmt: skip
    assert best_trial(study).number == 3  # the study went on: not confirmed yet, so the best single run
    confirm_mod.confirm(study, spec, RunDir(tmp_path / "run"), 6, lines.append)
    assert sorted(trained) == [(3, 43), (3, 44)]  # #000 and #001 keep their scores
    assert best_trial(study).number == 1  # out of the top 2 now, still confirmed: 0.767 > #003's 0.95, 0.5, 0.6
    assert [r["number"] for r in summary_of(study, spec, "sqlite:///x", 4)["confirm"]] == [1, 3, 0]


def test_a_tune_confirms_its_best_trial_with_another_seed(tiny_models: dict, tmp_path: Path) -> None:
    """Two trials of one recipe, the best confirmed with seed 43 in tune/trials/000-seed43/ (scored on validation,
    no checkpoints left); the best run is promoted and tested, and the job file says its seed; a re-run trains
    nothing again."""
    d = tune_job(tiny_models, tmp_path, trials=2, space={LR: {"choices": [GOOD]}}, confirm={"top": 1, "seeds": 1})
    job, rd = write_job(d, tmp_path / "job.yaml"), tmp_path / "run"
    res = run_cli("tune", str(job), "--run-dir", str(rd))
    assert res.returncode == 0, res.stderr
    assert "tune: confirming the best 1 trial(s) (#000) with 1 more seed(s): 1 runs" in res.stderr
    s = summary(rd)
    (row,) = s["confirm"]
    assert row["number"] == s["best"]["number"] == 0 and set(row["seeds"]) == {"43"}
    folder = rd / "tune" / "trials" / "000-seed43"
    ran = yaml_of(folder)["hyperparameters"]
    assert ran["seed"] == 43 and ran["learning_rate"] == GOOD
    results = json.loads((folder / "eval" / "results.json").read_text())
    assert results["split"] == "validation" and not (folder / "checkpoints").exists()
    assert row["seeds"]["43"] == next(m for m in results["models"] if m["role"] == "distilled")["accuracy"]
    # the student promoted is the recipe's best run on validation: the trial's own unless seed 43 beat it
    best_run = "tune/trials/000" if row["value"] >= row["seeds"]["43"] else "tune/trials/000-seed43"
    assert row["best_run"] == best_run and f"its run {best_run} (" in res.stderr
    assert (rd / "student" / "model.safetensors").read_bytes() == (
        rd / best_run / "student" / "model.safetensors"
    ).read_bytes()
    assert yaml_of(rd)["hyperparameters"]["seed"] == (42 if best_run.endswith("000") else 43)
    assert "Confirmed with 1 more training seed(s)" in (rd / "report" / "report.md").read_text()
    trained = RunDir(folder).stage("train")["finished"]
    again = run_cli("tune", str(job), "--run-dir", str(rd))
    assert again.returncode == 0, again.stderr
    assert "confirming" not in again.stderr and RunDir(folder).stage("train")["finished"] == trained


def yaml_of(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "job.yaml").read_text())

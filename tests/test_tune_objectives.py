"""Two objectives (the task's metric and a measure): the spec, the multi-objective study, the Pareto front and the
winner (the front's best by the metric among the trials meeting the constraints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_tune import BAD, GOOD, LR, summary, tune_job, write_job

from potstill.config import load_spec, validate_spec
from potstill.errors import ConfigError
from potstill.tune import run_tune
from potstill.tune.pareto import best_on_front, pareto_front
from potstill.tune.summary import best_trial, front

TWO = {"metrics": ["accuracy", "latency_ms_p50"]}


def _problems(tiny_models: dict, tmp_path: Path, **tune: Any) -> tuple[str, list[str]]:
    path = write_job(tune_job(tiny_models, tmp_path, **tune), tmp_path / "job.yaml")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    return str(err.value), path.read_text().splitlines()


def test_two_objectives_in_the_spec(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(tiny_models, tmp_path, objective=TWO)
    del d["tune"]["pruner"]
    spec = validate_spec(d)
    assert spec.tune is not None
    assert spec.tune.objective.objectives("math") == [("accuracy", "maximize"), ("latency_ms_p50", "minimize")]
    assert spec.tune.pruner.kind == "none"  # no pruner named: none (Optuna does not prune two objectives)
    assert validate_spec(yaml.safe_load(yaml.safe_dump(spec.public_dict()))).tune == spec.tune  # round trip

    # a pruner named with two objectives is an error on its line
    msg, lines = _problems(tiny_models, tmp_path, objective=TWO, pruner="median")
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("  pruner:"))
    assert f"job.yaml:{line}: tune.pruner: median cannot stop trials of a two-objective study" in msg

    msg, _ = _problems(
        tiny_models,
        tmp_path,
        objective={"metrics": ["accuracy", "latency_ms_p90"], "direction": "minimize", "metric": "accuracy"},
    )
    assert "'latency_ms_p90' is not a measure; did you mean" in msg
    assert "give metric (one objective) or metrics (two), not both" in msg
    assert "give directions: [..., ...], not direction" in msg
    msg, _ = _problems(tiny_models, tmp_path, objective={"metrics": ["latency_ms_p50", "accuracy"]})
    assert "metrics[0]: 'latency_ms_p50' is not a task metric" in msg
    assert "metrics[1]: 'accuracy' is not a measure" in msg
    msg, _ = _problems(tiny_models, tmp_path, objective={"metrics": ["accuracy"], "directions": ["maximize"]})
    assert "names two objectives" in msg
    msg, _ = _problems(tiny_models, tmp_path, objective={"directions": ["maximize", "minimize"]})
    assert "directions go with metrics" in msg
    msg, _ = _problems(tiny_models, tmp_path, objective={**TWO, "directions": ["maximize"]})
    assert "directions needs one per metric (2), got 1" in msg
    msg, _ = _problems(tiny_models, tmp_path, objective={"metrics": ["bleu", "parameters"]})
    assert "math runs do not measure 'bleu'" in msg


def _study(rows: list[tuple[float, float, bool]]) -> Any:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (acc, ms, ok) in enumerate(rows):
        study.add_trial(
            create_trial(
                params={"x": float(i)},
                distributions={"x": FloatDistribution(0, 100)},
                values=[acc, ms],
                user_attrs={"feasible": ok, "folder": f"tune/trials/{i:03d}"},
            )
        )
    return study


def test_the_winner_is_the_fronts_best_by_the_metric_among_feasible_trials() -> None:
    rows = [(0.9, 30.0, True), (0.9, 10.0, True), (0.5, 1.0, True), (0.95, 50.0, False), (0.4, 20.0, True)]
    study = _study(rows)
    assert [t.number for t in front(study)] == [1, 2]  # #000 is beaten by #001 (as good, faster); #003 infeasible
    assert best_trial(study).number == 1  # 0.95 is infeasible; 0.9 twice: the faster
    rows[1] = (0.9, 10.0, False)
    assert best_trial(_study(rows)).number == 0
    assert [t.number for t in front(_study(rows))] == [0, 2]


def test_a_two_objective_tune_reports_its_front_and_promotes_the_best(tiny_models: dict, tmp_path: Path) -> None:
    from potstill.demo.tiny import save_model, tiny_llama
    from potstill.teachers.hf import load_tokenizer

    tok = load_tokenizer(str(tiny_models["student"]))
    wide = save_model(tiny_llama(tok, hidden=32, layers=2, heads=2, seed=2), tok, tmp_path / "wide")
    small = str(tiny_models["student"])
    d = tune_job(
        tiny_models,
        tmp_path,
        space={LR: {"choices": [BAD, GOOD]}, "student.model": {"choices": [small, str(wide)]}},
        objective={**TWO, "constraints": ["parameters <= 20000"]},
        start_with=[{LR: BAD, "student.model": small}, {LR: GOOD, "student.model": small}],
        trials=3,
    )
    del d["tune"]["pruner"]
    d["tune"]["start_with"].append({LR: GOOD, "student.model": str(wide)})
    lines: list[str] = []
    rd = run_tune(validate_spec(d), tmp_path / "run", log=lines.append)
    s = summary(rd.root)
    assert s["objectives"] == [
        {"name": "accuracy", "direction": "maximize"},
        {"name": "latency_ms_p50", "direction": "minimize"},
    ]
    trials = s["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3  # never pruned
    for t in trials:
        assert t["values"] == [t["value"], t["latency_ms_p50"]] and t["last_report"] is None
    assert trials[2]["feasible"] is False  # the wide student is over the size limit
    ok = [t for t in trials if t["feasible"]]
    points = [t["values"] for t in ok]
    assert s["front"] == [ok[i]["number"] for i in pareto_front(points, ("max", "min"))]
    assert s["best"]["number"] == ok[best_on_front(points, ("max", "min"))]["number"]
    assert any(f"wins of the Pareto front (accuracy {s['best']['value']:.3g}" in line for line in lines)
    assert any("accuracy" in line and "latency_ms_p50" in line for line in lines if line.startswith("tune 1/3"))

    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{rd.root / 'tune' / 'study.sqlite'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    promoted = yaml.safe_load((rd.root / "job.yaml").read_text())["student"]["model"]
    assert promoted == s["best"]["params"]["student.model"]
    html = (rd.root / "report" / "report.html").read_text()
    assert 'data-plot="tune_latency"' in html and "(front)" in html
    assert json.loads((rd.root / "eval" / "results.json").read_text())["split"] == "test"

    # the same study with one objective is another study: refused, not mixed
    d["tune"]["objective"] = {"constraints": ["parameters <= 20000"]}
    with pytest.raises(Exception, match="begun with other teacher data, settings or objective"):
        run_tune(validate_spec(d), tmp_path / "run")

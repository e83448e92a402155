"""The report's Tuning plots: the data behind each (Pareto fronts, the best-so-far line, importances) computed on
hand-made points, and the plots embedded in the report built from a hand-written tune/summary.json."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from test_report import Parsed, png_size, synthetic_run

from potstill.report.build import build_report
from potstill.report.tuning import history, pareto
from potstill.tune.pareto import best_on_front, dominates, pareto_front
from potstill.tune.summary import importances


# --------------------------------------------------------------------------------------------- Pareto fronts
def test_pareto_front_on_hand_made_points() -> None:
    # (accuracy to maximise, latency to minimise)
    pts = [(0.90, 12.0), (0.80, 5.0), (0.70, 9.0), (0.90, 15.0), (0.60, 4.0), (0.80, 5.0), (0.95, 30.0)]
    assert pareto_front(pts, ("max", "min")) == [0, 1, 4, 5, 6]  # 2 is beaten by 1; 3 by 0; equal points both stay
    assert pareto_front(pts, ("min", "max")) == [2, 3, 4, 6]  # other senses, another front
    assert pareto_front([], ("max", "min")) == []
    assert pareto_front([(1.0, 1.0)], ("max", "min")) == [0]
    assert dominates((0.9, 10.0), (0.8, 10.0), ("max", "min"))
    assert not dominates((0.9, 10.0), (0.9, 10.0), ("max", "min"))  # equal: neither dominates
    assert not dominates((0.9, 12.0), (0.8, 10.0), ("max", "min"))  # better and worse: a trade-off
    with pytest.raises(ValueError, match="'max' or 'min'"):
        pareto_front(pts, ("up", "min"))


def test_best_on_front_takes_the_first_value_then_the_second() -> None:
    pts = [(0.90, 12.0), (0.95, 30.0), (0.95, 20.0), (0.80, 5.0)]
    assert best_on_front(pts, ("max", "min")) == 2  # 0.95 twice: the faster one
    assert best_on_front(pts, ("min", "min")) == 3
    assert best_on_front([], ("max", "min")) is None
    assert best_on_front([(0.5, 1.0), (0.5, 1.0)], ("max", "min")) == 0  # the earlier of equals


# --------------------------------------------------------------------------------------------- plot data
def trial(number: int, state: str, value: float | None, **kw: Any) -> dict[str, Any]:
    row = {"number": number, "state": state, "params": {"hyperparameters.learning_rate": 0.01 * (number + 1)}}
    row.update(value=value, last_report=kw.pop("last_report", None), feasible=kw.pop("feasible", True))
    row.update(latency_ms_p50=kw.pop("latency", None), parameters=kw.pop("parameters", None), pruned_at_pct=None)
    row.update(train_seconds=1.0, seconds=2.0, folder=f"tune/trials/{number:03d}", host="h", retry_of=None, error=None)
    return row


def hand_made_summary() -> dict[str, Any]:
    trials = [
        trial(0, "complete", 0.50, latency=10.0, parameters=1000),
        trial(1, "pruned", None, last_report=0.20),
        trial(2, "complete", 0.80, latency=20.0, parameters=4000, feasible=False),  # best value, but infeasible
        trial(3, "fail", None),
        trial(4, "complete", 0.70, latency=8.0, parameters=2000),  # beats #000 on both
        trial(5, "complete", 0.60, latency=30.0, parameters=500),
    ]
    return {
        "study": "s",
        "metric": "accuracy",
        "direction": "maximize",
        "target_trials": 6,
        "finished": 5,
        "complete": 4,
        "pruned": 1,
        "failed": 1,
        "trials": trials,
        "best": {"number": 4, "params": trials[4]["params"], "value": 0.7, "folder": "tune/trials/004"},
        "importances": {"values": {"hyperparameters.learning_rate": 0.8, "student.lora.r": 0.2}},
    }


def test_history_marks_pruned_trials_and_keeps_the_best_feasible_so_far() -> None:
    points, best = history(hand_made_summary())
    assert [(p["number"], p["value"], p["state"]) for p in points] == [
        (0, 0.5, "complete"),
        (1, 0.2, "pruned"),  # its last report
        (2, 0.8, "complete"),
        (4, 0.7, "complete"),
        (5, 0.6, "complete"),
    ]
    assert best == [(0, 0.5), (1, 0.5), (2, 0.5), (4, 0.7), (5, 0.7)]  # #002 is infeasible: not a best
    s = hand_made_summary()
    s["direction"] = "minimize"
    assert history(s)[1] == [(0, 0.5), (1, 0.5), (2, 0.5), (4, 0.5), (5, 0.5)]


def test_pareto_data_for_latency_and_parameters() -> None:
    s = hand_made_summary()
    lat = pareto(s, "latency_ms_p50")
    assert lat is not None
    assert [p["number"] for p in lat["points"]] == [0, 2, 4, 5]
    # by latency: #004 (8 ms, 0.7) and #002 (20 ms, 0.8) are the front; #000 and #005 are beaten by #004
    assert [lat["points"][i]["number"] for i in lat["front"]] == [4, 2]
    assert lat["points"][lat["winner"]]["number"] == 4
    size = pareto(s, "parameters")
    assert size is not None
    assert [size["points"][i]["number"] for i in size["front"]] == [5, 4, 2]  # 500, 2000, 4000 parameters
    s["trials"] = s["trials"][:2]
    assert pareto(s, "parameters") is None  # one complete trial: nothing to trade off


# --------------------------------------------------------------------------------------------- the report
def _tuned_run(root: Path, summary: dict[str, Any]) -> Parsed:
    synthetic_run(root)
    (root / "tune").mkdir()
    (root / "tune" / "summary.json").write_text(json.dumps(summary))
    out = build_report(root)
    assert out["tuning_plots"] == [
        n for n in ("tune_history", "tune_latency", "tune_parameters", "tune_importances") if n in out["tuning_plots"]
    ]
    return Parsed((root / "report" / "report.html").read_text())


def test_report_embeds_the_tuning_plots_in_its_tuning_section(tmp_path: Path) -> None:
    page = _tuned_run(tmp_path, hand_made_summary())
    html = (tmp_path / "report" / "report.html").read_text()
    tuning = {"tune_history", "tune_latency", "tune_parameters", "tune_importances"}
    assert tuning <= {i["data-plot"] for i in page.imgs}
    section = html[html.index('<h2 id="tuning">') : html.index('<h2 id="stages">')]
    for name in tuning:
        assert f'data-plot="{name}"' in section  # in the Tuning section, not among the run's plots
        img = next(i for i in page.imgs if i["data-plot"] == name)
        data = base64.b64decode((img["src"] or "").split(",", 1)[1])
        assert png_size(data)[0] >= 600
        assert data == (tmp_path / "report" / f"{name}.png").read_bytes()
    md = (tmp_path / "report" / "report.md").read_text()
    tune_md = md[md.index("## Tuning") : md.index("## Stages")]
    assert all(f"]({name}.png)" in tune_md for name in tuning)


def test_importances_that_could_not_be_computed_are_a_sentence(tmp_path: Path) -> None:
    s = hand_made_summary()
    s["importances"] = {"note": "they need at least 2 complete trials (1 so far)."}
    page = _tuned_run(tmp_path, s)
    assert "tune_importances" not in {i["data-plot"] for i in page.imgs}
    assert "tune_history" in {i["data-plot"] for i in page.imgs}
    note = "Parameter importances: they need at least 2 complete trials (1 so far)."
    assert note in (tmp_path / "report" / "report.html").read_text()
    assert note in (tmp_path / "report" / "report.md").read_text()


# --------------------------------------------------------------------------------------------- importances
def _study(values: list[tuple[float, str, float | None]]) -> Any:
    """An in-memory study; each row (learning rate, rank choice, value or None for pruned)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {"lr": FloatDistribution(1e-4, 1.0, log=True), "r": CategoricalDistribution(["8", "16"])}
    for lr, r, v in values:
        state = TrialState.COMPLETE if v is not None else TrialState.PRUNED
        study.add_trial(create_trial(params={"lr": lr, "r": r}, distributions=dists, value=v, state=state))
    return study


def test_importances_need_two_complete_trials_with_varying_settings() -> None:
    assert importances(_study([])) == {"note": "they need at least 2 complete trials (0 so far)."}
    assert "at least 2 complete trials (1 so far)" in importances(_study([(0.1, "8", 0.5), (0.2, "8", None)]))["note"]
    same = importances(_study([(0.1, "8", 0.5), (0.1, "8", 0.6)]))
    assert same == {"note": "every complete trial had the same settings, so none can be told apart."}
    # the learning rate decides the value; the rank does not
    rows = [(10 ** (-4 + i / 5), "8" if i % 2 else "16", i / 20) for i in range(20)]
    got = importances(_study(rows))
    assert set(got["values"]) == {"lr", "r"} and got["values"]["lr"] > got["values"]["r"]
    assert sum(got["values"].values()) == pytest.approx(1.0, abs=1e-3)
    only_lr = importances(_study([(0.1, "8", 0.5), (0.3, "8", 0.6), (0.01, "8", 0.2)]))  # the rank never varied
    assert set(only_lr.get("values", {})) <= {"lr"}

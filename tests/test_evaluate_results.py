"""The evaluate stage on a real tiny run: results.json follows its documented schema and agrees with the
per-row predictions it was computed from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import job_dict

from potstill import ConfigError
from potstill.config import validate_spec
from potstill.evaluate.metrics import task_metrics
from potstill.run_dir import read_jsonl

MODEL_KEYS = {
    "name": str,
    "role": str,
    "kind": str,
    "model": str,
    "device": str,
    "dtype": str,
    "parameters": int,
    "size_on_disk_mb": float,
    "accuracy": float,
    "metrics": dict,
    "intervals": dict,
    "n_scored": int,
    "latency": dict,
    "throughput": dict,
    "memory": dict,
}


def test_results_json_schema(tiny_run: Path) -> None:
    res = json.loads((tiny_run / "eval" / "results.json").read_text())
    assert res["version"] == 2
    for key, typ in {"split": str, "rows": int, "task_type": str, "scored_against": str, "confidence": float,
                     "bootstrap_samples": int, "max_new_tokens": int, "batch_size": int, "models": list,
                     "comparison": dict}.items():  # fmt: skip
        assert isinstance(res[key], typ), key
    assert (res["split"], res["rows"], res["scored_against"]) == ("test", 6, "reference")
    assert [m["name"] for m in res["models"]] == ["teacher", "baseline", "distilled", "gold-only"]
    assert [m["role"] for m in res["models"]] == ["teacher", "baseline", "distilled", "extra"]
    for m in res["models"]:
        for key, typ in MODEL_KEYS.items():
            assert isinstance(m[key], typ), (m["name"], key)
        assert m["kind"] == "local" and m["device"].split(":")[0] in ("cpu", "cuda", "mps")
        assert m["parameters"] > 0 and m["size_on_disk_mb"] > 0
        lat = m["latency"]
        assert lat["n"] == 2 == len(lat["samples_ms"]) and 0 < lat["p50_ms"] <= lat["p95_ms"]
        assert m["throughput"]["batch_size"] == 8 and m["throughput"]["answers"] == 6
        assert m["throughput"]["answers_per_s"] > 0
        assert m["memory"]["peak_tensor_mb"] >= m["memory"]["weights_mb"] > 0 and m["memory"]["rss_mb"] > 0
        for name, ci in m["intervals"].items():
            assert 0 <= ci["lo"] <= ci["hi"] <= (100 if name in ("bleu", "chrf") else 1), (m["name"], name)
            assert ci["method"] == "wilson" or ci["method"].startswith("bootstrap")
        assert m["intervals"]["accuracy"]["method"] == "wilson"
        assert m["intervals"]["accuracy"]["lo"] <= m["accuracy"] <= m["intervals"]["accuracy"]["hi"]
        assert (m["agreement_with_teacher"] is None) == (m["name"] == "teacher")
    teacher, baseline, distilled, extra = res["models"]
    assert teacher["parameters"] > distilled["parameters"] == baseline["parameters"] == extra["parameters"]
    c = res["comparison"]
    assert set(c["by_model"]) == {"baseline", "distilled", "gold-only"}
    assert c["gain_over_baseline"] == pytest.approx(distilled["accuracy"] - baseline["accuracy"])
    assert c["parameter_ratio"] == pytest.approx(distilled["parameters"] / teacher["parameters"])
    assert c["speedup_x"] == pytest.approx(teacher["latency"]["p50_ms"] / distilled["latency"]["p50_ms"])
    assert c["memory_reduction_pct"] == pytest.approx(
        100 * (1 - distilled["memory"]["peak_tensor_mb"] / teacher["memory"]["peak_tensor_mb"])
    )


def test_predictions_agree_with_results(tiny_run: Path) -> None:
    res = json.loads((tiny_run / "eval" / "results.json").read_text())
    test_rows = list(read_jsonl(Path(_job(tiny_run)["test"])))
    for m in res["models"]:
        preds = list(read_jsonl(tiny_run / "eval" / "predictions" / f"{m['name']}.jsonl"))
        assert len(preds) == res["rows"]
        for p, row in zip(preds, test_rows, strict=True):
            assert set(p) == {"id", "prompt", "output", "parsed", "reference", "correct"}
            assert p["prompt"] == row["messages"][0]["content"]
            assert p["reference"] == row["messages"][-1]["content"]
        acc = sum(p["correct"] for p in preds) / len(preds)
        assert m["accuracy"] == pytest.approx(acc)
        again = task_metrics(
            res["task_type"], [p["output"] for p in preds], [p["parsed"] for p in preds],
            [p["reference"] for p in preds], [p["correct"] for p in preds],
        )  # fmt: skip
        assert m["metrics"] == pytest.approx(again)


def _job(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "job.yaml").read_text())["data"]


def test_extra_model_names_are_checked(tiny_models: dict, tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path, evaluation={"models": [{"name": "distilled", "model": "x"}]})
    with pytest.raises(ConfigError, match=r"evaluation\.models\.0\.name: 'distilled' is taken"):
        validate_spec(d)
    two = [{"name": "a", "model": "x"}, {"name": "a", "model": "y"}]
    with pytest.raises(ConfigError, match="two extra models are named 'a'"):
        validate_spec(job_dict(tiny_models, tmp_path, evaluation={"models": two}))
    with pytest.raises(ConfigError, match="unknown field 'modle'"):
        validate_spec(job_dict(tiny_models, tmp_path, evaluation={"models": [{"name": "a", "modle": "x"}]}))


def test_nothing_to_score_is_refused_before_any_model_loads(tiny_models: dict, tmp_path: Path) -> None:
    from conftest import write_jsonl

    from potstill import EvaluationError
    from potstill.evaluate.run import run_evaluate
    from potstill.run_dir import RunDir

    d = job_dict(tiny_models, tmp_path, evaluation={"teacher": False})
    d["data"]["test"] = str(write_jsonl(tmp_path / "unlabelled.jsonl", [{"prompt": "What is 1 plus 2?"}]))
    with pytest.raises(EvaluationError, match="no row has a reference answer and the teacher is not evaluated"):
        run_evaluate(validate_spec(d), RunDir(tmp_path / "run"))
    assert not (tmp_path / "run" / "eval").exists()

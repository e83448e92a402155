"""A re-run is the run you asked for: a changed input or --force trains from the untouched student; only a crashed
attempt with the same inputs resumes, from its newest readable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import job_dict, run_cli
from safetensors.torch import load_file

from potstill.config import validate_spec
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir
from potstill.train.checkpoint import checkpoints, key_of, save_checkpoint


def _prepared(tiny_models: dict, tmp_path: Path, **over: object) -> tuple[dict, Path]:
    d = job_dict(tiny_models, tmp_path / "data", **over)
    rd = tmp_path / "run"
    run_pipeline(validate_spec(d), rd, only=["generate", "validate"])
    return d, rd


def _train(d: dict, rd: Path, **hp: object) -> dict:
    d = {**d, "hyperparameters": {**d["hyperparameters"], **hp}}
    run_pipeline(validate_spec(d), rd, only=["train"])
    return json.loads((rd / "student" / "training_summary.json").read_text())


def _weights(rd: Path) -> dict[str, torch.Tensor]:
    return load_file(rd / "student" / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _attempt_steps(rd: Path) -> list[int]:
    """Steps logged since the train stage last started."""
    events = RunDir(rd).events("train")
    last = max(i for i, e in enumerate(events) if e["event"] == "stage_start")
    return [e["step"] for e in events[last:] if e["event"] == "step"]


def _crash(rd: Path) -> None:
    """What kill -9 during training leaves: the stage marked running, its checkpoints on disk."""
    state = json.loads((rd / "state.json").read_text())
    state["stages"]["train"]["status"] = "running"
    (rd / "state.json").write_text(json.dumps(state))


def test_changed_learning_rate_trains_again_from_the_untouched_student(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    first = _train(d, rd)
    w1 = _weights(rd)
    second = _train(d, rd, learning_rate=5e-3)
    assert second["resumed_from"] is None and second["steps"] == first["steps"]
    assert _attempt_steps(rd) == list(range(1, first["steps"] + 1))  # a new step 1 in logs/events.jsonl
    assert not _same(w1, _weights(rd))
    # and it is exactly the run that a fresh folder gives with that learning rate
    d2, fresh = _prepared(tiny_models, tmp_path / "fresh")
    _train(d2, fresh, learning_rate=5e-3)
    assert _same(_weights(rd), _weights(fresh))
    # only the new training's checkpoints are left
    key = RunDir(rd).attempt_key("train")
    assert {key_of(p) for p in (rd / "checkpoints").iterdir() if not p.name.startswith(".")} == {key}


def test_crashed_attempt_resumes_and_a_changed_one_does_not(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    first = _train(d, rd)
    _crash(rd)
    again = _train(d, rd)  # same inputs: continue the attempt from its last checkpoint (the end here)
    assert again["resumed_from"] == first["steps"] and _attempt_steps(rd) == []
    _crash(rd)
    changed = _train(d, rd, num_epochs=3)
    assert changed["resumed_from"] is None and _attempt_steps(rd)[0] == 1


def test_force_trains_again(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    first = _train(d, rd)
    (tmp_path / "job.yaml").write_text(json.dumps(d))
    res = run_cli("train", str(rd), "--force")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((rd / "student" / "training_summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == first["steps"]
    assert _attempt_steps(rd) == list(range(1, first["steps"] + 1))
    assert not RunDir(rd).events("train", "resume")


def test_lora_on_off_and_another_student_retrain_cleanly(tiny_models: dict, tmp_path: Path) -> None:
    from potstill.demo.tiny import save_model, tiny_llama
    from potstill.teachers.hf import load_tokenizer

    d, rd = _prepared(tiny_models, tmp_path)
    _train(d, rd)
    lora = {**d, "student": {**d["student"], "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}
    on = _train(lora, rd, learning_rate=1e-2)
    assert on["resumed_from"] is None and (rd / "student" / "adapter" / "adapter_model.safetensors").exists()
    off = _train(d, rd)
    assert off["resumed_from"] is None
    assert not (rd / "student" / "adapter").exists()  # student/ was replaced whole, not file by file

    tok = load_tokenizer(str(tiny_models["student"]))
    wider = save_model(tiny_llama(tok, hidden=24, layers=1, heads=2, seed=3), tok, tmp_path / "wider")
    other = {**d, "student": {"model": str(wider)}}
    res = _train(other, rd)
    assert res["resumed_from"] is None
    assert json.loads((rd / "student" / "config.json").read_text())["hidden_size"] == 24


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    first = _train(d, rd, save_every=2)
    kept = checkpoints(rd / "checkpoints", RunDir(rd).attempt_key("train"))
    assert len(kept) == 2
    newest, previous = kept
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 3])  # torn by a crash
    _crash(rd)
    again = _train(d, rd, save_every=2)
    prev_step = int(previous.name.split("-")[1])
    assert again["resumed_from"] == prev_step and again["steps"] == first["steps"]
    bad = RunDir(rd).events("train", "checkpoint_unreadable")
    assert [e["checkpoint"] for e in bad] == [newest.name]
    assert _attempt_steps(rd) == list(range(prev_step + 1, first["steps"] + 1))


def test_stale_checkpoints_go_only_after_the_new_training_saved_one(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoints"
    for step in (40, 50):
        save_checkpoint(ck, step, {"step": step}, keep=2, key="old")
    assert [key_of(p) for p in checkpoints(ck, "old")] == ["old", "old"]
    save_checkpoint(ck, 10, {"step": 10}, keep=2, key="new")  # fewer steps than the old ones: must survive
    assert not checkpoints(ck, "old")
    assert [p.name for p in checkpoints(ck, "new")] == ["step-0000010"]
    save_checkpoint(ck, 20, {"step": 20}, keep=2, key="new")
    save_checkpoint(ck, 30, {"step": 30}, keep=2, key="new")
    assert [p.name for p in checkpoints(ck, "new")] == ["step-0000030", "step-0000020"]


def test_checkpoint_file_and_folders_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import potstill.run_dir as run_dir
    import potstill.train.checkpoint as checkpoint

    synced: list[str] = []
    real = run_dir.fsync_dir
    monkeypatch.setattr(checkpoint, "fsync_dir", lambda p: (synced.append(Path(p).name), real(p)))
    monkeypatch.setattr(run_dir, "fsync_dir", lambda p: (synced.append(Path(p).name), real(p)))
    save_checkpoint(tmp_path / "ck", 5, {"step": 5}, keep=2, key="k")
    assert synced == [".tmp-step-0000005", "ck"]  # the new folder's entries, then the rename in its parent


def test_demo_and_quick_demo_never_share_a_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import potstill.demo as demo

    assert demo.default_run_dir(quick=True) != demo.default_run_dir(quick=False)
    monkeypatch.setitem(demo.SIZES, False, {"train": 48, "validation": 16, "test": 16, "steps": 4})
    monkeypatch.setitem(demo.SIZES, True, {"train": 16, "validation": 8, "test": 8, "steps": 2})
    rd = tmp_path / "demo"  # one folder for both, the harder case
    steps = {}
    for quick in (True, False, True):
        demo.run_demo(rd, quick=quick)
        summary = json.loads((rd / "student" / "training_summary.json").read_text())
        rows = RunDir(rd).stage("train")["counts"]["rows"]
        steps[quick] = steps.get(quick, summary["steps"])
        assert summary["resumed_from"] is None and summary["steps"] == steps[quick]
        assert (8 < rows <= 16) if quick else (16 < rows <= 48)
    assert steps[True] == 2 and steps[False] == 4  # each size's own step count

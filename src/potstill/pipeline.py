"""The pipeline: a list of stages, each skipped when already done with unchanged inputs.

    run_pipeline(spec, run_dir)                     # every stage; resume where the last run stopped
    run_pipeline(spec, run_dir, only=["train"])     # one stage (the CLI's `potstill train RUN_DIR`)

A stage's fingerprint hashes the previous stage's fingerprint with the parts of the spec (and input files) it
reads, so a changed input re-runs that stage and every stage after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .config import JobSpec
from .data.jsonl import check_file
from .errors import PotstillError
from .run_dir import STAGES, RunDir, file_digest, fingerprint

StageFn = Callable[[JobSpec, RunDir], dict[str, Any]]


def _stage_fn(name: str) -> StageFn:
    match name:
        case "generate":
            from .teachers.generate import run_generate as fn
        case "validate":
            from .data.filters import run_validate as fn
        case "train":
            from .train.stage import run_train as fn
        case "evaluate":
            from .evaluate.run import run_evaluate as fn
        case "report":
            from .report.build import run_report as fn
        case _:
            raise ValueError(name)
    return fn


def _stage_inputs(name: str, spec: JobSpec) -> Any:
    d = spec.public_dict()
    match name:
        case "generate":
            inputs = [
                d["task_type"],
                d.get("teacher"),
                d.get("prompts"),
                d["generation"],
                spec.sampling_temperature,
                file_digest(spec.data.training),
                file_digest(spec.data.validation),
            ]
            if spec.teachers is not None:  # several teachers (only then: one teacher's fingerprint stays as it was)
                inputs += [d["teachers"], d.get("teaching")]
            return inputs
        case "validate":
            return [d["filters"]]
        case "train":
            return [d["student"], d["hyperparameters"]]
        case "evaluate":
            return [d["evaluation"], file_digest(spec.data.test)]
        case _:
            return []


def fingerprints(spec: JobSpec) -> dict[str, str]:
    out, prev = {}, ""
    for name in STAGES:
        prev = fingerprint(prev, name, _stage_inputs(name, spec))
        out[name] = prev
    return out


def check_inputs(spec: JobSpec) -> dict[str, int]:
    """Read every input file once before anything is written; DataError on the first bad file."""
    tpl = spec.prompts.template
    counts = {
        "train": check_file(spec.data.training, "train", tpl),
        "validation": check_file(spec.data.validation, "validation", tpl),
    }
    if spec.data.test is not None:
        counts["test"] = check_file(spec.data.test, "test", tpl)
    return counts


_HELD: set[Path] = set()  # run folders this process holds the lock of (run_lock nests)


@contextlib.contextmanager
def run_lock(rd: RunDir) -> Iterator[None]:
    """Hold the run folder's lock (``.lock``, flock) for the block; another process gets a clear error at once.
    Re-entrant within a process (the demo holds it around several pipeline calls)."""
    key = rd.root.resolve()
    if not rd.writer or key in _HELD:  # rank > 0 writes nothing; a nested call: this process holds it
        yield
        return
    rd.root.mkdir(parents=True, exist_ok=True)
    with open(rd.root / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PotstillError(f"{rd.root} is in use by another potstill process; wait for it or stop it") from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)


def run_pipeline(
    spec: JobSpec,
    run_dir: str | os.PathLike[str],
    only: list[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunDir:
    """Run the stages (all, or ``only``) in order under the folder's lock; nothing is written before it is held."""
    log = log or (lambda msg: None)
    check_inputs(spec)
    rd = RunDir(Path(run_dir))
    if spec.hyperparameters.on_policy is not None and (only is None or "train" in only):
        trained = not force and rd.is_done("train", fingerprints(spec)["train"])
        if not trained:  # a teacher that cannot score is an error before hours of generation
            from .train.stage import check_on_policy_teacher

            check_on_policy_teacher(spec)
    with run_lock(rd):
        rd.create()
        rd.write_text(rd.job_yaml, yaml.safe_dump(spec.public_dict(), sort_keys=False))
        _run_stages(spec, rd, only, force, log)
    return rd


def _run_stages(spec: JobSpec, rd: RunDir, only: list[str] | None, force: bool, log: Callable[[str], None]) -> None:
    fps = fingerprints(spec)
    for name in STAGES:
        if only is not None and name not in only:
            continue
        if only is not None:
            missing = [p for p in STAGES[: STAGES.index(name)] if not rd.is_done(p, fps[p])]
            if missing:
                raise PotstillError(
                    f"stage {name!r} needs {missing[0]!r} first: run `potstill {missing[0]} {rd.root}` "
                    f"or `potstill run {rd.job_yaml} --run-dir {rd.root}`"
                )
        if not force and rd.is_done(name, fps[name]):
            log(f"{name}: done earlier, inputs unchanged (skipped)")
            continue
        rd.mark_running(name, fps[name], fresh=force)
        rd.event(name, "stage_start")
        log(f"{name}: running")
        try:
            counts = _stage_fn(name)(spec, rd)
        except BaseException as exc:
            rd.mark_failed(name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            rd.event(name, "stage_failed", error=str(exc)[:500])
            raise
        rd.mark_done(name, fps[name], **counts)
        rd.event(name, "stage_done", **counts)
        later = STAGES[STAGES.index(name) + 1 :]
        stale = [n for n in later if rd.stage(n).get("status") == "done" and not rd.is_done(n, fps[n])]
        rd.invalidate(stale)

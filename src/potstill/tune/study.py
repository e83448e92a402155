"""The Optuna study of a tune: its storage, sampler and pruner, and what a re-run finds there.

    study = open_study(spec, rd, storage=None)   # runs/<name>/tune/study.sqlite, study named after the job
    finished(study)                              # complete + pruned trials: what counts toward tune.trials

Resume: the default storage lives in the run folder, whose lock this process holds, so a trial still RUNNING
there belongs to a process that died (kill -9, power loss): it is marked failed and its parameters are queued to
run again first. A shared ``--storage`` URL (several workers) relies on Optuna's heartbeats instead: a trial
whose worker stopped beating for ``GRACE_S`` is failed and queued again by the next worker that starts a trial.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from ..config import JobSpec
from ..errors import PotstillError
from ..run_dir import RunDir
from .space import study_fingerprint

HEARTBEAT_S = 30  # a running trial's heartbeat (shared storages)
GRACE_S = 120  # silence after which another worker fails it and queues it again
FINGERPRINT = "potstill_fingerprint"


def default_storage(rd: RunDir) -> str:
    return f"sqlite:///{(rd.root / 'tune' / 'study.sqlite').resolve()}"


def shown_url(url: str) -> str:
    """The storage URL without its password (summary.json and the console)."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def _sampler(spec: JobSpec, seed: int) -> Any:
    import optuna

    assert spec.tune is not None
    limits = spec.tune.objective.parsed()
    if not limits:
        return optuna.samplers.TPESampler(seed=seed)

    def constraints(trial: Any) -> list[float]:
        return list(trial.user_attrs.get("violations") or [0.0] * len(limits))  # a pruned trial: not measured

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constraints_func is marked experimental
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints)


def _pruner(spec: JobSpec) -> Any:
    import optuna

    assert spec.tune is not None
    p = spec.tune.pruner
    match p.kind:
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_pct)
        case "hyperband":  # steps are percentages of training: a tenth at least, all of it at most
            return optuna.pruners.HyperbandPruner(min_resource=10, max_resource=100)
        case _:
            return optuna.pruners.NopPruner()


def open_study(spec: JobSpec, rd: RunDir, storage: str | None) -> Any:
    """Create or continue the job's study; fail clearly when it was begun on other inputs."""
    import optuna

    assert spec.tune is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # potstill prints its own line per trial
    url = storage or default_storage(rd)
    if storage is None:
        Path(rd.root / "tune").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        backend = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    study = optuna.create_study(
        storage=backend,
        study_name=spec.name,
        direction=spec.tune.objective.direction,
        pruner=_pruner(spec),
        load_if_exists=True,
    )
    fp = study_fingerprint(spec)
    if study.user_attrs.get(FINGERPRINT, fp) != fp or study.direction.name.lower() != spec.tune.objective.direction:
        where = "remove runs/<name>/tune/ to start over" if storage is None else "use another --storage or job name"
        raise PotstillError(
            f"the study {spec.name!r} in {shown_url(url)} was begun with other teacher data, settings or objective; "
            f"its trials would not compare with new ones: {where}"
        )
    study.set_user_attr(FINGERPRINT, fp)
    study.sampler = _sampler(spec, spec.tune.seed + len(study.trials))  # a resumed run does not replay its draws
    if storage is None:
        rerun_orphans(study)
    queued = int(study.user_attrs.get("start_with_queued", 0))  # rows queued by an earlier run are not again
    for params in spec.tune.start_with[queued:]:
        study.enqueue_trial(params)
    study.set_user_attr("start_with_queued", max(queued, len(spec.tune.start_with)))
    return study


def rerun_orphans(study: Any) -> list[int]:
    """Fail every RUNNING trial (its process is gone) and queue its parameters to run again; their numbers."""
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in orphans:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
    return [t.number for t in orphans]


def finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

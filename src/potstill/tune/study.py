"""The Optuna study of a tune: its storage, sampler and pruner, and what a re-run finds there.

    study = open_study(spec, rd, storage=None)   # runs/<name>/tune/study.sqlite, study named after the job
    finished(study)                              # complete + pruned trials: what counts toward tune.trials

Resume: the default storage lives in the run folder, whose lock this process holds, so a trial still RUNNING
there belongs to a process that died (kill -9, power loss): it is marked failed and its parameters are queued to
run again first. A shared ``--storage`` URL (several workers) relies on Optuna's heartbeats instead: a trial
whose worker stopped beating for ``GRACE_S`` is failed and queued again by the next worker that starts a trial.

Several workers: ``CreationLock`` serialises "count the finished and running trials, then start the next one"
across the processes sharing a study (a PostgreSQL advisory lock; a file lock beside a SQLite file), so a study
ends with exactly ``tune.trials`` finished trials however many workers share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..config import JobSpec
from ..errors import PotstillError
from ..run_dir import RunDir
from .pruning import SHARES, noise_aware_median
from .space import study_fingerprint

HEARTBEAT_S = 30  # a running trial's heartbeat (shared storages)
GRACE_S = 120  # silence after which another worker fails it and queues it again
FINGERPRINT = "potstill_fingerprint"


def default_storage(rd: RunDir) -> str:
    return f"sqlite:///{(rd.root / 'tune' / 'study.sqlite').resolve()}"


def engine_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 picks psycopg (3) for a bare
    ``postgresql://``, while potstill's ``postgres`` extra installs psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme) and importlib.util.find_spec("psycopg") is None:
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


class CreationLock:
    """Held while a worker counts the study's trials and starts the next one, so that two workers never both
    start the last trial. PostgreSQL: a transaction-level advisory lock on the study's name, released when its
    transaction ends (a dead worker's lock goes with its connection); SQLite: a flock on ``<file>.lock`` (one
    machine); other storages: no lock. ``release`` may be called more than once."""

    def __init__(self, url: str, study_name: str) -> None:
        self.url, self.name = engine_url(url), study_name
        self._engine: Any = None
        self._conn: Any = None
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        if self.url.startswith("postgresql"):
            import sqlalchemy as sa
            from sqlalchemy.pool import NullPool

            if self._engine is None:
                self._engine = sa.create_engine(self.url, poolclass=NullPool)
            key = int.from_bytes(hashlib.sha256(f"potstill tune {self.name}".encode()).digest()[:8], "big", signed=True)
            self._conn = self._engine.connect()
            self._conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        elif self.url.startswith("sqlite:///") and self.url != "sqlite:///:memory:":
            path = Path(self.url.removeprefix("sqlite:///").split("?")[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(f"{path}.lock", "a")  # noqa: SIM115 (closed by release)
            fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.rollback()  # ends the transaction, and with it the lock
            conn.close()
        if self._file is not None:
            f, self._file = self._file, None
            f.close()  # drops the flock

    @contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


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
        case "median" if p.noise_margin and spec.tune.metric(spec.task_type) in SHARES:  # binomial noise
            return noise_aware_median(spec.tune.report_rows, p.startup_trials, p.warmup_pct)
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_pct)
        case "hyperband":  # steps are percentages of training: a tenth at least, all of it at most
            return optuna.pruners.HyperbandPruner(min_resource=10, max_resource=100)
        case _:
            return optuna.pruners.NopPruner()


def open_study(spec: JobSpec, rd: RunDir, storage: str | None, salt: int = 0) -> Any:
    """Create or continue the job's study; fail clearly when it was begun on other inputs. ``salt`` is added to
    the sampler's seed (each worker of --workers K samples its own draws)."""
    import optuna

    assert spec.tune is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # potstill prints its own line per trial
    url = storage or default_storage(rd)
    if storage is None:
        Path(rd.root / "tune").mkdir(parents=True, exist_ok=True)
    lock = CreationLock(url, spec.name)
    try:
        with lock.held():  # workers starting together create the tables, the study and its queue once
            return _open(spec, storage, url, salt)
    finally:
        lock.close()


def _open(spec: JobSpec, storage: str | None, url: str, salt: int) -> Any:
    import optuna

    assert spec.tune is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        backend = optuna.storages.RDBStorage(
            engine_url(url),
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,  # several writers
        )
    study = optuna.create_study(
        storage=backend,
        study_name=spec.name,
        directions=[d for _, d in spec.tune.objective.objectives(spec.task_type)],
        pruner=_pruner(spec),
        load_if_exists=True,
    )
    fp = study_fingerprint(spec)
    wanted = [d for _, d in spec.tune.objective.objectives(spec.task_type)]
    if study.user_attrs.get(FINGERPRINT, fp) != fp or [d.name.lower() for d in study.directions] != wanted:
        where = "remove runs/<name>/tune/ to start over" if storage is None else "use another --storage or job name"
        raise PotstillError(
            f"the study {spec.name!r} in {shown_url(url)} was begun with other teacher data, settings or objective; "
            f"its trials would not compare with new ones: {where}"
        )
    study.set_user_attr(FINGERPRINT, fp)
    study.sampler = _sampler(spec, spec.tune.seed + len(study.trials) + salt)  # a resumed run: no replayed draws
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


def finished_and_running(study: Any) -> tuple[int, int]:
    """Finished (complete + pruned) and running trials, from one read of the study: two reads would miss a trial
    that another worker finishes between them (counted neither finished nor running). A dead worker's running
    trials are failed and queued again first."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
        optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    return done, states.count(TrialState.RUNNING)

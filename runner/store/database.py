"""The results database: one session helper and small queries; every public method of Database is one transaction.

The tables are in runner/store/tables.py, the migrations in migrations.py, the engine in engine.py, the errors (each
with the next step) in errors.py.

SQLite (WAL, busy timeout) at `<root>/results.db` by default; any SQLAlchemy URL works.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    Retrying,
    retry,
    retry_if_exception,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

from runner.faults import DatabaseAway
from runner.store.engine import make_engine
from runner.store.errors import (
    DatabaseError,
    DatabaseUnavailable,
    LostJob,
    classified,
    connection_problem,
    server_name,
    worth_retrying,
)
from runner.store.migrations import MIGRATIONS
from runner.store.tables import (
    SCHEMA_VERSION,
    ArtifactModel,
    BaseModel,
    EpochMetricModel,
    ExperimentModel,
    FinalMetricModel,
    JobModel,
    NewTrial,
    RotationMetricModel,
    RungModel,
    SchemaVersionModel,
    StudySnapshot,
    TrialJobModel,
    TrialModel,
)

log = logging.getLogger("runner.store")


def transaction(method: Callable) -> Callable:
    """A public method of Database: one transaction, run again after a transient error for up to `retry_seconds`."""

    @functools.wraps(method)
    def run(self: "Database", *args: Any, **kwargs: Any) -> Any:
        return self.retrying(lambda: method(self, *args, **kwargs))
    return run


class Database:
    """The results database. Every public method is one transaction."""

    def __init__(self, url: str, create: bool = True, retry_seconds: float = 0.0, wait: bool = False):
        """`retry_seconds`: how long a transaction is retried through a transient outage before DatabaseAway.
        `wait`: retry the first connection too (workers the runner starts mid-run); without it a server that does
        not answer when a command starts is bad input, said at once."""
        self.url = url
        self.retry_seconds = retry_seconds
        self._away_since: float | None = None
        self.engine = make_engine(url, create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            self.retrying(lambda: self._check_schema(create)) if wait else self._check_schema(create)
        except (OperationalError, DatabaseUnavailable) as exc:  # the first connection: down, credentials, no database
            raise DatabaseError(connection_problem(url, getattr(exc, "__cause__", None) or exc)) from None

    def retrying(self, call: Callable[[], Any]) -> Any:
        """`call()`, again after each transient error with backoff, for up to `retry_seconds`; one log line when an
        outage starts and one when it ends. Past the bound: DatabaseAway, naming the server."""
        attempts = Retrying(retry=retry_if_exception(worth_retrying), reraise=True,
                            stop=stop_after_delay(self.retry_seconds), wait=wait_exponential(0.25, max=5),
                            before_sleep=self._outage)
        try:
            result = attempts(call)
        except (DatabaseUnavailable, DBAPIError) as exc:
            if not worth_retrying(exc):
                raise
            raise DatabaseAway(
                f"the database {server_name(self.url)} stayed unreachable for {self.retry_seconds:.0f} s "
                f"({_reason(exc)}); no job was failed for it: once it is back, rerun the same command "
                "(--db-retry-seconds sets how long to wait)") from None
        if self._away_since is not None:
            log.warning("database %s is back after %.0f s", server_name(self.url), time.monotonic() - self._away_since)
            self._away_since = None
        return result

    def _outage(self, state) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            log.warning("database %s unreachable (%s); retrying for up to %.0f s", server_name(self.url),
                        _reason(state.outcome.exception()), self.retry_seconds)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error; driver errors become DatabaseError."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except DBAPIError as exc:
            _rollback(session)
            problem = classified(self.url, exc)
            if problem is None:
                raise  # e.g. IntegrityError, which callers handle themselves
            raise problem from exc
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()

    def _check_schema(self, create: bool) -> None:
        inspector = inspect(self.engine)
        if not inspector.has_table("schema_versions"):
            # Some of our own tables and no version yet: another runner is creating this database right now (or a
            # creation was cut short); create_all adds only what is missing, so finishing it is safe.
            foreign = set(inspector.get_table_names()) - set(BaseModel.metadata.tables)
            if foreign:
                raise DatabaseError(f"{self.url} holds tables that are not a results database "
                                    f"({', '.join(sorted(foreign)[:5])}); use another --db")
            if not create:
                raise DatabaseError(f"{self.url} has no results yet; run a spec first: python -m runner SPEC")
            self._create_schema()
        version = self._schema_version()
        while version in MIGRATIONS and version < SCHEMA_VERSION:
            version = self._migrate(version)
        if version != SCHEMA_VERSION:
            newer = (version or 0) > SCHEMA_VERSION
            raise DatabaseError(
                f"{self.url} has schema version {version}; this runner reads version {SCHEMA_VERSION}. "
                + ("Upgrade the runner (pip install -U / git pull)." if newer
                   else "Export what you need with `python -m runner report`, then start a new database with --db.")
            )

    def _migrate(self, version: int) -> int:
        """Bring the schema from `version` to the next one in place; two runners migrating at once are harmless
        (each step adds only what is missing, and the version moves forward once)."""
        MIGRATIONS[version](self.engine)
        with self.session() as s:
            s.execute(update(SchemaVersionModel).where(SchemaVersionModel.version == version)
                      .values(version=version + 1))
        return self._schema_version()

    def _create_schema(self) -> None:
        try:
            BaseModel.metadata.create_all(self.engine)
            with self.session() as s:
                # A fixed id: of two runners creating the database at once, exactly one inserts the version.
                s.add(SchemaVersionModel(schema_version_id=1, version=SCHEMA_VERSION))
        except (OperationalError, IntegrityError, DatabaseError):
            # Another runner created the same tables at the same moment; it finishes the job, we read its result.
            if not inspect(self.engine).has_table("schema_versions"):
                raise

    @retry(retry=retry_if_result(lambda version: version is None), stop=stop_after_delay(30),
           wait=wait_fixed(0.2), retry_error_callback=lambda state: None)
    def _schema_version(self) -> int | None:
        """The stored schema version, waiting briefly while a racing runner is still creating the database."""
        with self.session() as s:
            return s.scalar(select(func.max(SchemaVersionModel.version)))

    # ---- experiments and jobs ------------------------------------------------------------------------------------

    # Two runners started together on a new experiment race to insert the same rows: the loser retries and then
    # finds the winner's rows.
    @transaction
    @retry(retry=retry_if_exception_type(IntegrityError), stop=stop_after_attempt(3), reraise=True)
    def sync_experiment(self, name: str, task: str, spec_path: str, spec_toml: str,
                        jobs: list[tuple[str, str, dict[str, Any]]]) -> tuple[int, int]:
        """Create the experiment if new and insert the jobs it does not have yet; return (experiment_id, added)."""
        with self.session() as s:
            experiment = s.scalar(select(ExperimentModel).where(ExperimentModel.name == name))
            if experiment is None:
                experiment = ExperimentModel(name=name, task=task, spec_path=spec_path, spec_toml=spec_toml)
                s.add(experiment)
                s.flush()
            elif experiment.task != task:
                raise DatabaseError(f"experiment {name!r} already exists with task {experiment.task!r}; "
                                    "rename [experiment].name or use another --db")
            else:
                experiment.spec_path, experiment.spec_toml = spec_path, spec_toml
            known = set(s.scalars(select(JobModel.key).where(JobModel.experiment_id == experiment.experiment_id)))
            added = 0
            for key, label, config in jobs:
                if key in known:
                    continue
                s.add(_new_job(experiment.experiment_id, key, label, config))
                added += 1
            return experiment.experiment_id, added

    @transaction
    def jobs(self, experiment_id: int, keys: list[str] | None = None) -> list[JobModel]:
        with self.session() as s:
            query = select(JobModel).where(JobModel.experiment_id == experiment_id).order_by(JobModel.job_id)
            rows = list(s.scalars(query))
        return [r for r in rows if keys is None or r.key in set(keys)]

    @transaction
    def requeue(self, experiment_id: int, keys: list[str], statuses: tuple[str, ...]) -> int:
        """Put jobs with one of `statuses` back in the queue (for --retry-failed and --force); their pruning decisions
        go with them, so the rerun decides afresh."""
        with self.session() as s:
            requeued = select(JobModel.job_id).where(
                JobModel.experiment_id == experiment_id, JobModel.key.in_(keys), JobModel.status.in_(statuses))
            s.execute(delete(RungModel).where(RungModel.job_id.in_(requeued)))
            result = s.execute(update(JobModel).where(
                JobModel.experiment_id == experiment_id, JobModel.key.in_(keys), JobModel.status.in_(statuses)
            ).values(status="queued", error=None, traceback=None))
            return result.rowcount

    @transaction
    def claim(self, experiment_id: int, keys: list[str], worker: str) -> JobModel | None:
        """Atomically take the next queued or interrupted job among `keys`; None when none is left.

        The conditional UPDATE succeeds for exactly one process even when several race for the same row.
        """
        claimable = ("queued", "interrupted")
        # A claim whose commit succeeded but whose answer was lost to a dropped connection leaves a running job that
        # no one heartbeats: after --stale-after any runner's reclaim gives it back, so nothing is stuck for good.
        with self.session() as s:
            candidates = list(s.scalars(select(JobModel.job_id).where(
                JobModel.experiment_id == experiment_id, JobModel.key.in_(keys), JobModel.status.in_(claimable)
            ).order_by(JobModel.job_id)))
        for job_id in candidates:
            with self.session() as s:
                result = s.execute(update(JobModel).where(
                    JobModel.job_id == job_id, JobModel.status.in_(claimable)
                ).values(status="running", worker=worker, attempts=JobModel.attempts + 1,
                         started_at=func.now(), heartbeat_at=func.now(), finished_at=None))
                if result.rowcount == 1:
                    return s.get(JobModel, job_id)
        return None

    @transaction
    def heartbeat(self, job_id: int, worker: str) -> None:
        """Say `worker` still runs the job (database clock); LostJob when it no longer holds it."""
        with self.session() as s:
            _hold(s, job_id, worker)

    @transaction
    def reclaim_stale(self, experiment_id: int, grace_seconds: float) -> list[str]:
        """Mark running jobs whose heartbeat (database clock) is older than the grace period as interrupted."""
        with self.session() as s:
            limit = _now(s) - timedelta(seconds=grace_seconds)
            stale = list(s.scalars(select(JobModel).where(
                JobModel.experiment_id == experiment_id, JobModel.status == "running", JobModel.heartbeat_at < limit
            )))
            for job in stale:
                job.status, job.error = "interrupted", f"worker {job.worker} stopped sending heartbeats"
            return [job.label for job in stale]

    @transaction
    def now(self) -> datetime:
        """The database's clock, which heartbeats are written with."""
        with self.session() as s:
            return _now(s)

    @transaction
    def running(self, experiment_id: int | None = None) -> list[tuple[str, JobModel]]:
        """(experiment name, job) for every running job, of one experiment or all."""
        with self.session() as s:
            query = (select(ExperimentModel.name, JobModel)
                     .join(JobModel, JobModel.experiment_id == ExperimentModel.experiment_id)
                     .where(JobModel.status == "running").order_by(JobModel.job_id))
            if experiment_id is not None:
                query = query.where(JobModel.experiment_id == experiment_id)
            return [(name, job) for name, job in s.execute(query)]

    @transaction
    def release(self, job_id: int, worker: str, error: str) -> bool:
        """Mark a running job interrupted if `worker` still holds it (a claim by someone else is left alone)."""
        return self.mark(job_id, "interrupted", worker, error=error, finished=False)

    @transaction
    def set_provenance(self, job_id: int, worker: str, **fields: Any) -> None:
        """Where and how `worker` runs the job (device, packages, Slurm ids, parameter count); LostJob if not its."""
        with self.session() as s:
            _hold(s, job_id, worker)
            s.execute(update(JobModel).where(JobModel.job_id == job_id).values(**fields))

    @transaction
    def record_epochs(self, job_id: int, worker: str, history: list[tuple[int, dict[str, float]]]) -> None:
        """Write per-epoch metrics, replacing rows of the same epochs (a resumed job may redo an epoch); LostJob
        (nothing written) when `worker` no longer holds the job."""
        with self.session() as s:
            _hold(s, job_id, worker)
            epochs = [epoch for epoch, _ in history]
            s.execute(delete(EpochMetricModel).where(EpochMetricModel.job_id == job_id,
                                                     EpochMetricModel.epoch.in_(epochs)))
            s.add_all(EpochMetricModel(job_id=job_id, epoch=epoch, name=name, value=_finite(value))
                      for epoch, metrics in history for name, value in metrics.items())

    @transaction
    def finish(self, job_id: int, worker: str, final: dict[str, float], rotation: list[tuple[float, str, float]],
               artifacts: dict[str, tuple[str, bytes]], params: int | None) -> bool:
        """Write a job's results and mark it done, all in one transaction; False (nothing written) when another
        worker has taken the job over meanwhile (this one was presumed dead), so results never mix."""
        with self.session() as s:
            try:
                _hold(s, job_id, worker)  # locks the row: no one can take the job over until this commits
            except LostJob:
                # Done by us already means a commit whose answer was lost, now retried: it stands.
                return s.scalar(select(JobModel.job_id).where(
                    JobModel.job_id == job_id, JobModel.worker == worker, JobModel.status == "done")) is not None
            for model in (FinalMetricModel, RotationMetricModel, ArtifactModel):
                s.execute(delete(model).where(model.job_id == job_id))
            s.add_all(FinalMetricModel(job_id=job_id, name=k, value=_finite(v)) for k, v in final.items())
            s.add_all(RotationMetricModel(job_id=job_id, angle=a, name=n, value=_finite(v)) for a, n, v in rotation)
            s.add_all(ArtifactModel(job_id=job_id, name=k, media_type=t, data=d) for k, (t, d) in artifacts.items())
            s.execute(update(JobModel).where(JobModel.job_id == job_id).values(
                status="done", finished_at=func.now(), params=params, error=None, traceback=None))
            return True

    @transaction
    def mark(self, job_id: int, status: str, worker: str, error: str | None = None, traceback: str | None = None,
             finished: bool = True) -> bool:
        """Mark the job `worker` runs failed, interrupted or pruned (with the error and traceback); False (nothing
        changed) when it no longer holds the job, whose new owner's run stands."""
        with self.session() as s:
            values = dict(status=status, error=error, traceback=traceback)
            result = s.execute(update(JobModel).where(*_held_by(job_id, worker)).values(
                **values, **({"finished_at": func.now()} if finished else {})))
            return result.rowcount == 1

    # ---- studies: trials, their jobs, pruning decisions --------------------------------------------------------

    @transaction
    def add_trial(self, experiment_id: int, trial: NewTrial) -> bool:
        """Insert a trial, the jobs it needs that do not exist yet, and the links, in one transaction. False (nothing
        written) when another runner has just added the same trial number or job: re-plan and try again."""
        try:
            with self.session() as s:
                row = TrialModel(experiment_id=experiment_id, stream=trial.stream, role=trial.role,
                                 number=trial.number, params_json=json.dumps(trial.params, sort_keys=True),
                                 system_attrs_json=json.dumps(trial.system_attrs, sort_keys=True))
                s.add(row)
                s.flush()
                keys = [key for key, _, _ in trial.jobs]
                known = {key: job_id for key, job_id in s.execute(select(JobModel.key, JobModel.job_id).where(
                    JobModel.experiment_id == experiment_id, JobModel.key.in_(keys)))}
                for key, label, config in trial.jobs:
                    if key not in known:
                        job = _new_job(experiment_id, key, label, config)
                        s.add(job)
                        s.flush()
                        known[key] = job.job_id
                    s.add(TrialJobModel(trial_id=row.trial_id, job_id=known[key]))
            return True
        except IntegrityError:
            return False

    @transaction
    def study_snapshot(self, experiment_id: int, metrics: tuple[str, ...]) -> StudySnapshot:
        """Everything a search decision reads, from one transaction (a consistent view while others write)."""
        with self.session() as s:
            in_experiment = JobModel.experiment_id == experiment_id
            jobs = s.execute(select(JobModel.job_id, JobModel.key, JobModel.status, JobModel.config_json)
                             .where(in_experiment).order_by(JobModel.job_id)).all()
            trials = s.execute(select(TrialModel.trial_id, TrialModel.stream, TrialModel.role, TrialModel.number,
                                      TrialModel.params_json, TrialModel.system_attrs_json)
                               .where(TrialModel.experiment_id == experiment_id)
                               .order_by(TrialModel.trial_id)).all()
            links = s.execute(select(TrialJobModel.trial_id, TrialJobModel.job_id).join(TrialModel)
                              .where(TrialModel.experiment_id == experiment_id)).all()
            epochs = s.execute(select(EpochMetricModel.job_id, EpochMetricModel.epoch, EpochMetricModel.name,
                                      EpochMetricModel.value).join(JobModel)
                               .where(in_experiment, EpochMetricModel.name.in_(metrics))).all()
            rungs = s.execute(select(RungModel.job_id, RungModel.rung, RungModel.epoch, RungModel.value,
                                     RungModel.promoted).join(JobModel).where(in_experiment)
                              .order_by(RungModel.job_id, RungModel.rung)).all()
        rows = (jobs, trials, links, epochs, rungs)
        jobs, trials, links, epochs, rungs = (tuple(tuple(row) for row in part) for part in rows)
        return StudySnapshot(jobs=jobs, trials=trials, links=links, epochs=epochs, rungs=rungs)

    @transaction
    def record_rungs(self, job_id: int, worker: str, metric: str,
                     rungs: list[tuple[int, int, float, float | None, int, bool]]) -> None:
        """Store pruning decisions (rung, epoch, value, cut, competitors, promoted); a rung already decided stays.
        LostJob (nothing stored) when `worker` no longer holds the job."""
        with self.session() as s:
            _hold(s, job_id, worker)
            decided = set(s.scalars(select(RungModel.rung).where(RungModel.job_id == job_id)))
            s.add_all(RungModel(job_id=job_id, rung=rung, epoch=epoch, metric=metric, value=_finite(value),
                                cut=_finite(cut), competitors=competitors, promoted=promoted)
                      for rung, epoch, value, cut, competitors, promoted in rungs if rung not in decided)

    # ---- reading -------------------------------------------------------------------------------------------------

    @transaction
    def experiments(self) -> list[ExperimentModel]:
        with self.session() as s:
            return list(s.scalars(select(ExperimentModel).order_by(ExperimentModel.experiment_id)))

    @transaction
    def status_counts(self) -> list[tuple[str, dict[str, int]]]:
        """(experiment name, {status: job count}) for every experiment."""
        with self.session() as s:
            rows = s.execute(select(ExperimentModel.name, JobModel.status, func.count())
                             .join(JobModel, JobModel.experiment_id == ExperimentModel.experiment_id)
                             .group_by(ExperimentModel.name, JobModel.status).order_by(ExperimentModel.name))
            out: dict[str, dict[str, int]] = {}
            for name, status, count in rows:
                out.setdefault(name, {})[status] = count
        return list(out.items())

    @transaction
    def find_job(self, prefix: str) -> JobModel:
        """A job by its id (an exact id always wins: ids are what the tool prints, and keys are hex, so "2" is also a
        key prefix), else by its key or a key prefix; DatabaseError listing what matched when it is not unique."""
        with self.session() as s:
            exact = s.get(JobModel, int(prefix)) if prefix.isdigit() else None
            rows = [exact] if exact else list(s.scalars(select(JobModel).where(
                JobModel.key.startswith(prefix.lower())).order_by(JobModel.job_id).limit(6)))
        if len(rows) != 1:
            found = ", ".join(f"{r.job_id}:{r.key}" for r in rows) or "none"
            raise DatabaseError(f"job {prefix!r} matches {found}; give a job id or more of its key "
                                "(python -m runner status lists them)")
        return rows[0]

    @transaction
    def rungs_of(self, job_id: int) -> list[RungModel]:
        with self.session() as s:
            return list(s.scalars(select(RungModel).where(RungModel.job_id == job_id).order_by(RungModel.rung)))

    @transaction
    def metrics_of(self, job_id: int) -> tuple[list[EpochMetricModel], list[FinalMetricModel]]:
        with self.session() as s:
            epochs = list(s.scalars(select(EpochMetricModel).where(EpochMetricModel.job_id == job_id)
                                    .order_by(EpochMetricModel.epoch, EpochMetricModel.name)))
            final = list(s.scalars(select(FinalMetricModel).where(FinalMetricModel.job_id == job_id)
                                   .order_by(FinalMetricModel.name)))
        return epochs, final


def _reason(exc: BaseException) -> str:
    """The driver's own words, first line only (SQLAlchemy's wrapper repeats the class and adds a help link)."""
    while exc.__cause__ is not None and not isinstance(exc, DBAPIError):
        exc = exc.__cause__
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _held_by(job_id: int, worker: str) -> tuple:
    """The WHERE of every write a worker makes to its job: still its worker, still running, in the same statement
    (a read-then-write would let a takeover slip in between under read-committed isolation)."""
    return JobModel.job_id == job_id, JobModel.worker == worker, JobModel.status == "running"


def _hold(session: Session, job_id: int, worker: str) -> None:
    """Refresh the heartbeat of the job `worker` runs, which also locks its row until the transaction ends; LostJob
    when it is no longer that worker's running job."""
    if session.execute(update(JobModel).where(*_held_by(job_id, worker)).values(heartbeat_at=func.now())).rowcount:
        return
    owner, status = session.execute(select(JobModel.worker, JobModel.status).where(JobModel.job_id == job_id)).one()
    raise LostJob(f"job {job_id} is no longer held by {worker}: it is {status}"
                  + (f" under {owner}" if owner and owner != worker else ""))


def _rollback(session: Session) -> None:
    """Roll back; on a connection that just died there is nothing to roll back, and the error that killed it is the
    one to report."""
    try:
        session.rollback()
    except DBAPIError:
        pass


def _new_job(experiment_id: int, key: str, label: str, config: dict[str, Any]) -> JobModel:
    return JobModel(experiment_id=experiment_id, key=key, label=label, config_json=json.dumps(config, sort_keys=True),
                    family=config["model"]["family"], group_name=config["model"]["group"], seed=config["seed"],
                    status="queued")


def _now(session: Session) -> datetime:
    """The database's clock as a naive UTC datetime, like the stored heartbeats (PostgreSQL's now() is aware)."""
    now = session.scalar(select(func.now()))
    now = datetime.fromisoformat(now) if isinstance(now, str) else now
    return now.astimezone(timezone.utc).replace(tzinfo=None) if now.tzinfo else now


def _finite(value: float | None) -> float | None:
    """NaN/inf become NULL: portable across databases and honest in reports ('missing', not 'nan')."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None

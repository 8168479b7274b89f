"""The results database: schema versions, atomic claims under concurrency, stale heartbeats, idempotent writes."""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from datetime import datetime

import pytest
from sqlalchemy import inspect
from sqlalchemy import update

from runner.store import Database, DatabaseError, DatabaseUnavailable, JobModel, LostJob, SchemaVersionModel
from runner.faults import DatabaseAway
from runner.executors.running_view import running_rows

CONFIG = {"model": {"family": "cnn", "group": "trivial"}, "seed": 0}


@pytest.fixture
def db_url(tmp_path) -> str:
    """A new, empty database; tests/test_db_postgres.py overrides this to run these tests on PostgreSQL."""
    return f"sqlite:///{tmp_path / 'r.db'}"


def make_db(db_url: str, jobs: int = 3) -> tuple[Database, int, list[str]]:
    db = Database(db_url)
    keys = [f"k{i}" for i in range(jobs)]
    experiment_id, added = db.sync_experiment("e", "classification", "e.toml", "", [(k, k, CONFIG) for k in keys])
    assert added == jobs
    return db, experiment_id, keys


def test_sync_is_idempotent_and_adds_only_new_jobs(db_url):
    db, experiment_id, keys = make_db(db_url)
    assert db.sync_experiment("e", "classification", "e.toml", "", [(k, k, CONFIG) for k in keys + ["new"]]) == (
        experiment_id, 1)
    with pytest.raises(DatabaseError, match="already exists with task"):
        db.sync_experiment("e", "segmentation", "e.toml", "", [])


def test_schema_version_mismatch_is_refused(db_url):
    db, _, _ = make_db(db_url)
    with db.session() as s:
        s.execute(update(SchemaVersionModel).values(version=99))
    with pytest.raises(DatabaseError, match="schema version 99.*Upgrade"):
        Database(db.url)


def test_missing_database_for_reading(db_url):
    with pytest.raises(DatabaseError, match="run a spec first"):
        Database(db_url, create=False)


def test_claim_takes_each_job_once(db_url):
    db, experiment_id, keys = make_db(db_url)
    claimed = [db.claim(experiment_id, keys, "w") for _ in range(4)]
    assert [j.key for j in claimed[:3]] == keys and claimed[3] is None
    assert all(j.status == "running" and j.attempts == 1 for j in claimed[:3])


def _claim_all(url: str, experiment_id: int, keys: list[str], name: str, queue) -> None:
    db = Database(url)
    while (job := db.claim(experiment_id, keys, name)) is not None:
        queue.put(job.key)
    queue.put(None)


def test_concurrent_processes_never_claim_the_same_job(db_url):
    db, experiment_id, keys = make_db(db_url, jobs=40)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_claim_all, args=(db.url, experiment_id, keys, f"w{i}", queue)) for i in range(3)]
    for p in procs:
        p.start()
    got, finished = [], 0
    while finished < len(procs):
        item = queue.get(timeout=120)
        finished += item is None
        if item is not None:
            got.append(item)
    for p in procs:
        p.join()
    assert sorted(got) == sorted(keys)  # every job exactly once: no duplicates, none lost


def test_stale_running_jobs_are_reclaimed(db_url):
    db, experiment_id, keys = make_db(db_url, jobs=1)
    job = db.claim(experiment_id, keys, "dead-worker")
    assert db.reclaim_stale(experiment_id, grace_seconds=3600) == []
    with db.session() as s:
        s.execute(update(JobModel).values(heartbeat_at=datetime(2000, 1, 1)))
    assert db.reclaim_stale(experiment_id, grace_seconds=60) == [job.label]
    again = db.claim(experiment_id, keys, "new-worker")
    assert again.key == job.key and again.attempts == 2


def test_epoch_records_replace_a_redone_epoch(db_url):
    db, experiment_id, keys = make_db(db_url, jobs=1)
    job = db.claim(experiment_id, keys, "w")
    db.record_epochs(job.job_id, "w", [(0, {"valid_auc": 0.5}), (1, {"valid_auc": 0.6})])
    db.record_epochs(job.job_id, "w", [(1, {"valid_auc": 0.7, "valid_loss": float("nan")})])
    epochs, _ = db.metrics_of(job.job_id)
    assert [(m.epoch, m.name, m.value) for m in epochs] == [(0, "valid_auc", 0.5), (1, "valid_auc", 0.7),
                                                           (1, "valid_loss", None)]


def test_find_job_by_prefix(db_url):
    db, experiment_id, keys = make_db(db_url)
    assert db.find_job("k1").key == "k1"
    with pytest.raises(DatabaseError, match="matches"):
        db.find_job("k")


def test_a_presumed_dead_worker_cannot_overwrite_the_new_owner(db_url):
    db, experiment_id, keys = make_db(db_url, jobs=1)
    job = db.claim(experiment_id, keys, "slow-worker")
    with db.session() as s:
        s.execute(update(JobModel).values(heartbeat_at=datetime(2000, 1, 1)))
    db.reclaim_stale(experiment_id, grace_seconds=60)
    assert db.claim(experiment_id, keys, "new-worker") is not None
    assert db.finish(job.job_id, "slow-worker", {"test_auc": 0.1}, [], {}, 10) is False
    assert db.metrics_of(job.job_id)[1] == []
    assert db.finish(job.job_id, "new-worker", {"test_auc": 0.9}, [], {}, 10) is True
    assert [(m.name, m.value) for m in db.metrics_of(job.job_id)[1]] == [("test_auc", 0.9)]


def _open_and_sync(url: str, queue) -> None:
    try:
        Database(url).sync_experiment("e", "classification", "e.toml", "", [("k", "k", CONFIG)])
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent as text
        queue.put(f"{type(exc).__name__}: {exc}")


def test_runners_creating_the_same_new_database_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        url, queue = f"sqlite:///{tmp_path / f'new{round_}.db'}", context.Queue()
        procs = [context.Process(target=_open_and_sync, args=(url, queue)) for _ in range(3)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        assert results == ["ok"] * 3
        with Database(url).session() as s:
            assert s.query(SchemaVersionModel).count() == 1


def test_a_database_another_runner_is_still_creating_is_finished_not_refused(tmp_path):
    """Some of the results tables and no version row yet: what a second runner sees while the first one creates
    the database (or what a creation cut short leaves). It is completed, not called someone else's database."""
    from sqlalchemy import create_engine

    from runner.store.tables import BaseModel

    url = f"sqlite:///{tmp_path / 'half.db'}"
    engine = create_engine(url)
    BaseModel.metadata.tables["experiments"].create(engine)
    engine.dispose()
    db = Database(url)
    assert set(BaseModel.metadata.tables) <= set(inspect(db.engine).get_table_names())
    with db.session() as s:
        assert s.query(SchemaVersionModel).count() == 1


def test_a_database_with_foreign_tables_is_refused_naming_them(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(DatabaseError, match=r"not a results database \(invoices\); use another --db"):
        Database(f"sqlite:///{path}")


def test_a_version_1_database_is_migrated_in_place_keeping_its_jobs(db_url):
    db, experiment_id, keys = make_db(db_url)
    with db.engine.begin() as connection:  # make it what a version-1 runner wrote
        for column in ("slurm_job_id", "slurm_array_task_id", "slurm_node"):
            connection.exec_driver_sql(f"ALTER TABLE jobs DROP COLUMN {column}")
        for table in ("rungs", "trial_jobs", "trials"):
            connection.exec_driver_sql(f"DROP TABLE {table}")
        connection.exec_driver_sql("UPDATE schema_versions SET version = 1")
    db.engine.dispose()
    migrated = Database(db_url)
    assert migrated._schema_version() == 3
    assert {"trials", "trial_jobs", "rungs"} <= set(inspect(migrated.engine).get_table_names())
    assert [j.key for j in migrated.jobs(experiment_id)] == keys
    job = migrated.claim(experiment_id, keys, "w")
    migrated.set_provenance(job.job_id, "w", slurm_job_id="77", slurm_array_task_id=1, slurm_node="n1")
    assert migrated.find_job("1").slurm_node == "n1"
    assert Database(db_url)._schema_version() == 3  # opening again changes nothing


def hex_keys(count: int) -> list[str]:
    """Real job keys (sha256 hex), with the third one starting with "2", the id of the second: the clash users met."""
    keys = [hashlib.sha256(f"job {i}".encode()).hexdigest() for i in range(count)]
    keys[2] = "2" + keys[2][1:]
    keys[3] = keys[2][:6] + keys[3][6:]  # two keys share a 6-character prefix
    return keys


def test_an_exact_job_id_always_wins_over_a_hex_key_prefix(db_url):
    db = Database(db_url)
    keys = hex_keys(12)
    experiment_id, _ = db.sync_experiment("e", "classification", "e.toml", "", [(k, k[:8], CONFIG) for k in keys])
    for job in db.jobs(experiment_id):
        assert db.find_job(str(job.job_id)).job_id == job.job_id
        assert db.find_job(job.key[:7]).job_id == job.job_id  # a key prefix still finds its job
        assert db.find_job(job.key.upper()[:7]).job_id == job.job_id
    with pytest.raises(DatabaseError, match="matches none"):
        db.find_job("99")  # an id that does not exist is not taken as a key prefix of some other job
    with pytest.raises(DatabaseError, match=f"matches 3:{keys[2]}, 4:{keys[3]}"):
        db.find_job(keys[2][:6])


def presumed_dead(db: Database, experiment_id: int, keys: list[str]) -> tuple[JobModel, JobModel]:
    """`slow` claims the job, stalls past the grace period, and `new` takes it over: (slow's view, new's view)."""
    job = db.claim(experiment_id, keys, "slow")
    with db.session() as s:
        s.execute(update(JobModel).values(heartbeat_at=datetime(2000, 1, 1)))
    assert db.reclaim_stale(experiment_id, grace_seconds=60) == [job.label]
    return job, db.claim(experiment_id, keys, "new")


def test_every_write_of_a_worker_presumed_dead_is_refused_and_the_new_owner_keeps_the_job(db_url):
    db, experiment_id, keys = make_db(db_url, jobs=1)
    job, taken = presumed_dead(db, experiment_id, keys)
    for write in (lambda: db.heartbeat(job.job_id, "slow"),
                  lambda: db.record_epochs(job.job_id, "slow", [(0, {"valid_auc": 0.1})]),
                  lambda: db.record_rungs(job.job_id, "slow", "valid_auc", [(0, 1, 0.1, 0.5, 2, False)]),
                  lambda: db.set_provenance(job.job_id, "slow", device="cpu")):
        with pytest.raises(LostJob, match="under new"):
            write()
    assert db.mark(job.job_id, "interrupted", "slow", error="stopped") is False
    assert db.mark(job.job_id, "failed", "slow", error="boom") is False
    assert db.release(job.job_id, "slow", "gone") is False
    assert db.finish(job.job_id, "slow", {"test_auc": 0.1}, [], {}, 1) is False
    row = db.jobs(experiment_id)[0]
    assert (row.status, row.worker, row.device) == ("running", "new", None)
    assert row.error == "worker slow stopped sending heartbeats"  # the takeover's reason, not slow's messages
    assert db.metrics_of(job.job_id) == ([], []) and db.rungs_of(job.job_id) == []
    db.heartbeat(taken.job_id, "new")
    db.record_epochs(taken.job_id, "new", [(0, {"valid_auc": 0.7})])
    assert db.finish(taken.job_id, "new", {"test_auc": 0.9}, [], {}, 1) is True
    assert db.mark(taken.job_id, "failed", "new", error="late") is False  # done is final, even for its owner


def test_a_job_given_back_is_no_longer_the_old_workers_to_write(db_url):
    db, experiment_id, keys = make_db(db_url, jobs=1)
    job = db.claim(experiment_id, keys, "w")
    assert db.release(job.job_id, "w", "stopping") is True
    with pytest.raises(LostJob, match="interrupted"):
        db.record_epochs(job.job_id, "w", [(0, {"valid_auc": 0.5})])


def test_a_transient_failure_is_retried_with_one_line_per_outage(db_url, caplog):
    db = Database(db_url, retry_seconds=30)
    failures = iter([DatabaseUnavailable("database x: connection refused")] * 3)

    def flaky() -> int:
        if (failure := next(failures, None)) is not None:
            raise failure
        return db.now().year

    with caplog.at_level(logging.WARNING, logger="runner.store"):
        assert db.retrying(flaky) >= 2026
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "unreachable" in lines[0] and "retrying for up to 30 s" in lines[0], lines
    assert "is back after" in lines[1]


def test_an_outage_past_the_bound_stops_with_the_server_named_and_no_retry_on_real_errors(db_url):
    db = Database(db_url, retry_seconds=0.5)

    def down() -> None:
        raise DatabaseUnavailable("database x: connection refused")

    started = time.monotonic()
    with pytest.raises(DatabaseAway, match=r"stayed unreachable for 0 s.*rerun the same command"):
        db.retrying(down)
    assert time.monotonic() - started < 10
    calls = []

    def broken() -> None:
        calls.append(1)
        raise DatabaseError("no such table")

    with pytest.raises(DatabaseError, match="no such table"):
        db.retrying(broken)
    assert calls == [1]  # a real error is not retried


def test_a_running_jobs_heartbeat_age_is_read_on_the_databases_clock(db_url):
    # PostgreSQL's now() is timezone-aware and the heartbeat columns are naive: subtracting them used to raise.
    db, experiment_id, keys = make_db(db_url, jobs=1)
    job = db.claim(experiment_id, keys, "elsewhere:1:1:0")
    ((*_, heartbeat, alive),) = running_rows(db, experiment_id, stale_after=300)
    assert db.now().tzinfo is None
    assert heartbeat.endswith("s ago)") and "presumed alive" in alive, (heartbeat, alive)
    with db.session() as s:
        s.execute(update(JobModel).where(JobModel.job_id == job.job_id).values(heartbeat_at=datetime(2000, 1, 1)))
    assert "presumed dead" in running_rows(db, experiment_id, stale_after=300)[0][-1]

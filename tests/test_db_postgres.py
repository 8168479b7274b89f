"""tests/test_db.py's tests on a real PostgreSQL server: `--db` promises any SQLAlchemy URL, not only SQLite.

`nox -s postgres` runs them; by hand: `uv run pytest tests/test_db_postgres.py`.
The server is RUNNER_TEST_DB_URL when set (its user needs CREATEDB: each test gets a new database, dropped after),
else a throwaway one started here from PostgreSQL's binaries. Skipped when neither is available.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from runner import cli
from runner.store import Database
from runner.exit_codes import EXIT_DATABASE_AWAY
from tests import pg_server
from tests.test_ownership import test_a_worker_that_lost_its_job_stops_training_it_and_writes_nothing  # noqa: F401
from tests.test_db import (  # noqa: F401  collected again here, with the PostgreSQL `db_url` below
    CONFIG,
    test_a_job_given_back_is_no_longer_the_old_workers_to_write,
    test_a_running_jobs_heartbeat_age_is_read_on_the_databases_clock,
    test_a_transient_failure_is_retried_with_one_line_per_outage,
    test_an_exact_job_id_always_wins_over_a_hex_key_prefix,
    test_an_outage_past_the_bound_stops_with_the_server_named_and_no_retry_on_real_errors,
    test_every_write_of_a_worker_presumed_dead_is_refused_and_the_new_owner_keeps_the_job,
    test_claim_takes_each_job_once,
    test_concurrent_processes_never_claim_the_same_job,
    test_epoch_records_replace_a_redone_epoch,
    test_a_version_1_database_is_migrated_in_place_keeping_its_jobs,
    test_find_job_by_prefix,
    test_missing_database_for_reading,
    test_schema_version_mismatch_is_refused,
    test_stale_running_jobs_are_reclaimed,
    test_sync_is_idempotent_and_adds_only_new_jobs,
)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL URL with the psycopg 3 driver: RUNNER_TEST_DB_URL, else a server started for this session."""
    if url := os.environ.get("RUNNER_TEST_DB_URL"):
        yield make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return
    if pg_server.find_bindir() is None:
        pytest.skip("no PostgreSQL server: install one (apt-get install postgresql) or set RUNNER_TEST_DB_URL")
    with pg_server.running_server() as url:
        yield url


@pytest.fixture
def db_url(server_url: str) -> Iterator[str]:
    """A new, empty database on the server, dropped after the test."""
    name = f"runner_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")  # CREATE DATABASE cannot run in a transaction
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        # FORCE: the tests' engines still hold pooled connections to it.
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def _in_time_zone(url: str, zone: str) -> str:
    """`url` for a client whose sessions default to `zone`, like a worker on a machine with PGTZ set."""
    return make_url(url).update_query_dict({"options": f"-c timezone={zone}"}).render_as_string(hide_password=False)


def test_heartbeats_compare_across_client_time_zones(db_url):
    # now() is timestamptz and the columns are naive: each session would store its own local time, so a worker
    # 14 hours behind the reclaimer would look stale the moment it claimed a job.
    worker = Database(_in_time_zone(db_url, "America/New_York"))
    experiment_id, _ = worker.sync_experiment("e", "classification", "e.toml", "", [("k0", "k0", CONFIG)])
    assert worker.claim(experiment_id, ["k0"], "w") is not None
    reclaimer = Database(_in_time_zone(db_url, "Asia/Tokyo"))
    assert reclaimer.reclaim_stale(experiment_id, grace_seconds=3600) == []
    worker.heartbeat(worker.jobs(experiment_id)[0].job_id, "w")
    assert reclaimer.reclaim_stale(experiment_id, grace_seconds=3600) == []


def test_missing_database_and_unknown_user_are_one_line_exit_2(server_url, capsys):
    server = make_url(server_url)
    where = f"{server.host}:{server.port}"
    for url, expected in ((server.set(database="no_such_db"), "createdb"),
                          (server.set(username="no_such_user"), "refused the credentials")):
        for argv in (["status"], ["show", "1"], ["report"]):
            capsys.readouterr()
            assert cli.main([*argv, "--db", url.render_as_string(hide_password=False)]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and where in err and expected in err, err


# ---- a server that goes away mid-run: restarted by its admin, or gone for longer than the runner waits -------------

OUTAGE_SPEC = """
[experiment]
name = "outage"
seeds = [5]
[data]
train_size = 384
valid_size = 32
test_size = 32
[train]
epochs = 3
batch_size = 8
[eval]
invariance = false
rotation_angles = [0, 90]
rotation_samples = 16
[[model]]
family = "cnn"
width = 4
depth = 2
"""


@pytest.fixture(scope="module")
def own_server():
    """A server of these tests' own, which they stop (immediate mode: a crash as clients see it) and start again."""
    if os.environ.get("RUNNER_TEST_DB_URL") or pg_server.find_bindir() is None:
        pytest.skip("needs PostgreSQL's binaries to stop and start a server of its own")
    with pg_server.own_server() as server:
        yield server


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> dict[str, float]:
    """The outage spec's metrics without any outage (SQLite: the database does not change what is trained)."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    (tmp / "spec.toml").write_text(OUTAGE_SPEC)
    assert cli.main([str(tmp / "spec.toml"), "--root", str(tmp / "runs")]) == 0
    with sqlite3.connect(tmp / "runs" / "results.db") as con:
        return dict(con.execute(METRICS_SQL).fetchall())


METRICS_SQL = "select name, value from final_metrics where name like 'test_%' or name like 'valid_%'"


def _fresh_database(server: pg_server.Server) -> str:
    name = f"runner_outage_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server.url).set(database=name).render_as_string(hide_password=False)


def _start_run(tmp_path, url: str, *args: str) -> subprocess.Popen:
    (tmp_path / "spec.toml").write_text(OUTAGE_SPEC)
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "runner", str(tmp_path / "spec.toml"), "--root",
                             str(tmp_path / "runs"), "--db", url, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_first_epoch(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as connection:
                if _has_epochs(connection):
                    return
            assert proc.poll() is None, f"the runner ended early ({proc.returncode}):\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "the first epoch never arrived"
            time.sleep(0.1)
    except Exception:
        proc.kill()
        raise
    finally:
        engine.dispose()


def _has_epochs(connection) -> bool:
    try:
        return bool(connection.execute(text("select count(*) from epoch_metrics")).scalar())
    except ProgrammingError:  # the runner has not created its tables yet
        connection.rollback()
        return False


def _metrics(url: str) -> tuple[list[tuple], dict[str, float]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        jobs = [tuple(r) for r in connection.execute(text("select status, attempts from jobs"))]
        metrics = dict(connection.execute(text(METRICS_SQL)).fetchall())
    engine.dispose()
    return jobs, metrics


def test_a_server_restarted_mid_epoch_is_waited_out_and_the_metrics_are_unchanged(own_server, undisturbed,
                                                                                 tmp_path):
    url = _fresh_database(own_server)
    proc = _start_run(tmp_path, url)
    _wait_for_first_epoch(url, proc)
    own_server.stop("immediate")  # in the second epoch: every connection cut at once
    time.sleep(20)
    own_server.start()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    outage = [line for line in out.splitlines() if "unreachable" in line or "is back after" in line]
    print(*outage, sep="\n")  # for the record (README Reliability quotes these lines)
    assert len(outage) == 2 and "unreachable" in outage[0] and "is back after" in outage[1], out  # one per event
    jobs, metrics = _metrics(url)
    assert jobs == [("done", 1)]  # never failed, never restarted: the same attempt went on
    assert metrics == undisturbed


def test_a_server_away_past_the_bound_stops_the_runner_and_a_plain_rerun_finishes(own_server, undisturbed,
                                                                                  tmp_path):
    url = _fresh_database(own_server)
    proc = _start_run(tmp_path, url, "--db-retry-seconds", "4")
    _wait_for_first_epoch(url, proc)
    own_server.stop("immediate")
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        own_server.start()
    assert proc.returncode == EXIT_DATABASE_AWAY, out
    where = f"127.0.0.1:{own_server.port}"
    assert f"the database {where} stayed unreachable for 4 s" in out and "rerun the same command" in out, out
    assert "Traceback" not in out
    assert _metrics(url)[0][0][0] in ("running", "interrupted")  # given back (or left to a takeover), not failed
    rerun = _start_run(tmp_path, url)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    jobs, metrics = _metrics(url)
    assert jobs == [("done", 2)]
    assert metrics == undisturbed

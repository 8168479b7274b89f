"""tests/test_db.py's tests on a real PostgreSQL server: `--db` promises any SQLAlchemy URL, not only SQLite.

`nox -s postgres` runs them; by hand: `uv run pytest tests/test_db_postgres.py`.
The server is RUNNER_TEST_DB_URL when set (its user needs CREATEDB: each test gets a new database, dropped after),
else a throwaway one started here from PostgreSQL's binaries. Skipped when neither is available.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from runner import cli
from runner.db import Database
from tests import pg_server
from tests.test_db import (  # noqa: F401  collected again here, with the PostgreSQL `db_url` below
    CONFIG,
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

"""One SQLAlchemy engine per URL, set up for how the runner uses it: SQLite in WAL mode with a busy timeout and
foreign keys, PostgreSQL through psycopg 3 in UTC, a connect timeout, and dead pooled connections tested away.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

from runner.store.errors import DatabaseError, bad_url, is_bad_url


def make_engine(url: str, create: bool = True):
    """An engine for `url`; SQLite gets WAL (readers never block the writer) and a busy timeout."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url[len("sqlite:///"):])
        if not create and not path.exists():  # connecting would create an empty file
            raise DatabaseError(f"{url} has no results yet; run a spec first: python -m runner SPEC")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # pre_ping: after a server restart the pool holds dead connections; test each before use instead of failing.
        engine = create_engine(_with_driver(url), connect_args=_connect_args(url),
                               pool_pre_ping=not url.startswith("sqlite"))
    except Exception as exc:
        if is_bad_url(exc):
            raise DatabaseError(bad_url(url, exc)) from None
        raise
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    if url.startswith("postgresql"):
        event.listen(engine, "connect", _postgresql_utc)
    return engine


def _connect_args(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"timeout": 60}
    # A firewalled server would otherwise hang each command for minutes before saying anything.
    return {"connect_timeout": 15} if url.startswith("postgresql") else {}


def _with_driver(url: str):
    """`postgresql://` means psycopg 3, the driver this project installs (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed


def _postgresql_utc(dbapi_connection, _record) -> None:
    # now() is timestamptz; stored in our naive DateTime columns it becomes the session's local time. UTC in every
    # session keeps heartbeats comparable between machines (PGTZ) and through DST changes, as SQLite's clock is.
    cursor = dbapi_connection.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()  # a rolled-back SET would be undone


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
    cursor.close()

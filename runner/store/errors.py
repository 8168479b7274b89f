"""A database that cannot be reached, said in one line: which server, what went wrong, what to do next.

Driver messages span several lines and differ between drivers; people need the host and the next step.
"""
from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from runner.faults import DiskFull

# (pattern in the driver's message, what went wrong, what to do); the first match wins.
PROBLEMS = (
    (r"database \"?([^\"\s]+)\"? does not exist", "database {0!r} does not exist",
     "create it (createdb -h {host} -p {port} {database}) or fix the name in --db"),
    (r"password authentication failed|authentication failed|no password supplied|role \"?([^\"\s]+)\"? does not exist",
     "the server refused the credentials", "fix the user and password in --db (or in ~/.pgpass)"),
    (r"connection refused|could not connect|server closed the connection", "nothing answers there",
     "start the server, or fix the host and port in --db; a firewall may block the port"),
    (r"timeout|timed out", "the connection timed out", "check that the host is reachable from this machine"),
    (r"resolve host|name or service not known|could not translate host name", "the host name does not resolve",
     "fix the host in --db"),
)


# Driver messages of failures that pass: a server restarting or shutting down, a dropped connection, a long lock.
TRANSIENT = re.compile(
    r"connection refused|could not connect|server closed the connection|terminating connection|connection (is|was|"
    r"has been) closed|connection reset|consuming input failed|ssl syscall|ssl connection has been closed|"
    r"database system is (starting up|shutting down|in recovery mode)|no connection to the server|"
    r"broken pipe|timeout expired|database is locked|cannot connect now",
    re.IGNORECASE)
DISK_FULL = re.compile(r"database or disk is full|no space left on device|could not extend file", re.IGNORECASE)


def is_transient(exc: DBAPIError) -> bool:
    """True for failures worth retrying the whole transaction after (the database is there, or will be, again)."""
    return bool(exc.connection_invalidated) or (
        isinstance(exc, (OperationalError, InterfaceError)) and bool(TRANSIENT.search(str(exc.orig))))


def is_disk_full(exc: DBAPIError) -> bool:
    return bool(DISK_FULL.search(str(exc.orig)))


def server_name(url: str) -> str:
    """The server as people name it: host:port (never the password), or the SQLite file."""
    parsed = make_url(url)
    if parsed.host or parsed.port:
        return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    return parsed.render_as_string(hide_password=True)


def connection_problem(url: str, exc: BaseException) -> str:
    """One line for a failed connection: the server (never its password), the cause, the next step."""
    parsed = make_url(url)
    where = server_name(url)
    message = str(getattr(exc, "orig", None) or exc)
    for pattern, what, todo in PROBLEMS:
        if match := re.search(pattern, message, re.IGNORECASE):
            fields = {"host": parsed.host or "localhost", "port": parsed.port or 5432, "database": parsed.database}
            return (f"cannot use the database server at {where}: {what.format(*match.groups())}; "
                    f"{todo.format(**fields)}")
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return f"cannot use the database at {where}: {first}"


def bad_url(url: str, exc: BaseException) -> str:
    """One line for a URL that names no usable database driver."""
    if isinstance(exc, ModuleNotFoundError):
        return (f"the driver for {url.split('://')[0]!r} is not installed ({exc.name}); use sqlite:///PATH or "
                "postgresql://USER@HOST/DB, or install that driver")
    return f"--db {url!r} is not a database URL ({exc}); use sqlite:///PATH or postgresql://USER@HOST/DB"


def is_bad_url(exc: BaseException) -> bool:
    return isinstance(exc, (ArgumentError, ModuleNotFoundError))


class DatabaseError(Exception):
    """A database problem with the next step in its message."""


class DatabaseUnavailable(DatabaseError):
    """A transient failure (server restarting, dropped connection, SQLite lock): the transaction may be run again."""


class LostJob(Exception):
    """This worker no longer holds the job: it was presumed dead and the job went to someone else (or was given
    back). Nothing was written; the worker must stop training that job at once."""


def worth_retrying(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseUnavailable) or (isinstance(exc, DBAPIError) and is_transient(exc))


def classified(url: str, exc: DBAPIError) -> Exception | None:
    """The driver's error as ours: DiskFull, DatabaseUnavailable (worth retrying), DatabaseError; None: not ours."""
    if is_disk_full(exc):
        where = url[len("sqlite:///"):] if url.startswith("sqlite:///") else server_name(url)
        return DiskFull(f"no space left for the database {where} ({exc.orig}); free space, then rerun")
    if is_transient(exc):
        return DatabaseUnavailable(f"database {server_name(url)}: {str(exc.orig).strip().splitlines()[0]}")
    if isinstance(exc, OperationalError):
        return DatabaseError(f"database {server_name(url)} failed: {exc.orig}")
    return None

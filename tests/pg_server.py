"""A throwaway PostgreSQL server for tests: a fresh cluster in a temporary folder, on 127.0.0.1 only, trust auth.

    with running_server() as url:   # postgresql+psycopg://postgres@127.0.0.1:<free port>/postgres
        ...
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"  # created by Debian's package; the server refuses to run as root


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then the newest /usr/lib/postgresql/<version>/bin."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent  # pg_ctl finds `postgres` next to its real path, not a symlink's
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: float(Path(p).parents[1].name))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class Server:
    """A throwaway server that tests may stop and start again (a restart by its admin, a crash)."""

    bindir: Path
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        _start(self.bindir, self.folder, self.port)

    def stop(self, mode: str = "fast") -> None:
        """`mode` immediate is a crash as far as clients can tell: connections cut, no goodbye."""
        _run([str(self.bindir / "pg_ctl"), "-D", "data", "-m", mode, "-w", "stop"], self.folder)


@contextmanager
def running_server() -> Iterator[str]:
    """Start a server, yield its superuser URL, then stop it and delete its files."""
    with own_server() as server:
        yield server.url


@contextmanager
def own_server() -> Iterator[Server]:
    """Start a server, yield it, then stop it (if still running) and delete its files."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL binaries found; install them (apt-get install postgresql) "
                           "or point RUNNER_TEST_DB_URL at a running server")
    folder = Path(tempfile.mkdtemp(prefix="runner-pg-"))
    try:
        _give_to_server_user(folder)
        server = Server(bindir, folder, _free_port())
        _run([str(bindir / "initdb"), "-D", "data", "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--no-locale", "--no-sync"], folder)
        server.start()
        try:
            yield server
        finally:
            if (folder / "data" / "postmaster.pid").exists():
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(bindir: Path, folder: Path, port: int) -> None:
    # TCP on 127.0.0.1 only; the unix socket stays in our folder; no fsync: the data is thrown away anyway.
    options = f"-h 127.0.0.1 -p {port} -k {folder} -F"
    try:
        _run([str(bindir / "pg_ctl"), "-D", "data", "-l", "server.log", "-w", "-t", "60", "-o", options, "start"],
             folder)
    except RuntimeError as exc:
        log = (folder / "server.log").read_text(errors="replace")[-2000:] if (folder / "server.log").exists() else ""
        raise RuntimeError(f"{exc}\nserver log:\n{log}") from exc


def _give_to_server_user(folder: Path) -> None:
    """As root, hand the folder to the server's user (the server will not run as root)."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(f"running as root and there is no {SERVER_USER!r} user to run the server as; create "
                           f"one (useradd --system {SERVER_USER}) or set RUNNER_TEST_DB_URL") from None
    os.chown(folder, user.pw_uid, user.pw_gid)


def _run(command: list[str], folder: Path) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    # cwd: the server's user may not be allowed into the caller's working directory.
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""A database that cannot be used is one line naming the server and the next step, exit 2, for every command."""
from __future__ import annotations

import socket

import pytest

from runner import cli
from tests.test_e2e import TINY, write


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(spec: str) -> list[list[str]]:
    return [["status"], ["show", "1"], ["report"], [spec]]


def assert_one_line_exit_2(argv: list[str], capsys, *expected: str) -> None:
    capsys.readouterr()
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (argv, err)


def test_unreachable_server_for_every_command(tmp_path, capsys):
    port = closed_port()
    spec = str(write(tmp_path, TINY))
    for argv in commands(spec):
        # `postgresql://` without a driver name: psycopg 3, installed with the runner
        assert_one_line_exit_2([*argv, "--root", str(tmp_path / "runs"),
                                "--db", f"postgresql://alice:secret@127.0.0.1:{port}/lab"], capsys,
                               f"127.0.0.1:{port}", "nothing answers there", "start the server")
    assert not (tmp_path / "runs").exists()


def test_bad_urls_say_what_a_url_looks_like(tmp_path, capsys):
    for url in ("nonsense", "nosuchdialect://x/y"):
        assert_one_line_exit_2(["status", "--db", url], capsys, "postgresql://USER@HOST/DB")


def test_passwords_never_appear_in_errors(tmp_path, capsys):
    port = closed_port()
    capsys.readouterr()
    assert cli.main(["status", "--db", f"postgresql://alice:s3cret@127.0.0.1:{port}/lab"]) == 2
    assert "s3cret" not in capsys.readouterr().err


@pytest.mark.parametrize("message, expected", [
    ('FATAL:  password authentication failed for user "alice"', "refused the credentials"),
    ('FATAL:  database "lab" does not exist', "createdb -h db.example.org -p 5432 lab"),
    ("failed to resolve host 'db.example.org'", "does not resolve"),
])
def test_driver_messages_become_the_next_step(message, expected):
    from runner.store.errors import connection_problem

    line = connection_problem("postgresql://alice:pw@db.example.org/lab", RuntimeError(message))
    assert expected in line and "db.example.org:5432" in line and "pw" not in line.replace("password", "")

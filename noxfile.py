"""Test sessions. `nox -s tests` is the one CI and README use; the others are opt-in.

Each session installs the locked project (uv.lock) into its own virtualenv with uv.
"""
from __future__ import annotations

import glob
import shutil

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def install(session: nox.Session, *groups: str) -> None:
    """Install exactly what uv.lock pins (project + dev group, + `groups`) into the session's virtualenv."""
    session.run_install(
        "uv", "sync", "--frozen", "--group", "dev", *(a for g in groups for a in ("--group", g)), "--inexact",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        silent=True,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """Fast suite (< 15 min on 2 cores): unit, property (hypothesis `ci` profile) and small end-to-end tests."""
    install(session)
    session.run("pytest", "-q", "-ra", *session.posargs, env={"HYPOTHESIS_PROFILE": "ci"})


@nox.session
def heavy(session: nox.Session) -> None:
    """Slow tests (marked `heavy`) and the `thorough` hypothesis profile."""
    install(session)
    session.run("pytest", "-q", "-ra", "-m", "heavy or not browser", *session.posargs,
                env={"HYPOTHESIS_PROFILE": "thorough"})


@nox.session
def browser(session: nox.Session) -> None:
    """Opens the HTML report in Debian's headless chromium; installs it with apt-get when missing."""
    if shutil.which("chromium") is None:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "chromium", external=True)
    install(session, "docs")  # tests/test_docs_browser.py builds the documentation site and opens it
    session.run("pytest", "-q", "-ra", "-m", "browser", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml -> runs/site/), strict: a broken link, anchor or API reference fails the build.

    The reference pages are generated during the build (docs/hooks/); `nox -s docs -- serve` previews it instead.
    """
    install(session, "docs")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        # The theme's banner about its successor is advice for maintainers, not a build result: keep CI's log short.
        session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print measured numbers (speed and memory ratios live here, not in timed tests).

    First `python -m runner bench` (one table of side-by-side ratios with their targets, also written to
    runs/bench/latest.json; `nox -s bench -- --quick` for the short version), then tests/benchmarks/bench_*.py.
    """
    install(session)
    session.run("python", "-m", "runner", "bench", *session.posargs)
    for script in sorted(glob.glob("tests/benchmarks/bench_*.py")):
        session.run("python", script)


@nox.session
def postgres(session: nox.Session) -> None:
    """The database tests on a real PostgreSQL server; installs Debian's server with apt-get when missing.

    tests/test_db_postgres.py starts a throwaway server on 127.0.0.1, or uses RUNNER_TEST_DB_URL when set.
    """
    if not (shutil.which("initdb") and shutil.which("pg_ctl")) and not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "postgresql", external=True)
    install(session)
    session.run("pytest", "-q", "-ra", "tests/test_db_postgres.py", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """The prepared GPU check (< 8 min on one GPU): CUDA end to end with AMP, invariance under AMP, img/s per family,
    jobs packed on a GPU. Writes runs/gpu/gpu_check.{json,md}; `nox -s gpu -- --cpu-smoke` tries it on the CPU."""
    install(session)
    session.run("python", "tests/gpu/gpu_check.py", "--out", "runs/gpu", *session.posargs)


@nox.session
def slurm(session: nox.Session) -> None:
    """Job arrays on a real one-node Slurm cluster (tests/slurm_cluster.py) with a real PostgreSQL server.

    Installs Debian's slurm-wlm, munge and postgresql when missing (needs root, as slurmd does). Bounded: the
    whole session stops after 20 minutes.
    """
    wanted = [package for package, binary in (("slurm-wlm", "slurmctld"), ("munge", "munged"))
              if shutil.which(binary) is None]
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")):
        wanted.append("postgresql")
    if wanted:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", *wanted, external=True,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    install(session)
    session.run("timeout", "1200", "python", "-m", "pytest", "-q", "-ra", "-s", "-m", "slurm", "tests/test_slurm.py",
                *session.posargs, external=True)

"""Faults that are nobody's job's fault: the database away, a disk full. They stop the runner, never fail a job.

A job that meets one is given back (interrupted, resumable from its last good checkpoint) and the runner stops with
its own exit code (runner/exit_codes.py), so a plain rerun continues once the cause is gone.
"""
from __future__ import annotations


class DatabaseAway(Exception):
    """The database could not be reached for longer than the retry bound; the message names the server."""


class DiskFull(OSError):
    """A write failed for lack of space; the message names the folder and the space it needed."""

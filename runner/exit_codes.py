"""Process exit codes of `python -m runner`, in one place so every module that exits agrees on them.

| code | meaning |
|---|---|
| 0 | every job done (or nothing to do) |
| 1 | some job failed; the others still ran (`show JOB` prints the traceback; `--retry-failed` reruns them) |
| 2 | bad input: spec, data, database URL or cluster profile; nothing was written |
| 3 | jobs remain with runners that are alive (here or on another host): not finished, not lost |
| 4 | the database stayed away past the retry bound (`--db-retry-seconds`): nothing failed; rerun once it is back |
| 5 | a disk filled up: the job was given back whole (last good checkpoint kept); free space, then rerun |
| 130 | interrupted (Ctrl-C, SIGTERM, Slurm's warning signal): rerun the same command to resume |
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STILL_RUNNING = 3
EXIT_DATABASE_AWAY = 4
EXIT_DISK_FULL = 5
EXIT_INTERRUPTED = 130

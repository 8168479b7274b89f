"""Where a command finds its run state: the options every sub-command shares (main.py and infer.py)."""
from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    return Path(os.environ.get("RUNNER_ROOT", "runs"))


def db_url(args) -> str:
    return args.db or f"sqlite:///{Path(args.root) / 'results.db'}"

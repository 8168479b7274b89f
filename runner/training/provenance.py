"""Where a result came from: code version, packages, machine. Stored with every job."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "escnn", "numpy", "h5py", "scikit-learn", "sqlalchemy", "equivariant-pathology-runner")


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding `folder`; (None, None) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def package_versions() -> str:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return json.dumps(versions, sort_keys=True)


def slurm_placement() -> dict[str, object]:
    """The Slurm job id, array task id and node running this process (None outside Slurm)."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return {"slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
            "slurm_array_task_id": int(task) if task and task.isdigit() else None,
            "slurm_node": os.environ.get("SLURMD_NODENAME")}


def collect(device: str) -> dict[str, object]:
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return {"git_commit": commit, "git_dirty": dirty, "packages_json": package_versions(), "device": device,
            "hostname": socket.gethostname(), **slurm_placement()}

"""Cluster profiles and the checks made before a Slurm submission: every problem at once, exit 2, nothing written.

The real submissions are in tests/test_slurm.py (`nox -s slurm`).
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runner import cli
from runner.executors.cluster import ClusterError, read_profile
from runner.executors.slurm import sbatch_parameters
from tests.test_e2e import TINY, write

REFERENCE = Path(__file__).parent / "reference" / "slurm_submission.sh"
PROFILE = """
[slurm]
partition = "gpu"
gpus_per_task = 1
cpus_per_task = 8
mem_gb = 32
time_min = 240
workers = 16
sbatch = ["--account=lab", "#SBATCH --qos=normal", "--exclusive"]
setup = ["module load cuda", "source /lab/env/bin/activate"]
python = "/lab/env/bin/python"
"""


def test_profile_with_command_line_overrides(tmp_path):
    path = write(tmp_path, PROFILE, "lab.toml")
    profile = read_profile(path, {"partition": "preempt", "workers": None, "sbatch": ["--constraint=a100"],
                                  "setup": []})
    assert (profile.partition, profile.workers, profile.gpus_per_task, profile.mem_gb) == ("preempt", 16, 1, 32.0)
    assert profile.sbatch_parameters() == {"account": "lab", "qos": "normal", "exclusive": True,
                                           "constraint": "a100"}
    assert profile.setup == ("module load cuda", "source /lab/env/bin/activate")


def test_the_sbatch_script_matches_the_reference(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes for an array

    profile = read_profile(write(tmp_path, PROFILE, "lab.toml"), {})
    script = _make_sbatch_string(command="/lab/env/bin/python -u -m submitit.core._submit /runs/slurm",
                                 folder="/runs/slurm", map_count=profile.workers,
                                 **sbatch_parameters(profile, "d4_grid"))
    assert script == REFERENCE.read_text()


def test_a_bad_profile_lists_every_problem_and_writes_nothing(tmp_path, capsys):
    bad = PROFILE.replace("cpus_per_task = 8", "cpus_per_task = 0").replace("mem_gb = 32", 'mem_gb = "lots"') \
        .replace('"--exclusive"', '"exclusive"') + "colour = 'blue'\n"
    profile = write(tmp_path, bad, "lab.toml")
    root = tmp_path / "runs"
    assert cli.main([str(write(tmp_path, TINY)), "--root", str(root), "--cluster", str(profile)]) == 2
    err = capsys.readouterr().err
    assert "lab.toml: 4 problems" in err
    for text in ("slurm.cpus_per_task: 0 must be >= 1", "slurm.mem_gb: 'lots' is not a number",
                 "slurm.sbatch: 'exclusive' is not an sbatch option", "slurm.colour: unknown key; allowed:",
                 "partition, gpus_per_task"):
        assert text in err, text
    assert not root.exists()
    with pytest.raises(ClusterError, match=r"slurm: missing"):
        read_profile(write(tmp_path, "", "empty.toml"), {})
    with pytest.raises(ClusterError, match=r"cluster: unknown section; allowed: \[slurm\]"):
        read_profile(write(tmp_path, "[cluster]\n", "other.toml"), {})


def test_a_profile_that_is_not_utf8_is_bad_input_naming_the_file(tmp_path):
    profile = tmp_path / "lab.toml"
    profile.write_bytes('[slurm]\npartition = "café"\n'.encode("latin-1"))
    root = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "runner", str(write(tmp_path, TINY)), "--root", str(root),
                           "--cluster", str(profile)], cwd=REFERENCE.parents[2], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (f"{profile}: 1 problem in the cluster settings\n  (file): is not UTF-8 text (byte 0xe9 at line 2, "
            "column 17, position 24); save it as UTF-8") in done.stderr
    assert "Traceback" not in done.stderr and not root.exists()


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Slurm's client commands as scripts; `sinfo` lists the nodes written to its file."""
    folder = tmp_path / "bin"
    folder.mkdir()
    nodes = tmp_path / "nodes.txt"
    for name in ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo"):
        script = folder / name
        script.write_text(f"#!/bin/sh\ncat {nodes}\n" if name == "sinfo" else "#!/bin/sh\nexit 0\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return nodes


def test_sqlite_is_refused_when_tasks_may_run_on_other_hosts(tmp_path, capsys, fake_slurm):
    from runner.executors.slurm import check_ready

    fake_slurm.write_text("node01\nnode02\n")
    spec, root = write(tmp_path, TINY), tmp_path / "runs"
    assert cli.main([str(spec), "--root", str(root), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "--db" in err and "postgresql://USER@HOST/DB" in err and "local = true" in err
    assert not root.exists()
    profile = read_profile(None, {})
    check_ready(profile, "postgresql://lab@db/runs", "command line")  # a shared server: fine
    check_ready(read_profile(write(tmp_path, "[slurm]\nlocal = true\n", "local.toml"), {}), "sqlite:///r.db", "x")
    fake_slurm.write_text("localhost\n")  # a one-node cluster on this very host
    check_ready(profile, "sqlite:///r.db", "command line")


def test_without_slurm_commands_the_submission_is_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    root = tmp_path / "runs"
    assert cli.main([str(write(tmp_path, TINY)), "--root", str(root), "--executor", "slurm",
                     "--db", "postgresql://lab@db/runs"]) == 2
    assert "sbatch, srun, squeue, scontrol, scancel not found on PATH" in capsys.readouterr().err
    assert not root.exists()

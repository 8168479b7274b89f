"""Where Slurm array tasks run and with what resources: a cluster profile TOML, written once per lab, plus
command-line options that override it. None of it is part of a job's identity.

    [slurm]
    partition = "gpu"          # sbatch --partition
    gpus_per_task = 1          # GPUs for each array task (0: CPU only)
    cpus_per_task = 8
    mem_gb = 32                # memory per task
    time_min = 240             # time limit per task; a task checkpoints and requeues itself before it
    workers = 16               # array size: how many tasks claim jobs from the database at once
    signal_delay_s = 120       # Slurm sends USR2 this long before the limit (sbatch --signal)
    sbatch = ["--account=lab", "--qos=normal"]   # extra #SBATCH lines
    setup = ["module load cuda", "source /lab/env/bin/activate"]  # shell lines run before the worker
    local = false              # true: every task runs on this host (then a SQLite database is allowed)
    python = "/lab/env/bin/python"  # the interpreter on the nodes (default: the one submitting)
"""
from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.spec.toml_file import TomlFileError, load_toml

SBATCH_LINE = re.compile(r"^(#SBATCH\s+)?--([a-z][a-z0-9-]*)(?:[= ](.+))?$")


@dataclass(frozen=True)
class ClusterProfile:
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    time_min: int = 60
    workers: int = 1
    signal_delay_s: int = 120
    sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    local: bool = False
    python: str = field(default_factory=lambda: sys.executable)

    def sbatch_parameters(self) -> dict[str, Any]:
        """The extra lines as submitit's additional_parameters: {'account': 'lab', 'exclusive': True}."""
        out: dict[str, Any] = {}
        for line in self.sbatch:
            _, name, value = SBATCH_LINE.match(line.strip()).groups()
            out[name.replace("-", "_")] = True if value is None else value.strip()
        return out


class ClusterError(Exception):
    """A cluster profile or option with problems; str() names the file, each key and what is allowed."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' * (len(problems) != 1)} in the cluster settings"]
        lines += [f"  {key}: {message}" for key, message in problems]
        lines.append("Nothing was submitted or written. Fix the keys above and run again.")
        super().__init__("\n".join(lines))


# key -> (type, lowest allowed value or None)
NUMBERS: dict[str, tuple[type, float]] = {
    "gpus_per_task": (int, 0), "cpus_per_task": (int, 1), "mem_gb": (float, 0.1), "time_min": (int, 1),
    "workers": (int, 1), "signal_delay_s": (int, 0),
}
KEYS = tuple(f.name for f in dataclasses.fields(ClusterProfile))


def read_profile(path: str | Path | None, overrides: dict[str, Any], source: str = "command line") -> ClusterProfile:
    """The profile at `path` (if any) with `overrides` (options given on the command line, None = not given)."""
    values: dict[str, Any] = {}
    where = source
    if path is not None:
        values, where = _load(Path(path)), str(path)
    given = {k: v for k, v in overrides.items() if v not in (None, (), [])}
    for key in ("sbatch", "setup"):  # lines from the command line add to the profile's
        if key in given:
            given[key] = [*values.get(key, []), *given[key]]
    values.update(given)
    problems = _problems(values)
    if problems:
        raise ClusterError(where, problems)
    values = {k: tuple(v) if k in ("sbatch", "setup") else v for k, v in values.items()}
    values.update({k: float(values[k]) for k in ("mem_gb",) if k in values})
    return ClusterProfile(**values)


def _load(path: Path) -> dict[str, Any]:
    try:
        _, data = load_toml(path)
    except TomlFileError as exc:
        raise ClusterError(str(path), [(exc.key, exc.message)]) from None
    extra = sorted(set(data) - {"slurm"})
    if extra or not isinstance(data.get("slurm"), dict):
        raise ClusterError(str(path), [(key, "unknown section; allowed: [slurm]") for key in extra]
                           or [("slurm", "missing: the profile's settings go in a [slurm] table")])
    return dict(data["slurm"])


def _problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    problems = [(f"slurm.{k}", f"unknown key; allowed: {', '.join(KEYS)}") for k in values if k not in KEYS]
    for key, (kind, low) in NUMBERS.items():
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            problems.append((f"slurm.{key}", f"{value!r} is not {'an integer' if kind is int else 'a number'}"))
        elif value < low:
            problems.append((f"slurm.{key}", f"{value!r} must be >= {low:g}"))
    for key in ("partition", "python"):
        if key in values and not (isinstance(values[key], str) and values[key].strip()):
            problems.append((f"slurm.{key}", f"{values[key]!r} must be a non-empty string"))
    if "local" in values and not isinstance(values["local"], bool):
        problems.append(("slurm.local", f"{values['local']!r} must be true or false"))
    problems += _line_problems(values)
    return problems


def _line_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for key in ("sbatch", "setup"):
        lines = values.get(key, [])
        if not isinstance(lines, (list, tuple)) or not all(isinstance(x, str) for x in lines):
            problems.append((f"slurm.{key}", "must be a list of strings"))
    for line in values.get("sbatch", []) if not problems else []:
        if not SBATCH_LINE.match(line.strip()):
            problems.append(("slurm.sbatch", f"{line!r} is not an sbatch option; write it as '--name=value' "
                                             "or '--flag' (e.g. '--account=lab', '--exclusive')"))
    return problems

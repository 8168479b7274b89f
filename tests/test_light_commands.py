"""Commands that only read a spec or the database import neither torch nor escnn (about 3 s of a 4 s command).

Each command runs as its own process under `python -X importtime`, whose log names every module imported; the
log's module column is parsed exactly, and a control run that does load torch and escnn proves the parse sees them.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.spec import read_spec
from runner.spec.identity import expand
from runner.store import Database

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "escnn")
TYPO_SPEC = """
[experiment]
name = "light"
task = "classification"
seedz = [0]

[[model]]
family = "cnn"
"""
BAD_VALUE_SPEC = """
[experiment]
name = "light"
task = "classification"

[[model]]
family = "gcnn"
group = "D4x"
width = -1
"""


def imported_modules(log: str) -> list[str]:
    """The module column of `-X importtime` lines: `import time: <self us> | <cumulative us> | <indented name>`."""
    modules = []
    for line in log.splitlines():
        if not line.startswith("import time:"):
            continue
        name = line.split("|")[2].strip()
        if name != "imported package":  # the header line
            modules.append(name)
    return modules


def heavy_modules(log: str) -> list[str]:
    return [m for m in imported_modules(log) if m.split(".")[0] in HEAVY]


def run_timed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A run root whose database holds one experiment with queued jobs (nothing trained)."""
    root = tmp_path_factory.mktemp("light")
    jobs = expand(read_spec(ROOT / "specs" / "quickstart.toml", []))
    rows = [(job.key, job.label, job.config.to_dict()) for job in jobs]
    Database(f"sqlite:///{root / 'results.db'}").sync_experiment("quickstart", "classification",
                                                                 "specs/quickstart.toml", "", rows)
    (root / "typo.toml").write_text(TYPO_SPEC)
    (root / "bad_value.toml").write_text(BAD_VALUE_SPEC)
    return root


def test_the_log_parser_sees_torch_and_escnn_when_they_load():
    result = run_timed("-c", "from equiv.build_cache import load_escnn; load_escnn()")
    assert result.returncode == 0, result.stderr[-2000:]
    found = {m.split(".")[0] for m in heavy_modules(result.stderr)}
    assert found == set(HEAVY)
    assert "torch" in imported_modules(result.stderr)


def test_the_log_parser_reads_the_module_column_exactly():
    log = ("import time: self [us] | cumulative | imported package\n"
           "import time:       120 |        120 |   torchlike\n"
           "import time:        12 |        900 |     torch.nn\n"
           "import time:         5 |          5 | runner.torch_free\n"
           "a line that mentions torch but is not an import line\n")
    assert imported_modules(log) == ["torchlike", "torch.nn", "runner.torch_free"]
    assert heavy_modules(log) == ["torch.nn"]


# (arguments after `python -m runner`, expected exit code, text the output must hold)
COMMANDS = {
    "help": (["--help"], 0, "jobs by status per experiment"),
    "status": (["status", "--root", "{root}"], 0, "quickstart"),
    "show": (["show", "1", "--root", "{root}"], 0, "cnn s0"),
    "schema": (["schema"], 0, "$schema"),
    "spec typo": (["{root}/typo.toml", "--root", "{root}"], 2, "experiment.seedz: unknown key"),
    "spec bad value": (["{root}/bad_value.toml", "--root", "{root}"], 2, "unknown group 'D4x'"),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_command_imports_neither_torch_nor_escnn(root, name):
    args, code, expected = COMMANDS[name]
    result = run_timed("-m", "runner", *(a.format(root=root) for a in args))
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-2000:]
    assert expected in output
    assert imported_modules(result.stderr), "no import log: -X importtime did not apply"
    heavy = heavy_modules(result.stderr)
    assert not heavy, f"{len(heavy)} torch/escnn modules imported, the first: {heavy[:3]}"


def test_equiv_package_api_is_lazy():
    code = ("import sys, equiv, equiv.hparams, equiv.group_names; "
            "assert 'torch' not in sys.modules; "
            "assert equiv.parse_group('D4').name == 'D4'; "
            "equiv.checks.invariance_errors; equiv.export_eval; "
            "assert 'torch' in sys.modules")
    result = run_timed("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]

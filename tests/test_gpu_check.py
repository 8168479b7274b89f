"""The prepared GPU check, run here in its CPU smoke mode: every part's code path, budgets, records and report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "gpu" / "gpu_check.py"


def run_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=600)


def test_a_part_over_its_budget_is_recorded_and_the_next_part_still_runs(tmp_path):
    done = run_check(tmp_path, "--cpu-smoke", "--parts", "amp_invariance,throughput",
                     "--part-budget", "amp_invariance=1")
    assert done.returncode == 1, done.stdout + done.stderr  # a timed-out part fails the run
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    amp, speed = report["parts"]["amp_invariance"], report["parts"]["throughput"]
    assert amp["status"] == "timeout" and "budget of 1 s" in amp["error"]
    assert speed["status"] == "ok", speed
    models = [row["model"] for row in speed["rows"]]
    assert models == ["cnn trivial", "gcnn C4", "unet trivial"]
    assert all(row["fp32"] > 0 and row["amp+both"] > 0 for row in speed["rows"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "## amp_invariance: timeout" in markdown and "| gcnn C4 " in markdown
    assert markdown in done.stdout  # the table is printed too


@pytest.mark.parametrize("args, message", [
    (["--parts", "e2e,warp"], "unknown warp; allowed: e2e, amp_invariance"),
    (["--part-budget", "e2e=soon"], "expected PART=SECONDS"),
])
def test_bad_arguments_exit_2_naming_the_allowed_values_and_write_nothing(tmp_path, args, message):
    done = run_check(tmp_path / "out", "--cpu-smoke", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.heavy
def test_every_part_passes_in_cpu_smoke_mode(tmp_path):
    done = run_check(tmp_path, "--cpu-smoke")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failing = {name: part for name, part in report["parts"].items()
               if part["status"] != "ok" or not all(c["passed"] for c in part["checks"])}
    assert not failing, failing
    assert done.returncode == 0
    e2e = report["parts"]["e2e"]["rows"]
    assert [r["job"] for r in e2e] == ["cnn s0", "gcnn C4 s0", "gcnn D4 s0"]
    assert all(r["device"] == "cpu" and r["status"] == "done" for r in e2e)
    packing = report["parts"]["packing"]["rows"]
    assert [r["workers"] for r in packing] == [1, 2] and all(r["done"] == r["jobs"] == 2 for r in packing)
    assert all(r["peak_mib_sum"] > 0 for r in packing)
    compiled = report["parts"]["compile_d4"]["rows"][0]
    assert compiled["compiled"] > 0 and compiled["compile_s"] is not None


@pytest.mark.heavy
def test_the_full_size_part_runs_every_step_in_its_cpu_smoke_mode(tmp_path):
    """About 4 minutes on 2 cores (five runner commands and a calibration): `nox -s heavy` runs it."""
    done = run_check(tmp_path, "--cpu-smoke", "--parts", "fullsize")
    part = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["fullsize"]
    assert part["status"] == "ok", done.stdout[-3000:] + done.stderr[-3000:]
    what = [row["what"] for row in part["rows"]]
    assert what[0] == "PCam-format files written"
    for model in ("cnn trivial", "gcnn D4"):
        runner = next(r for r in part["rows"] if r["what"] == f"{model}: runner training")
        assert runner["value"] > 0 and runner["versus"] > 0  # the runner's rate beside the bare model's
    assert [w for w in what if w.startswith("--workers")] == ["--workers 1: jobs per hour", "--workers 2: jobs per hour"]
    assert any(w.endswith("expected device time") for w in what)
    # every step ran; the speed ratio itself is a GPU target (on 2 shared cores it is noise around 1)
    assert all(c["passed"] for c in part["checks"] if "bare model" not in c["name"]), part["checks"]


def test_the_full_size_part_is_not_in_the_default_run():
    sys.path.insert(0, str(SCRIPT.parent))
    from gpu_check import PARTS, parse_args

    assert "fullsize" in {p.name for p in PARTS}
    assert "fullsize" not in parse_args(["--out", "x"]).parts.split(",")

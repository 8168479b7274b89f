"""End to end through `python -m runner`: a tiny real run, rerun skipping, reports, failures, kills and resumes."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner import cli
from runner.training import loop
from runner.training.device import threads_per_worker

ROOT = Path(__file__).resolve().parents[1]
TINY = """
[experiment]
name = "tiny"
seeds = [0, 1]
[data]
train_size = 64
valid_size = 32
test_size = 32
[train]
epochs = 2
batch_size = 16
[eval]
rotation_angles = [0, 45, 90]
rotation_samples = 16
[[model]]
family = "cnn"
width = 4
depth = 2
[[model]]
family = "gcnn"
group = "C4"
width = 4
depth = 1
"""
# One job, many batches per epoch, a checkpoint after every batch: room to be killed mid-epoch (an epoch takes
# a few tenths of a second on 2 cores, so the kill below lands inside the second one).
RESUMABLE = """
[experiment]
name = "resume"
seeds = [3]
[data]
train_size = 256
valid_size = 32
test_size = 32
[train]
epochs = 3
batch_size = 8
checkpoint_minutes = 0.0001
[augment]
geometric = "d4"
[eval]
rotation_angles = [0, 90]
rotation_samples = 16
[[model]]
family = "cnn"
width = 4
depth = 2
dropout = 0.2
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def query(root: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(root / "results.db") as con:
        return con.execute(sql).fetchall()


def runner_process(spec: Path, root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "runner", str(spec), "--root", str(root), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_tiny_run_records_everything_then_skips_and_reports(tmp_path, capsys):
    spec, root = write(tmp_path, TINY), tmp_path / "runs"
    assert cli.main([str(spec), "--root", str(root)]) == 0
    assert query(root, "select status, count(*) from jobs group by status") == [("done", 4)]
    metrics = dict(query(root, "select name, count(*) from final_metrics group by name"))
    for name in ("test_accuracy", "test_auc", "test_nll", "test_f1", "invariance_error", "grid_error", "rot45_error",
                 "train_images_per_s"):
        assert metrics[name] == 4, name
    assert query(root, "select count(distinct epoch) from epoch_metrics") == [(2,)]
    assert query(root, "select count(*) from rotation_metrics where name = 'accuracy'") == [(4 * 3,)]
    assert query(root, "select count(*) from jobs where git_commit is null or packages_json is null") == [(0,)]
    # the G-CNN is invariant to its own rotations; the CNN is not invariant to them
    errors = dict(query(root, "select j.family || ':' || f.name, max(f.value) from final_metrics f join jobs j "
                              "using (job_id) group by j.family, f.name"))
    assert errors["gcnn:invariance_error"] < 1e-4 < errors["cnn:grid_error"]
    capsys.readouterr()

    assert cli.main([str(spec), "--root", str(root)]) == 0
    assert "4 of 4 jobs already done" in capsys.readouterr().out
    assert query(root, "select max(attempts) from jobs") == [(1,)]

    assert cli.main(["report", "--root", str(root)]) == 0
    written = {p.suffix for p in (root / "report").rglob("*") if p.is_file()}
    assert {".md", ".png", ".html"} <= written
    capsys.readouterr()

    assert cli.main(["status", "--root", str(root)]) == 0
    assert "tiny" in capsys.readouterr().out
    assert cli.main(["show", "1", "--root", str(root)]) == 0
    shown = capsys.readouterr().out
    assert "done" in shown and '"family": "cnn"' in shown
    assert re.search(r"^test: accuracy=[0-9.]+, auc=", shown, re.M) and "calibration bins (non-empty): " in shown
    assert "calib_bin" not in shown  # thirty bin metrics on one line of their own
    assert cli.main(["show", "zzz", "--root", str(root)]) == 2


def test_dry_run_and_bad_spec_write_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    assert cli.main([str(write(tmp_path, TINY)), "--root", str(root), "--dry-run"]) == 0
    assert "4 jobs (dry run)" in capsys.readouterr().out
    bad = write(tmp_path, TINY.replace("epochs = 2", "epochs = -2"), "bad.toml")
    assert cli.main([str(bad), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "train.epochs" in err and ">= 1" in err
    assert not root.exists()


def test_impossible_synthetic_sizes_are_bad_input(tmp_path, capsys):
    root = tmp_path / "runs"
    assert cli.main([str(write(tmp_path, TINY)), "--root", str(root), "data.test_size=0"]) == 2
    assert "at least 2 samples" in capsys.readouterr().err
    assert not root.exists()


def test_missing_pcam_folder_is_bad_input(tmp_path, capsys):
    root = tmp_path / "runs"
    code = cli.main([str(write(tmp_path, TINY)), "--root", str(root), "data.source=pcam",
                     f"data.root={tmp_path / 'nowhere'}"])
    assert code == 2 and "nowhere" in capsys.readouterr().err
    assert not root.exists()


def test_a_failing_job_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    real_build = loop.build

    def build(config, *args):
        if config.model.family == "gcnn":
            raise RuntimeError("injected failure: out of memory")
        return real_build(config, *args)

    monkeypatch.setattr(loop, "build", build)
    spec, root = write(tmp_path, TINY), tmp_path / "runs"
    assert cli.main([str(spec), "--root", str(root), "train.epochs=1"]) == 1
    rows = query(root, "select family, status, error, traceback from jobs order by job_id")
    assert [(f, s) for f, s, _, _ in rows] == [("cnn", "done")] * 2 + [("gcnn", "failed")] * 2
    assert all("injected failure" in e and "Traceback" in t for _, s, e, t in rows if s == "failed")
    monkeypatch.setattr(loop, "build", real_build)
    assert cli.main([str(spec), "--root", str(root), "train.epochs=1", "--retry-failed"]) == 0
    assert query(root, "select status, count(*) from jobs group by status") == [("done", 4)]


def final_metrics(root: Path) -> dict[str, float]:
    rows = query(root, "select name, value from final_metrics where name like 'test_%' or name like 'valid_%'")
    return dict(rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, float]:
    tmp = tmp_path_factory.mktemp("reference")
    assert cli.main([str(write(tmp, RESUMABLE)), "--root", str(tmp / "runs")]) == 0
    return final_metrics(tmp / "runs")


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"runner ended early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the runner")
        time.sleep(0.05)


def epochs_recorded(root: Path) -> int:
    try:
        return query(root, "select count(distinct epoch) from epoch_metrics")[0][0]
    except sqlite3.OperationalError:  # the database does not exist yet
        return 0


def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(tmp_path, reference):
    spec, root = write(tmp_path, RESUMABLE), tmp_path / "runs"
    proc = runner_process(spec, root)
    wait_for(lambda: epochs_recorded(root) >= 1, proc)
    time.sleep(0.1)  # into the second epoch, between per-batch checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert query(root, "select status from jobs") == [("running",)]  # a zombie until someone notices
    # A plain rerun: the dead runner was on this host, so its job is taken over at once, not after 5 minutes.
    assert cli.main([str(spec), "--root", str(root)]) == 0
    assert query(root, "select status, attempts from jobs") == [("done", 2)]
    assert final_metrics(root) == reference


def test_sigterm_checkpoints_marks_interrupted_and_resumes(tmp_path, reference):
    spec, root = write(tmp_path, RESUMABLE), tmp_path / "runs"
    proc = runner_process(spec, root)
    wait_for(lambda: epochs_recorded(root) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert query(root, "select status from jobs") == [("interrupted",)]
    assert cli.main([str(spec), "--root", str(root)]) == 0
    assert final_metrics(root) == reference


def test_workers_run_jobs_in_parallel_processes_dividing_the_cores(tmp_path, capfd):
    spec, root = write(tmp_path, RESUMABLE.replace("seeds = [3]", "seeds = [3, 4]")), tmp_path / "runs"
    assert cli.main([str(spec), "--root", str(root), "--workers", "2", "train.epochs=1"]) == 0
    rows = query(root, "select status, attempts, worker from jobs")
    assert [(s, a) for s, a, _ in rows] == [("done", 1)] * 2
    assert all(w.endswith((":0", ":1")) for _, _, w in rows)  # claimed by the pool's workers
    # Each worker reports its share of the cores and its own peak memory (each job's peak starts at its start).
    reports = re.findall(r"worker (\d) on cpu \((\d+) CPU threads\): (\d) jobs, peak memory (\d+) MiB", capfd.readouterr().out)
    assert reports and all(int(threads) == threads_per_worker(2) for _, threads, _, _ in reports)
    assert sum(int(jobs) for _, _, jobs, _ in reports) == 2 and all(int(peak) > 0 for *_, peak in reports)


def test_two_processes_on_one_spec_never_run_a_job_twice(tmp_path):
    spec, root = write(tmp_path, TINY.replace('group = "C4"', 'group = "flip"')), tmp_path / "runs"
    procs = [runner_process(spec, root, "train.epochs=1") for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    # The runner that ends first may leave the other's last job running: exit 3, naming it, not "all done".
    codes = [p.returncode for p in procs]
    assert sorted(codes) in ([0, 0], [0, 3]), outputs
    assert all("still running with other runners" in out for code, out in zip(codes, outputs) if code == 3)
    assert query(root, "select status, attempts, count(*) from jobs group by status, attempts") == [("done", 1, 4)]


SEGMENTATION = """
[experiment]
name = "tiny-seg"
task = "segmentation"
seeds = [0]
[data]
image_size = 32
train_size = 32
valid_size = 8
test_size = 8
[train]
epochs = 1
batch_size = 8
[eval]
rotation_angles = [0, 90]
rotation_samples = 8
[[model]]
family = "unet"
width = 4
depth = 1
kernel_size = 3
[[model]]
family = "gunet"
group = "C4"
width = 4
depth = 1
kernel_size = 3
"""


def test_segmentation_runs_records_and_reports_both_families(tmp_path, capsys):
    spec, root = write(tmp_path, SEGMENTATION), tmp_path / "runs"
    assert cli.main([str(spec), "--root", str(root)]) == 0
    rows = dict(query(root, "select j.family || ':' || f.name, f.value from final_metrics f join jobs j using (job_id)"))
    for family in ("unet", "gunet"):
        for name in ("test_dice", "test_iou", "test_object_f1", "equivariance_error", "grid_error"):
            assert f"{family}:{name}" in rows, (family, name)
    assert rows["gunet:equivariance_error"] < 1e-4 < rows["unet:grid_error"]
    capsys.readouterr()
    assert cli.main(["report", "--root", str(root)]) == 0
    table = (root / "report" / "tiny-seg" / "table.md").read_text()
    assert "unet" in table and "gunet" in table and "Test Dice" in table


def test_runner_root_env_and_missing_database(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUNNER_ROOT", str(tmp_path / "elsewhere"))
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "elsewhere" / "results.db") in err and "run a spec first" in err
    assert cli.main(["status", "--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "none.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # looking wrote nothing


def test_device_request_that_cannot_be_honoured_is_bad_input(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root = tmp_path / "runs"
    assert cli.main([str(write(tmp_path, TINY)), "--root", str(root), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not root.exists()

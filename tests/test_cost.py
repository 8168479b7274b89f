"""The cost estimate of `--dry-run`: the images a spec trains, the pruner's expected share, and device time from a
calibration kept under the run root (runner/cost/)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cost.estimate import CALIBRATION_FILE, Part, Row
from runner.cost.work import (
    INVARIANCE_PASSES,
    INVARIANCE_SAMPLES,
    TTA_COPIES,
    asha_rungs,
    expected_epochs,
    spec_work,
    trial_configs,
)
from runner.spec.parse import read_spec
from runner.spec.search import Distribution, SearchSpec

ROOT = Path(__file__).resolve().parents[1]

GRID = """
[experiment]
name = "costed"
seeds = [0, 1]
[data]
source = "synthetic"
train_size = 100
valid_size = 50
test_size = 40
fraction = 0.5
image_size = 32
[train]
epochs = 3
batch_size = 16
[eval]
rotation_angles = [0, 90]
rotation_samples = 30
[[model]]
family = "cnn"
width = 4
depth = 2
[[model]]
family = "gcnn"
group = "D4"
width = 4
depth = 2
"""

STUDY = GRID.replace("seeds = [0, 1]", "seeds = [0]") + """
[search]
sampler = "random"
trials = 5
prune = "asha"
min_epochs = 1
reduction_factor = 2
[search.space]
"train.lr" = { log = [1e-4, 1e-2] }
"model.width" = { int = [4, 8], step = 2 }
[final]
seeds = [0, 1, 2]
"""


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def search(**kw) -> SearchSpec:
    return SearchSpec(**{"prune": "asha", "min_epochs": 1, "reduction_factor": 2, "trials": 2, **kw})


# ---- images ------------------------------------------------------------------------------------------------------

def test_grid_work_counts_every_image_a_job_trains_and_evaluates(tmp_path):
    work = spec_work(read_spec(spec_file(tmp_path, GRID)))
    # two seeds of one configuration cost the same: one row of two jobs per model
    assert [(w.stage, w.model, w.count, w.epochs) for w in work] == [("grid", "cnn", 2.0, 3.0),
                                                                      ("grid", "gcnn D4", 2.0, 3.0)]
    symmetry = INVARIANCE_SAMPLES * INVARIANCE_PASSES
    cnn, d4 = (Part(config=w.configs[0], sizes=None, rate=None) for w in work)
    from runner.cost.work import split_sizes
    sizes = split_sizes("classification", work[0].configs[0]["data"])
    assert (sizes.train, sizes.valid, sizes.test) == (50, 50, 40)  # fraction 0.5 of 100
    cnn, d4 = (Part(config=p.config, sizes=sizes, rate=None) for p in (cnn, d4))
    # validation 3 x 50, test 40, rotation 2 angles x 30, symmetry checks; the plain CNN also its 8 TTA copies
    assert cnn.images(3.0) == (150, 150 + 40 + 60 + symmetry + TTA_COPIES * 40)
    assert d4.images(3.0) == (150, 150 + 40 + 60 + symmetry)  # D4 holds all eight grid elements: no TTA


def test_rates_turn_images_into_seconds(tmp_path):
    work = spec_work(read_spec(spec_file(tmp_path, GRID)))[0]
    from runner.cost.work import Sizes
    rate = {"train_images_per_s": 100.0, "eval_images_per_s": 200.0, "job_seconds": 2.0, "epoch_seconds": 0.5}
    part = Part(config=work.configs[0], sizes=Sizes(train=100, valid=50, test=40), rate=rate)
    trained, evaluated = part.images(3.0)
    assert part.seconds(3.0) == pytest.approx(2.0 + trained / 100 + evaluated / 200 + 3 * 0.5)
    other = Part(config=work.configs[0], sizes=part.sizes, rate={**rate, "job_seconds": 4.0})
    row = Row(work=work, parts=(part, other))
    assert row.seconds == pytest.approx(2 * (part.seconds(3.0) + 1.0))  # the mean of its parts, times two jobs
    assert Row(work=work, parts=(part, Part(config=work.configs[0], sizes=None, rate=rate))).seconds is None


def test_a_study_costs_its_trials_at_both_ends_of_the_cost_keys_and_reuses_trained_final_seeds(tmp_path):
    work = spec_work(read_spec(spec_file(tmp_path, STUDY)))
    stages = [(w.stage, w.model, w.count) for w in work]
    # 5 trials x 1 seed per model; the final re-trains seeds 1 and 2 (seed 0 is the winning trial's own job)
    assert stages == [("search", "cnn", 5), ("search", "gcnn D4", 5), ("final", "cnn", 2), ("final", "gcnn D4", 2)]
    low, high = work[0].configs
    assert (low["model"]["width"], high["model"]["width"]) == (4, 8)
    assert low["train"]["lr"] == high["train"]["lr"] == pytest.approx(1e-3)  # not a cost key: the centre
    assert work[0].epochs < 3  # ASHA stops some trials early


def test_trial_configs_without_cost_keys_is_one_config():
    config = {"train": {"lr": 1.0}, "model": {"width": 8}}
    space = (("train.lr", Distribution(kind="log", low=1e-4, high=1e-2)),)
    assert trial_configs(config, search(space=space)) == ({"train": {"lr": pytest.approx(1e-3)}, "model": {"width": 8}},)


# ---- the pruner's share ------------------------------------------------------------------------------------------

def test_without_pruning_every_trial_runs_every_epoch():
    assert expected_epochs(search(prune="none", trials=7), 5) == 5.0


def test_asha_two_trials_matches_the_exact_expectation():
    # Rung at epoch 1: the first trial always goes on (2 epochs); the second goes on iff it beats the first
    # (probability 1/2), else stops after 1 epoch: (2 + 1.5) / 2 = 1.75.
    assert asha_rungs(search(), 2) == [1]
    assert expected_epochs(search(trials=2), 2) == pytest.approx(1.75, abs=0.05)


def test_asha_many_trials_approach_the_halving_share():
    # Rungs at 1 and 3 of 9 epochs with factor 3: a third passes the first, a ninth the second, so a trial runs
    # 1 + 1/3 * 2 + 1/9 * 6 = 2.33 epochs on average (n // 3 keeps a little fewer than a third of n rivals).
    s = search(trials=300, reduction_factor=3)
    assert asha_rungs(s, 9) == [1, 3]
    assert expected_epochs(s, 9, draws=20) == pytest.approx(7 / 3, rel=0.05)
    assert expected_epochs(search(trials=300, reduction_factor=3, min_epochs=3), 9, draws=20) == pytest.approx(
        3 + 6 / 3, rel=0.05)  # one rung, at epoch 3


def test_median_two_trials_matches_the_exact_expectation():
    # The first trial completes (3 epochs); the second stops after epoch 1 iff it is below the first (1/2).
    s = search(prune="median", trials=2, startup_trials=1, min_epochs=1)
    assert expected_epochs(s, 3) == pytest.approx((3 + 0.5 * 1 + 0.5 * 3) / 2, abs=0.05)


def test_median_pruning_prunes_more_as_completed_trials_get_better():
    # Only completed trials set the median, and those are the better ones: later trials stop more often than half.
    s = search(prune="median", trials=100, startup_trials=5, min_epochs=1)
    assert expected_epochs(s, 4, draws=20) < 4 - 0.5 * 3


# ---- the command -------------------------------------------------------------------------------------------------

def test_dry_run_without_rates_states_the_images_and_how_to_measure(tmp_path):
    root = tmp_path / "root"
    done = run_cli(spec_file(tmp_path, GRID), "--dry-run", "--root", root)
    assert done.returncode == 0, done.stderr
    assert "expected work" in done.stdout and "No measured rate on cpu" in done.stdout
    assert "with --calibrate" in done.stdout
    assert not root.exists()  # a plain dry run writes nothing


def test_calibrate_measures_once_and_a_later_dry_run_reuses_the_rates(tmp_path):
    root = tmp_path / "root"
    spec = spec_file(tmp_path, GRID)
    first = run_cli(spec, "--calibrate", "--root", root)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("calibrating ") == 2  # one per distinct model: seeds share a rate
    assert "Expected device time" in first.stdout
    assert not (root / "results.db").exists()  # nothing was run
    stored = json.loads((root / CALIBRATION_FILE).read_text())
    rates = next(iter(stored["rates"].values()))
    assert len(rates) == 2 and all(r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0 for r in rates.values())
    before = (root / CALIBRATION_FILE).read_bytes()
    again = run_cli(spec, "--dry-run", "--root", root)
    assert again.returncode == 0 and "calibrating" not in again.stdout and "Expected device time" in again.stdout
    assert (root / CALIBRATION_FILE).read_bytes() == before
    (root / CALIBRATION_FILE).write_text("{ not json")  # a damaged file costs a re-measurement, not a crash
    broken = run_cli(spec, "--dry-run", "--root", root)
    assert broken.returncode == 0 and "No measured rate" in broken.stdout


def test_a_folder_of_own_patches_is_counted_from_its_listing_without_writing(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("adipose", "stroma", "tumour"):
        (tmp_path / "patches" / name).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "patches" / name /
                                                                                    f"{i}.png")
    text = GRID.replace('source = "synthetic"', f'source = "folder"\nroot = "{tmp_path / "patches"}"').replace(
        "train_size = 100\nvalid_size = 50\ntest_size = 40\nfraction = 0.5\nimage_size = 32\n",
        "train_size = 0\nvalid_size = 0\ntest_size = 0\n")
    root = tmp_path / "root"
    done = run_cli(spec_file(tmp_path, text), "--dry-run", "--root", root)
    assert done.returncode == 0, done.stderr
    # 60 patches split 70/15/15: 42 / 9 / 9; 3 epochs x 42 trained per job, 2 seeds per model
    rows = [line for line in done.stdout.splitlines() if line.startswith("│ grid")]
    assert len(rows) == 2 and all("│     252 │" in row for row in rows), done.stdout
    assert not root.exists()

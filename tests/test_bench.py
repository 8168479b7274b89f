"""The performance benchmark's pieces on tiny sizes: what they build and how they attribute time (not speed)."""
from __future__ import annotations

import pytest
import torch

import equiv
from runner.bench import TARGETS, table
from runner.bench.models import SpeedSizes, escnn_recipe, group_rows, interleaved_speeds, plain_net
from runner.bench.profile import KINDS, profile_step
from equiv.checks import invariance_errors, smooth_images


def test_escnn_recipe_has_the_fields_asked_for_and_its_own_symmetry_only_approximately():
    model = escnn_recipe("C4", (2, 3)).eval()
    convs = [m for m in model.features.modules() if type(m).__name__ == "R2Conv"]
    assert [(len(c.out_type), c.out_type.size) for c in convs] == [(2, 2 * 4), (3, 3 * 4)]
    x = smooth_images(2, 32)
    assert model(x).shape == (2, 2)
    # Its pooling is not centred on even maps: invariant to rounding no more, which is why ours exists.
    errors = invariance_errors(model, x, group=equiv.parse_group("C4"))
    assert max(errors.values()) > 1e-5


def test_group_rows_compare_our_gcnn_with_same_shape_nets():
    row = group_rows("D4", SpeedSizes(batch=2, image=32, rounds=1))
    ours = equiv.build_model("gcnn", "D4", 3, 2)
    assert row["fields"] == str(ours.fields)
    assert row["channels"] == str(tuple(8 * f for f in ours.fields))  # D4's regular field: 8 channels
    assert row["vs_recipe"] == pytest.approx(row["ours_img_s"] / row["recipe_img_s"])
    assert all(row[k] > 0 for k in ("ours_img_s", "recipe_img_s", "plain_blur_img_s", "plain_avg_img_s"))


def test_plain_net_has_the_expanded_channel_shape():
    net = plain_net((8, 12), torch.nn.Identity)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 12]
    assert interleaved_speeds({"net": net}, SpeedSizes(batch=2, image=16, rounds=2))["net"] > 0


@pytest.mark.parametrize("family, group, expected", [
    ("cnn", "trivial", {"convolution", "pooling", "normalisation", "nonlinearity", "head", "optimiser", "data"}),
    ("gcnn", "C4", {"convolution", "basis expansion", "pooling", "normalisation", "nonlinearity", "head"}),
])
def test_profile_attributes_every_kind_of_work_once(family, group, expected):
    shares = profile_step(family, group, batch=4, image=32, steps=1, width=4, depth=2)
    assert set(shares) == {*KINDS, "other"}
    assert all(shares[kind] > 0 for kind in expected), shares
    assert sum(v for k, v in shares.items() if k != "other") <= 1.05  # nothing counted twice
    if family == "cnn":
        assert shares["basis expansion"] == 0


def test_table_states_each_target_and_whether_it_is_met():
    results = {
        "models": [{"group": "trivial (cnn)", "ours_img_s": 95.0, "plain_avg_img_s": 100.0, "vs_plain_avg": 0.95,
                    "average_vs_plain_avg": 1.0},
                   {"group": "D4", "fields": "(9, 17, 34)", "ours_img_s": 12.0, "recipe_img_s": 10.0,
                    "plain_avg_img_s": 13.0, "vs_recipe": 1.2, "vs_plain_avg": 0.92, "ours_average_img_s": 13.0,
                    "average_vs_recipe": 1.3, "average_vs_plain_avg": 1.0}],
        "overhead": {"runner_s": 10.2, "bare_s": 10.0, "overhead": 1.02, "wall_overhead": 1.04},
        "workers": {"workers": 2, "jobs": 4, "cpu_ratio": 1.3, "wall_ratio": 0.6},
        "profile": {"cnn": {"convolution": 0.6, "pooling": 0.1, "other": 0.3}},
    }
    lines = table(results).splitlines()
    assert lines[0] == "| measure | value | target | met |"
    assert lines[2].endswith("| 0.950x | >= 0.90x | yes |") and lines[3].endswith("| 1.000x | >= 0.90x | yes |")
    assert "| 1.200x | >= 1.00x | yes |" in lines[4] and "| 0.920x | >= 0.95x | no |" in lines[5]
    assert "pool=average" in lines[6] and lines[7].endswith("| 1.000x | >= 0.95x | yes |")
    assert "| 1.020x | <= 1.03x | yes |" in lines[8] and "| 1.300x | <= 1.10x | no |" in lines[9]
    assert "convolution 60%, other 30%, pooling 10%" in lines[10]
    assert set(TARGETS) == {"vs_recipe", "vs_plain_avg", "cnn_vs_plain_avg", "overhead", "cpu_ratio"}


@pytest.mark.heavy
def test_bench_command_prints_one_table_and_writes_json(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "latest.json"
    done = subprocess.run([sys.executable, "-m", "runner", "bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert results["table"].splitlines()[0] == "| measure | value | target | met |"
    assert results["table"].splitlines()[0] in done.stdout
    assert [row["group"] for row in results["models"]] == ["trivial (cnn)", "C4", "D4"]
    assert results["overhead"]["overhead"] > 0 and results["workers"]["cpu_ratio"] > 0
    assert set(results["profile"]) == {"cnn", "D4"}


def test_profile_step_prints_nothing_of_the_profilers_own_on_stderr():
    # torch's profiler backend (Kineto) logs each profile to stderr and, on a machine without a GPU, an ERROR
    # "gpuGetDeviceCount failed with code 35": a fresh process, since Kineto reads its log level once, at its start.
    import os
    import subprocess
    import sys

    code = ("from runner.bench.profile import profile_step\n"
            "profile_step('cnn', 'trivial', batch=2, image=16, steps=1, width=4, depth=1)\n")
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "gpuGetDeviceCount" not in result.stderr
    assert "profiler_start" not in result.stderr, result.stderr

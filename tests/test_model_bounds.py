"""The spec and the model constructors apply the same hyperparameter rules (equiv.hparams).

Before, `model.dropout = 1.0` passed the spec and then every job failed in the constructor (dropout < 1 there).
Here every family is built from the extreme values the spec admits, through the path a job takes (spec -> job
config -> model), and the first value beyond each extreme is refused by the spec and by the constructor alike.
"""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from equiv import ModelConfigError, build_model, parse_group
from equiv.hparams import RULES, Rule, rules_for
from equiv.segmentation import build_unet
from equiv.unet import UNetConfigError
from runner.spec.config import ModelSpec
from runner.spec.identity import expand
from runner.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]
# Regular fields (D4) and band-limited Fourier fields (SO2, where max_frequency matters) build differently. O2 is
# left out: at max_frequency 16 escnn's solvers take minutes on a cold cache (~210 s on 2 cores; 4 s warm).
GROUPS = {"cnn": ["trivial"], "gcnn": ["D4", "SO2"], "unet": ["trivial"], "gunet": ["D4", "SO2"]}
# Every model bound is closed, so each largest value is built as it is. A key given an open-ended bound later
# needs an entry here: the value built instead, small enough to build in seconds on CPU, with the reason.
OPEN_ENDED: dict[str, Any] = {}


def smallest(rule: Rule) -> Any:
    low = rule.bound.low
    assert low is not None and not rule.bound.low_open, "a new kind of lower bound: pick its smallest value here"
    return low + 1 if rule.odd and low % 2 == 0 else rule.kind(low)


def largest(key: str, rule: Rule) -> Any:
    high = rule.bound.high
    if high is None:
        return OPEN_ENDED[key]
    if rule.kind is float:
        return math.nextafter(high, -math.inf) if rule.bound.high_open else float(high)
    high = int(high) - rule.bound.high_open
    return high - 1 if rule.odd and high % 2 == 0 else high


def beyond(rule: Rule) -> list[Any]:
    """The first values outside the rule on each side (and an even kernel inside the interval)."""
    low, high = rule.bound.low, rule.bound.high
    step = 1 if rule.kind is int else 1e-6
    out = [low - step if not rule.bound.low_open else low, high if rule.bound.high_open else high + step]
    return out + ([smallest(rule) + 1] if rule.odd else [])


def spec_for(family: str, group: str, values: dict[str, Any]) -> dict[str, Any]:
    segmentation = family in ("unet", "gunet")
    # The spec's smallest image; a U-Net's side must also be divisible by 2**depth.
    side = max(16, 2 ** values.get("depth", 1)) if segmentation else 16
    return {"experiment": {"name": "bounds", "task": "segmentation" if segmentation else "classification"},
            "data": {"image_size": side}, "model": [{"family": family, "group": group, **values}]}


def cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    out = []
    for family, groups in GROUPS.items():
        rules = rules_for(family)
        low = {key: smallest(rule) for key, rule in rules.items()}
        for group in groups:
            out.append((family, group, "all smallest", low))
            # One key at its largest, the others at their smallest: each limit alone, and seconds per build.
            out += [(family, group, f"largest {key}", {**low, key: largest(key, rule)}) for key, rule in rules.items()]
    return out


def test_every_numeric_model_key_has_a_rule():
    numeric = {f.name for f in dataclasses.fields(ModelSpec) if f.type in ("int", "float")}
    assert set(RULES) == numeric


@pytest.mark.parametrize(("family", "group", "case", "values"), cases(),
                         ids=[f"{f}-{g}-{c}" for f, g, c, _ in cases()])
def test_extreme_legal_values_build_and_run(family, group, case, values):
    from runner.training.loop import build

    [job] = expand(parse_spec(spec_for(family, group, values), "bounds.toml"))
    model = build(job.config).eval()
    side = job.config.data.image_size
    with torch.no_grad():
        out = model(torch.randn(1, 3, side, side))
    assert out.shape == ((1, 2) if family in ("cnn", "gcnn") else (1, 1, side, side)), case


@pytest.mark.parametrize("family", list(GROUPS))
def test_values_beyond_each_limit_are_refused_by_the_spec_and_by_the_model(family):
    for key, rule in rules_for(family).items():
        for value in beyond(rule):
            expected = re.escape(f"model[0].{key}: got {value!r}; allowed") + ".*" + re.escape(rule.describe())
            with pytest.raises(SpecError, match=expected):
                parse_spec(spec_for(family, GROUPS[family][-1], {key: value}), "bounds.toml")
            with pytest.raises((ModelConfigError, UNetConfigError), match=re.escape(f"{key}={value!r}") + ".*allowed"):
                construct(family, GROUPS[family][-1], {key: value})


def construct(family: str, group: str, values: dict[str, Any]) -> torch.nn.Module:
    if family in ("unet", "gunet"):
        return build_unet(family, parse_group(group), 3, 1, **values)
    return build_model(family, group, 3, 2, **values)


def test_a_unet_refuses_the_depth_a_classifier_takes():
    raw = spec_for("unet", "trivial", {"depth": 7})
    raw["data"]["image_size"] = 896  # divisible by 2**7: only the depth itself is wrong
    with pytest.raises(SpecError, match=r"model\[0\]\.depth: got 7; allowed: integers >= 1 and <= 6"):
        parse_spec(raw, "seg.toml")
    space = {"model.depth": {"int": [2, 7]}}  # a search must not draw a depth the U-Net refuses either
    searched = {**raw, "model": [{"family": "unet"}], "search": {"trials": 2, "space": space}}
    with pytest.raises(SpecError, match=r'search\.space\."model\.depth": got 7; allowed: integers >= 1 and <= 6'):
        parse_spec(searched, "seg.toml")
    assert expand(parse_spec({**raw, "experiment": {"name": "c"}, "model": [{"family": "cnn", "depth": 7}]}, "c.toml"))


def test_dropout_one_is_refused_with_the_file_key_and_range(tmp_path):
    spec = tmp_path / "drop.toml"
    spec.write_text('[experiment]\nname = "d"\n[[model]]\nfamily = "cnn"\ndropout = 1.0\n')
    done = subprocess.run([sys.executable, "-m", "runner", str(spec), "--root", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{spec}: 1 problem in the spec" in done.stderr
    assert "model[0].dropout: got 1.0; allowed: numbers >= 0 and < 1" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


def test_the_rules_module_imports_neither_torch_nor_escnn():
    # Loaded as a file, not as equiv.hparams: the package's __init__ builds models and imports torch.
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('h', 'equiv/hparams.py'); "
            "m = sys.modules['h'] = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(sorted(n for n in ('torch', 'escnn') if n in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr

"""The allowed values of the model hyperparameters, in one place.

The spec validator (runner.spec.parse, runner.spec.json_schema) and the model constructors (equiv.build_model,
equiv.segmentation.build_unet) both read these, so a spec that validates is a model that builds: before, the spec took
`dropout = 1.0` and every job then failed in the constructor, which allowed only dropout < 1.

Standard library only: validating a spec must not import torch or escnn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MATCH_MODES = ("params", "channels")
POOLS = ("blur", "average")  # equiv.cnn.POOLS, named here so validation needs no torch
SEGMENTERS = ("unet", "gunet")


@dataclass(frozen=True)
class Bound:
    """An interval of numbers; `low_open` / `high_open` leave out the end point (`> low`, `< high`)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if math.isnan(value):  # NaN compares false with everything, so it would pass every bound below
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """'>= 1 and <= 1024', '>= 0 and < 1', '> 0'."""
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (low, high) if p)


@dataclass(frozen=True)
class Rule:
    """One numeric hyperparameter: its type, its interval and, for kernels, oddness."""

    kind: type  # int or float
    bound: Bound
    odd: bool = False
    why: str = ""  # said with the allowed values, when the limit is not obvious

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        return self.bound.admits(value) and not (self.odd and value % 2 == 0)

    def describe(self) -> str:
        """'integers >= 1 and <= 1024', 'odd integers >= 1 and <= 15 (...)', 'numbers >= 0 and < 1'."""
        noun = "integers" if self.kind is int else "numbers"
        text = f"{'odd ' if self.odd else ''}{noun} {self.bound.describe()}"
        return f"{text} ({self.why})" if self.why else text


_ODD_KERNEL = "an odd kernel keeps the sampling grid centred, which exact symmetry needs"
# The upper limits catch typos (width = 10000) and keep every legal model buildable: tests/test_model_bounds.py
# builds each family at every limit.
CLASSIFIER_RULES: dict[str, Rule] = {
    "width": Rule(int, Bound(1, 1024)),
    "depth": Rule(int, Bound(1, 8)),
    "kernel_size": Rule(int, Bound(1, 15), odd=True, why=_ODD_KERNEL),
    "dropout": Rule(float, Bound(0.0, 1.0, high_open=True)),  # p = 1 drops everything: nothing to learn from
    "max_frequency": Rule(int, Bound(1, 16)),
}
# A U-Net's bottleneck has width * 2**depth channels and its input side must be divisible by 2**depth.
SEGMENTER_RULES: dict[str, Rule] = {**CLASSIFIER_RULES, "depth": Rule(int, Bound(1, 6))}
# What a spec key admits before its family is known: the classifiers allow the widest range of every key.
RULES: dict[str, Rule] = CLASSIFIER_RULES
CHANNELS = Rule(int, Bound(1))  # in_channels and num_outputs of every constructor


def rules_for(family: str) -> dict[str, Rule]:
    return SEGMENTER_RULES if family in SEGMENTERS else CLASSIFIER_RULES


def problems(family: str, values: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, allowed values) for every value in `values` that `family` does not take; keys without a rule pass."""
    rules = {**rules_for(family), "in_channels": CHANNELS, "num_outputs": CHANNELS}
    return [(key, rules[key].describe()) for key, value in values.items()
            if key in rules and not rules[key].admits(value)]

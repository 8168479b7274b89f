"""Models for comparing plain CNNs with group-equivariant steerable CNNs: build, export, count.

    model = equiv.build_model("gcnn", "D4", in_channels=3, num_outputs=2, width=16)
    equiv.checks.invariance_errors(model, x)   # {"rot90": 3e-7, ...}

escnn (slow to import) is loaded only when an equivariant family is built.
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from equiv import checks
from equiv.export import export_eval
from equiv.groups import Group, GroupError, parse_group

__all__ = [
    "FAMILIES", "HPARAMS", "Group", "checks", "GroupError", "ModelConfigError", "build_model", "count_params", "export_eval",
    "parse_group",
]

FAMILIES = ("cnn", "gcnn", "unet", "gunet")
HPARAMS: dict[str, Any] = {
    "width": 16, "depth": 3, "kernel_size": 5, "dropout": 0.0, "match": "params", "max_frequency": 3,
    "pool": "blur",
}
_MATCH = ("params", "channels")
_POOLS = ("blur", "average")  # equiv.cnn.POOLS, named here so validation needs no torch module import


class ModelConfigError(ValueError):
    """A model family, group or hyperparameter that is not allowed; the message names it and the allowed values."""


def build_model(family: str, group: str, in_channels: int, num_outputs: int, **hparams: Any) -> nn.Module:
    """A model of `family` ("cnn" | "gcnn" | "unet" | "gunet") with the symmetry `group` (e.g. "D4").

    Takes (B, in_channels, H, W) float tensors; classifiers return (B, num_outputs) logits. The model's `group`
    attribute is its symmetry (trivial for the plain families). hparams: width, depth, kernel_size, dropout,
    match ("params": G-CNN fields chosen to match the CNN's parameter count within 10 %, "channels": as many
    fields as CNN channels), max_frequency (SO2/O2 band limit), pool ("blur": anti-aliased, the default;
    "average": 2x2 boxes on the same centred grid, as exact and cheaper; classifiers only).
    Raises ModelConfigError or GroupError.
    """
    if family not in FAMILIES:
        raise ModelConfigError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    max_frequency = hparams.get("max_frequency", HPARAMS["max_frequency"])
    # A bad max_frequency is reported with the other hparams below, not as a group error.
    valid_frequency = _is_int(max_frequency) and max_frequency >= 1
    parsed = parse_group(group, max_frequency) if valid_frequency else parse_group(group)
    if family in ("cnn", "unet") and parsed.kind != "trivial":
        raise ModelConfigError(f"family {family!r} has no symmetry: group must be 'trivial', got {group!r}; "
                               f"use family {'g' + family!r} for {group!r}")
    if family in ("unet", "gunet"):
        from equiv.unet import build_unet

        return build_unet(family, parsed, in_channels, num_outputs, **hparams)
    config = _validated(in_channels, num_outputs, hparams)
    return _build_classifier(family, parsed, in_channels, num_outputs, config)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (for a G-CNN: basis coefficients, not expanded filter entries)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _build_classifier(family: str, group: Group, in_channels: int, num_outputs: int,
                      config: dict[str, Any]) -> nn.Module:
    from equiv.cnn import CNN, Architecture

    arch = Architecture(config["width"], config["depth"], config["kernel_size"], float(config["dropout"]),
                        config["pool"])
    cnn = CNN(in_channels, num_outputs, arch)
    if family == "cnn":
        return cnn
    from equiv.gcnn import build_gcnn

    return build_gcnn(group, in_channels, num_outputs, arch, config["match"], count_params(cnn))


def _validated(in_channels: int, num_outputs: int, hparams: dict[str, Any]) -> dict[str, Any]:
    """hparams merged over the defaults; every problem is collected and reported in one ModelConfigError."""
    problems = [f"unknown hparam {key!r}; allowed: {', '.join(HPARAMS)}" for key in hparams if key not in HPARAMS]
    config = {**HPARAMS, **{k: v for k, v in hparams.items() if k in HPARAMS}}
    checks = {
        "in_channels": (in_channels, _is_int(in_channels) and in_channels >= 1, "an integer >= 1"),
        "num_outputs": (num_outputs, _is_int(num_outputs) and num_outputs >= 1, "an integer >= 1"),
        "width": (config["width"], _is_int(config["width"]) and config["width"] >= 1, "an integer >= 1"),
        "depth": (config["depth"], _is_int(config["depth"]) and config["depth"] >= 1, "an integer >= 1"),
        "kernel_size": (config["kernel_size"], _is_int(config["kernel_size"]) and config["kernel_size"] >= 1
                        and config["kernel_size"] % 2 == 1,
                        "an odd integer >= 1 (odd kernels keep the output centred, hence exact symmetry)"),
        "dropout": (config["dropout"], _is_number(config["dropout"]) and 0.0 <= config["dropout"] < 1.0,
                    "a number in [0, 1)"),
        "match": (config["match"], config["match"] in _MATCH, " or ".join(repr(m) for m in _MATCH)),
        "max_frequency": (config["max_frequency"], _is_int(config["max_frequency"]) and config["max_frequency"] >= 1,
                          "an integer >= 1"),
        "pool": (config["pool"], config["pool"] in _POOLS, " or ".join(repr(p) for p in _POOLS)),
    }
    problems += [f"{key}={value!r} is not allowed; allowed: {allowed}" for key, (value, ok, allowed) in checks.items()
                 if not ok]
    if problems:
        raise ModelConfigError("invalid model configuration: " + "; ".join(problems))
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


"""Models for comparing plain CNNs with group-equivariant steerable CNNs: build, export, count.

    model = equiv.build_model("gcnn", "D4", in_channels=3, num_outputs=2, width=16)
    equiv.checks.invariance_errors(model, x)   # {"rot90": 3e-7, ...}

escnn (slow to import) is loaded only when an equivariant family is built, and torch only when a model is built or
`checks` / `export_eval` is first used: the spec validator imports equiv.hparams and equiv.group_names, and a
command that only reads a spec or the database must not pay seconds for torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from equiv.group_names import PLAIN_FAMILIES, Group, GroupError, parse_group
from equiv.hparams import MATCH_MODES, POOLS, rules_for, problems as bad_hparams

if TYPE_CHECKING:
    from torch import nn

    from equiv import checks
    from equiv.export import export_eval

__all__ = [
    "FAMILIES", "HPARAMS", "Group", "checks", "GroupError", "ModelConfigError", "build_model", "count_params", "export_eval",
    "parse_group",
]
# Names that import torch, loaded on first use (PEP 562): name -> (module, attribute or None for the module).
_LAZY = {"checks": ("equiv.checks", None), "export_eval": ("equiv.export", "export_eval")}

FAMILIES = ("cnn", "gcnn", "unet", "gunet")
HPARAMS: dict[str, Any] = {
    "width": 16, "depth": 3, "kernel_size": 5, "dropout": 0.0, "match": "params", "max_frequency": 3,
    "pool": "blur",
}


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
    valid_frequency = rules_for(family)["max_frequency"].admits(max_frequency)
    parsed = parse_group(group, max_frequency) if valid_frequency else parse_group(group)
    if family in PLAIN_FAMILIES and parsed.kind != "trivial":
        raise ModelConfigError(f"family {family!r} has no symmetry: group must be 'trivial', got {group!r}; "
                               f"use family {'g' + family!r} for {group!r}")
    if family in ("unet", "gunet"):
        from equiv.segmentation import build_unet

        return build_unet(family, parsed, in_channels, num_outputs, **hparams)
    config = _validated(in_channels, num_outputs, hparams)
    return _build_classifier(family, parsed, in_channels, num_outputs, config)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'equiv' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    numbers = {"in_channels": in_channels, "num_outputs": num_outputs, **config}
    bad = dict(bad_hparams("cnn", numbers))
    bad.update({key: " or ".join(repr(c) for c in choices) for key, choices in
                (("match", MATCH_MODES), ("pool", POOLS)) if config[key] not in choices})
    problems += [f"{key}={numbers[key]!r} is not allowed; allowed: {allowed}" for key, allowed in bad.items()]
    if problems:
        raise ModelConfigError("invalid model configuration: " + "; ".join(problems))
    return config

"""Segmentation U-Nets: the plain U-Net (`unet`) and what it shares with the steerable one (`gunet`, equiv.gunet).

Both share one skeleton: `depth` 2x2 average poolings down, bilinear 2x up-sampling, skip concatenation, a 1x1 head
to per-pixel logits. Pooling and up-sampling act on each channel alone with a square-symmetric stencil, so on sizes
divisible by 2**depth they commute exactly with rot90 and flips whatever the field type; escnn's anti-aliased blur
pooling does not on even sizes, which is why it is not used. A `gunet` exports to the plain skeleton.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from equiv.group_names import Group
from equiv.hparams import MATCH_MODES, SEGMENTERS, problems as bad_hparams

FAMILIES = SEGMENTERS


class UNetConfigError(ValueError):
    """Bad build arguments; the message names every bad key with its allowed values."""


class UNetInputError(ValueError):
    """An input tensor the network cannot take (rank, channels, or a size not divisible by 2**depth)."""


@dataclass(frozen=True)
class UNetConfig:
    family: str
    group: Group
    in_channels: int
    num_outputs: int
    width: int = 8
    depth: int = 3
    kernel_size: int = 3
    dropout: float = 0.0
    match: str = "params"
    max_frequency: int = 3

    def plain_channels(self) -> list[int]:
        """Channels per level of the plain U-Net: width, 2 width, ..., 2**depth width (the bottleneck)."""
        return [self.width * 2**level for level in range(self.depth + 1)]


def validate(c: UNetConfig) -> None:
    """Collect every problem first, then raise one error listing them all."""
    problems = []
    if c.family not in FAMILIES:
        problems.append(f"family={c.family!r}: allowed {', '.join(FAMILIES)}")
    if not isinstance(c.group, Group):
        problems.append(f"group={c.group!r}: must be an equiv.groups.Group (use parse_group)")
    elif c.family == "unet" and c.group.kind != "trivial":
        problems.append(f"group={c.group.name!r} with family 'unet': allowed trivial (use 'gunet' for symmetry)")
    numbers = {key: getattr(c, key) for key in ("in_channels", "num_outputs", "width", "depth", "kernel_size",
                                                "dropout", "max_frequency")}
    problems += [f"{key}={numbers[key]!r}: allowed {allowed}" for key, allowed in bad_hparams("unet", numbers)]
    if c.match not in MATCH_MODES:
        problems.append(f"match={c.match!r}: allowed {', '.join(MATCH_MODES)}")
    if problems:
        raise UNetConfigError("bad U-Net arguments: " + "; ".join(problems))


# --- the shared plain skeleton ------------------------------------------------------------------------------------


class UNet(nn.Module):
    """Encoder blocks (the last is the bottleneck), decoder blocks taking cat(up-sampled, skip), a 1x1 head.

    Blocks are any torch modules; `equiv.segmentation.build_unet("unet", ...)` fills them with conv-BN-ReLU pairs and `GUNet.export()`
    with the exported steerable blocks.
    """

    def __init__(self, group: Group, in_channels: int, encoders: list[nn.Module], decoders: list[nn.Module],
                 head: nn.Module) -> None:
        super().__init__()
        self.group = group
        self.in_channels = in_channels
        self.depth = len(decoders)
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.depth)
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < self.depth:
                skips.append(x)
                x = down(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def up(x: torch.Tensor) -> torch.Tensor:
    # align_corners=False is mirror-symmetric, so it commutes with flips and rot90.
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def check_input(x: torch.Tensor, in_channels: int, depth: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise UNetInputError(f"expected a (B, {in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
    divisor = 2**depth
    if x.shape[-2] % divisor or x.shape[-1] % divisor:
        raise UNetInputError(
            f"input size {x.shape[-2]}x{x.shape[-1]} must be divisible by 2**depth = {divisor} (depth {depth})"
        )


def build_plain(c: UNetConfig) -> UNet:
    channels = c.plain_channels()
    encoders = [_plain_block(c.in_channels if lvl == 0 else channels[lvl - 1], channels[lvl], c)
                for lvl in range(c.depth + 1)]
    decoders = [_plain_block(channels[lvl + 1] + channels[lvl], channels[lvl], c) for lvl in reversed(range(c.depth))]
    return UNet(c.group, c.in_channels, encoders, decoders, nn.Conv2d(channels[0], c.num_outputs, 1))


def _plain_block(cin: int, cout: int, c: UNetConfig) -> nn.Sequential:
    pad = c.kernel_size // 2
    layers = [
        nn.Conv2d(cin, cout, c.kernel_size, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, c.kernel_size, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    ]
    if c.dropout > 0:
        layers.append(nn.Dropout2d(c.dropout))
    return nn.Sequential(*layers)


# --- parameter counting: the skeleton's formula, shared with equiv.gunet's matching -----------------------------------


@dataclass(frozen=True)
class ParamUnit:
    """Parameters per (input field, output field) pair of each conv kind, and per field of batch norm."""

    from_input: int  # in_channels trivial field -> one field, k x k
    field_to_field: int  # field -> field, k x k
    to_output: int  # field -> one trivial output, 1 x 1
    batch_norm: int


def skeleton_parameters(fields: list[int], unit: ParamUnit, in_channels: int, num_outputs: int) -> int:
    """Parameter count of the skeleton with `fields[level]` fields per level (exact for both families)."""
    depth = len(fields) - 1
    total = 0
    for level, n in enumerate(fields):
        incoming = in_channels * unit.from_input if level == 0 else fields[level - 1] * unit.field_to_field
        total += n * incoming + n * n * unit.field_to_field + 2 * n * unit.batch_norm
    for level in range(depth):
        n = fields[level]
        total += (fields[level + 1] + n) * n * unit.field_to_field + n * n * unit.field_to_field
        total += 2 * n * unit.batch_norm
    return total + fields[0] * num_outputs * unit.to_output + num_outputs


def _plain_unit(kernel_size: int) -> ParamUnit:
    k2 = kernel_size * kernel_size
    return ParamUnit(from_input=k2, field_to_field=k2, to_output=1, batch_norm=2)


def plain_parameters(c: UNetConfig) -> int:
    """The parameter count of the plain U-Net `equiv.segmentation.build_unet("unet", ...)` gives for `c`."""
    return skeleton_parameters(c.plain_channels(), _plain_unit(c.kernel_size), c.in_channels, c.num_outputs)

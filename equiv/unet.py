"""Segmentation U-Nets: a plain U-Net (`unet`) and a steerable, group-equivariant one (`gunet`, escnn).

Both share one skeleton: `depth` 2x2 average poolings down, bilinear 2x up-sampling, skip concatenation, a 1x1 head
to per-pixel logits. Pooling and up-sampling act on each channel alone with a square-symmetric stencil, so on sizes
divisible by 2**depth they commute exactly with rot90 and flips whatever the field type; escnn's anti-aliased blur
pooling does not on even sizes, which is why it is not used. A `gunet` exports to the plain skeleton.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from equiv.build_cache import load_escnn
from equiv.export import export_module
from equiv.groups import Group, gspace
from equiv.hparams import MATCH_MODES, SEGMENTERS, problems as bad_hparams
from equiv.init import he_init_

FAMILIES = SEGMENTERS
# How far the `gunet` parameter count may drift from the plain U-Net's under match="params".
PARAM_TOLERANCE = 0.10


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


def build_unet(
    family: str,
    group: Group,
    in_channels: int,
    num_outputs: int,
    *,
    width: int = 8,
    depth: int = 3,
    kernel_size: int = 3,
    dropout: float = 0.0,
    match: str = "params",
    max_frequency: int = 3,
) -> nn.Module:
    """A U-Net mapping (B, in_channels, H, W) floats to (B, num_outputs, H, W) logits, H and W divisible by 2**depth.

    `unet` needs the trivial group. `gunet` is equivariant to `group`; match="params" sizes it to within 10 % of the
    plain U-Net's parameter count, match="channels" gives it as many fields per level as the plain one has channels.
    The default width 8 keeps the default models near 120k parameters (a width-16 U-Net has ~490k), for CPU runs.
    """
    config = UNetConfig(family, group, in_channels, num_outputs, width, depth, kernel_size, dropout, match,
                        max_frequency)
    _validate(config)
    if family == "unet":
        return _build_plain(config)
    return GUNet(config)


def _validate(c: UNetConfig) -> None:
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

    Blocks are any torch modules; `build_unet("unet", ...)` fills them with conv-BN-ReLU pairs and `GUNet.export()`
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
        _check_input(x, self.in_channels, self.depth)
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < self.depth:
                skips.append(x)
                x = _down(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(torch.cat([_up(x), skip], dim=1))
        return self.head(x)


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def _up(x: torch.Tensor) -> torch.Tensor:
    # align_corners=False is mirror-symmetric, so it commutes with flips and rot90.
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _check_input(x: torch.Tensor, in_channels: int, depth: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise UNetInputError(f"expected a (B, {in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
    divisor = 2**depth
    if x.shape[-2] % divisor or x.shape[-1] % divisor:
        raise UNetInputError(
            f"input size {x.shape[-2]}x{x.shape[-1]} must be divisible by 2**depth = {divisor} (depth {depth})"
        )


def _build_plain(c: UNetConfig) -> UNet:
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


# --- the steerable U-Net ------------------------------------------------------------------------------------------


def _enn():
    # build_cache imports escnn quietly, once, with its solver caches and SVD fix in place.
    return load_escnn().nn


@dataclass(frozen=True)
class _FieldKind:
    """What one feature field is: regular (finite groups) or band-limited Fourier (SO2/O2) with FourierELU."""

    group: Group
    max_frequency: int

    @property
    def fourier(self) -> bool:
        return self.group.continuous

    @property
    def samples(self) -> int:
        # A multiple of 4 keeps rot90 (and, for O2, the grid flips) inside the sampling grid, so the nonlinearity
        # commutes exactly with them; >= 4 L + 1 samples keep the band-limited transform well conditioned.
        return 4 * math.ceil((4 * self.max_frequency + 1) / 4)

    def gspace(self):
        return gspace(replace(self.group, max_frequency=self.max_frequency) if self.fourier else self.group)

    def nonlinearity(self, fields: int):
        enn = _enn()
        gs = self.gspace()
        if self.fourier:
            irreps = gs.fibergroup.bl_irreps(self.max_frequency)
            return enn.FourierELU(gs, fields, irreps=irreps, N=self.samples, type="regular", inplace=True)
        return enn.ReLU(enn.FieldType(gs, [gs.regular_repr] * fields), inplace=True)

    def field_type(self, fields: int):
        return self.nonlinearity(fields).in_type

    def batch_norm(self, field_type):
        from equiv.norm import InnerBatchNorm

        return _enn().IIDBatchNorm2d(field_type) if self.fourier else InnerBatchNorm(field_type)


class GUNet(nn.Module):
    """Steerable U-Net: R2Conv-BN-nonlinearity pairs on regular (finite) or Fourier (SO2/O2) fields, invariant head.

    Takes and returns plain tensors; features travel as escnn GeometricTensors inside.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        enn = _enn()
        self.config = config
        self.group = config.group
        self.depth = config.depth
        kind = _FieldKind(config.group, config.max_frequency)
        self.fields = field_counts(config)
        gs = kind.gspace()
        self.in_type = enn.FieldType(gs, [gs.trivial_repr] * config.in_channels)
        types = [kind.field_type(n) for n in self.fields]
        self.encoders = nn.ModuleList(
            [_steerable_block(self.in_type if lvl == 0 else types[lvl - 1], self.fields[lvl], kind, config)
             for lvl in range(config.depth + 1)]
        )
        self.decoders = nn.ModuleList(
            [_steerable_block(types[lvl + 1] + types[lvl], self.fields[lvl], kind, config)
             for lvl in reversed(range(config.depth))]
        )
        # A 1x1 steerable conv to trivial fields is invariant per pixel (it keeps only the fields' invariant part).
        self.head = enn.R2Conv(types[0], enn.FieldType(gs, [gs.trivial_repr] * config.num_outputs), 1,
                               bias=True, initialize=False)
        _init_steerable(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enn = _enn()
        _check_input(x, self.config.in_channels, self.depth)
        g = enn.GeometricTensor(x, self.in_type)
        skips = []
        for level, encoder in enumerate(self.encoders):
            g = encoder(g)
            if level < self.depth:
                skips.append(g)
                g = enn.GeometricTensor(_down(g.tensor), g.type)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            g = decoder(enn.tensor_directsum([enn.GeometricTensor(_up(g.tensor), g.type), skip]))
        return self.head(g).tensor

    def export(self) -> UNet:
        """A plain torch U-Net with the same eval outputs (escnn's own export misses FourierELU and friends)."""
        was_training = self.training
        self.eval()
        try:
            return UNet(
                self.group,
                self.config.in_channels,
                [_export(block) for block in self.encoders],
                [_export(block) for block in self.decoders],
                _export(self.head),
            ).eval()
        finally:
            self.train(was_training)


def _steerable_block(in_type, fields: int, kind: _FieldKind, c: UNetConfig):
    enn = _enn()
    first, second = kind.nonlinearity(fields), kind.nonlinearity(fields)
    out_type = first.in_type
    pad = c.kernel_size // 2
    layers = [
        enn.R2Conv(in_type, out_type, c.kernel_size, padding=pad, bias=False, initialize=False),
        kind.batch_norm(out_type), first,
        enn.R2Conv(out_type, out_type, c.kernel_size, padding=pad, bias=False, initialize=False),
        kind.batch_norm(out_type), second,
    ]
    if c.dropout > 0:
        # Dropping whole fields keeps the layer equivariant in distribution, like Dropout2d on plain channels.
        layers.append(enn.FieldDropout(out_type, c.dropout))
    return enn.SequentialModule(*layers)


def _init_steerable(model: nn.Module) -> None:
    """escnn's generalised He init, computed per block instead of per coefficient (equiv.init): same weights."""
    for module in model.modules():
        if isinstance(module, _enn().R2Conv):
            he_init_(module)


def _export(module) -> nn.Module:
    """Plain torch equivalent (eval mode) of a block; dropout is the identity at eval time."""
    enn = _enn()
    if isinstance(module, enn.SequentialModule):
        return nn.Sequential(*[_export(m) for m in module.children()])
    if isinstance(module, enn.FieldDropout):
        return nn.Identity()
    return export_module(module)


# --- parameter matching -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """Parameters per (input field, output field) pair of each conv kind, and per field of batch norm."""

    from_input: int  # in_channels trivial field -> one field, k x k
    field_to_field: int  # field -> field, k x k
    to_output: int  # field -> one trivial output, 1 x 1
    batch_norm: int


def _count_parameters(fields: list[int], unit: _Unit, in_channels: int, num_outputs: int) -> int:
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


def _plain_unit(kernel_size: int) -> _Unit:
    k2 = kernel_size * kernel_size
    return _Unit(from_input=k2, field_to_field=k2, to_output=1, batch_norm=2)


@lru_cache(maxsize=None)
def _steerable_unit(kind: _FieldKind, kernel_size: int) -> _Unit:
    """Measured on one-field layers: escnn's basis sizes depend on the group, the field and the kernel size."""
    enn = _enn()
    gs = kind.gspace()
    one, trivial = kind.field_type(1), enn.FieldType(gs, [gs.trivial_repr])

    def weights(a, b, k: int) -> int:
        return enn.R2Conv(a, b, k, padding=k // 2, bias=False, initialize=False).weights.numel()

    bn = sum(p.numel() for p in kind.batch_norm(one).parameters())
    return _Unit(weights(trivial, one, kernel_size), weights(one, one, kernel_size), weights(one, trivial, 1), bn)


def predicted_parameters(c: UNetConfig, fields: list[int] | None = None) -> int:
    """The parameter count `build_unet` gives for `c` (fields per level for a gunet; default `field_counts(c)`)."""
    if c.family == "unet":
        return _count_parameters(c.plain_channels(), _plain_unit(c.kernel_size), c.in_channels, c.num_outputs)
    unit = _steerable_unit(_FieldKind(c.group, c.max_frequency), c.kernel_size)
    return _count_parameters(field_counts(c) if fields is None else fields, unit, c.in_channels, c.num_outputs)


def field_counts(c: UNetConfig) -> list[int]:
    """Fields per level of a `gunet`: the plain channel counts (match="channels") or the closest parameter match."""
    channels = c.plain_channels()
    if c.match == "channels":
        return channels
    target = predicted_parameters(replace(c, family="unet"))

    def miss(fields: list[int]) -> float:
        return abs(predicted_parameters(c, fields) / target - 1.0)

    # Scan a common scale for all levels (keeps the doubling shape), then nudge single levels by one field.
    scales = [0.02 * 1.01**i for i in range(600)]
    best = min(([max(1, round(s * ch)) for ch in channels] for s in scales), key=miss)
    improved = True
    while improved:
        improved = False
        for level in range(len(best)):
            for step in (-1, 1):
                trial = best[:level] + [max(1, best[level] + step)] + best[level + 1:]
                if miss(trial) < miss(best):
                    best, improved = trial, True
    return best

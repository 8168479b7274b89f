"""The steerable, group-equivariant U-Net (`gunet`, escnn) and its parameter matching to the plain U-Net.

It runs the plain skeleton of equiv.unet (pooling, up-sampling, skips, input checks) on escnn GeometricTensors:
R2Conv-BN-nonlinearity pairs on regular fields (finite groups) or band-limited Fourier fields (SO2/O2), with an
invariant 1x1 head. `GUNet.export()` gives the plain `UNet` with the same eval outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import nn

from equiv.build_cache import load_escnn
from equiv.export import export_module
from equiv.groups import Group, gspace
from equiv.init import he_init_
from equiv.unet import ParamUnit, UNet, UNetConfig, check_input, down, plain_parameters, skeleton_parameters, up

# How far the `gunet` parameter count may drift from the plain U-Net's under match="params".
PARAM_TOLERANCE = 0.10

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
        check_input(x, self.config.in_channels, self.depth)
        g = enn.GeometricTensor(x, self.in_type)
        skips = []
        for level, encoder in enumerate(self.encoders):
            g = encoder(g)
            if level < self.depth:
                skips.append(g)
                g = enn.GeometricTensor(down(g.tensor), g.type)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            g = decoder(enn.tensor_directsum([enn.GeometricTensor(up(g.tensor), g.type), skip]))
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


@lru_cache(maxsize=None)
def _steerable_unit(kind: _FieldKind, kernel_size: int) -> ParamUnit:
    """Measured on one-field layers: escnn's basis sizes depend on the group, the field and the kernel size."""
    enn = _enn()
    gs = kind.gspace()
    one, trivial = kind.field_type(1), enn.FieldType(gs, [gs.trivial_repr])

    def weights(a, b, k: int) -> int:
        return enn.R2Conv(a, b, k, padding=k // 2, bias=False, initialize=False).weights.numel()

    bn = sum(p.numel() for p in kind.batch_norm(one).parameters())
    return ParamUnit(weights(trivial, one, kernel_size), weights(one, one, kernel_size), weights(one, trivial, 1), bn)


def predicted_parameters(c: UNetConfig, fields: list[int] | None = None) -> int:
    """The parameter count `build_unet` gives for `c` (fields per level for a gunet; default `field_counts(c)`)."""
    if c.family == "unet":
        return plain_parameters(c)
    unit = _steerable_unit(_FieldKind(c.group, c.max_frequency), c.kernel_size)
    return skeleton_parameters(field_counts(c) if fields is None else fields, unit, c.in_channels, c.num_outputs)


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

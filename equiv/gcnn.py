"""The steerable G-CNN family (escnn): the CNN's macro-architecture with fields instead of channels.

Finite groups (trivial, flip, C<N>, D<N>) use regular fields with inner batch norm and ReLU; SO2/O2 use
band-limited Fourier fields (frequencies up to `max_frequency`) with IID batch norm and a Fourier ELU sampled on
a grid of rotations that contains the quarter turns, so rot90 and flips stay exact there too. The head is
invariant: group pooling (max over a regular field, norm of a Fourier field), global average pooling, dropout,
linear. Exactness on the pixel grid comes from odd kernels with symmetric padding and grid-centred pooling
(`BlurPool2d`, or `GridAvgPool2d` with pool="average"; see cnn.py).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from functools import lru_cache
from typing import Callable

import torch
from torch import nn

from equiv.build_cache import load_escnn, save_escnn_cache
from equiv.cnn import Architecture, classifier_head, make_pool
from equiv.groups import Group, gspace
from equiv.init import he_init_
from equiv.norm import InnerBatchNorm

escnn = load_escnn()
enn = escnn.nn


class FieldPool(enn.EquivariantModule):
    """A grid pooling of equiv.cnn (`BlurPool2d` or `GridAvgPool2d`) on every channel of a geometric tensor: a
    D4-symmetric spatial filter that mixes no channels."""

    def __init__(self, in_type: enn.FieldType, kind: str = "blur") -> None:
        super().__init__()
        self.space = in_type.gspace
        self.in_type = in_type
        self.out_type = in_type
        self.kind = kind
        self.pool = make_pool(kind)

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        return enn.GeometricTensor(self.pool(x.tensor), self.out_type)

    def evaluate_output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        batch, channels, height, width = shape
        return batch, channels, (height + 1) // 2, (width + 1) // 2

    def export(self) -> nn.Module:
        return make_pool(self.kind)


class GCNN(nn.Module):
    """Group-invariant classifier: (B, C, H, W) tensor in, (B, num_outputs) logits out."""

    def __init__(self, group: Group, in_channels: int, num_outputs: int, arch: Architecture,
                 fields: tuple[int, ...]) -> None:
        super().__init__()
        self.group = group
        self.arch = arch
        self.fields = fields
        space = gspace(group)
        self.in_type = enn.FieldType(space, in_channels * [space.trivial_repr])
        stages, current = [], self.in_type
        for count in fields:
            stages.append(_stage(group, current, count, arch.kernel_size, arch.pool))
            current = stages[-1].out_type
        self.stages = nn.ModuleList(stages)
        self.invariant = enn.NormPool(current) if group.continuous else enn.GroupPooling(current)
        self.head = classifier_head(len(current), num_outputs, arch.dropout)

    def feature_maps(self, x: torch.Tensor) -> list[enn.GeometricTensor]:
        """The equivariant feature map after each stage (for equivariance tests)."""
        maps, h = [], enn.GeometricTensor(x, self.in_type)
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.invariant(self.feature_maps(x)[-1]).tensor)

    def export(self) -> nn.Module:
        """A plain-torch copy for inference (eval mode); see equiv.export."""
        from equiv.export import export_module

        self.eval()
        parts = [export_module(stage) for stage in self.stages] + [export_module(self.invariant)]
        exported = nn.Sequential(*parts, copy.deepcopy(self.head)).eval()
        exported.group = self.group
        return exported


def build_gcnn(group: Group, in_channels: int, num_outputs: int, arch: Architecture, match: str,
               target_params: int) -> GCNN:
    """A G-CNN whose field counts match the CNN's parameter count (`params`) or its channel counts (`channels`)."""
    # escnn prints progress from its Clebsch-Gordan solver while a cold cache fills; keep library output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        if match == "channels":
            fields = arch.channels
        else:
            count = _param_counter(group, in_channels, num_outputs, arch)
            fields = match_fields(target_params, arch.channels, count)
        model = GCNN(group, in_channels, num_outputs, arch, fields)
    save_escnn_cache()
    return model


def match_fields(target: int, channels: tuple[int, ...], count: Callable[[tuple[int, ...]], int]) -> tuple[int, ...]:
    """Field counts closest to `target` parameters: scale all stages alike, then nudge stages by one field.

    Like e2cnn's fixparams, but solved exactly on the parameter count instead of a sqrt(|G|) rule of thumb.
    """
    scaled = {tuple(max(1, round(step / 200 * c)) for c in channels) for step in range(1, 801)}
    best = min(scaled, key=lambda fields: abs(count(fields) - target))
    improved = True
    while improved:
        improved = False
        for i in range(len(best)):
            for delta in (-1, 1):
                candidate = best[:i] + (best[i] + delta,) + best[i + 1:]
                if candidate[i] >= 1 and abs(count(candidate) - target) < abs(count(best) - target):
                    best, improved = candidate, True
    return best


def _param_counter(group: Group, in_channels: int, num_outputs: int,
                   arch: Architecture) -> Callable[[tuple[int, ...]], int]:
    """Exact parameter count of a G-CNN as a function of its field counts, without building it.

    A convolution between n_in and n_out copies of field types has n_in * n_out times the basis of one pair.
    """
    first, hidden, norm = _unit_params(group, arch.kernel_size)

    def count(fields: tuple[int, ...]) -> int:
        convs = in_channels * fields[0] * first + sum(a * b * hidden for a, b in zip(fields, fields[1:]))
        return convs + norm * sum(fields) + (fields[-1] + 1) * num_outputs

    return count


@lru_cache(maxsize=None)
def _unit_params(group: Group, kernel_size: int) -> tuple[int, int, int]:
    """Parameters of a conv from one scalar to one field, from one field to one field, and of one field's norm."""
    space = gspace(group)
    scalar = enn.FieldType(space, [space.trivial_repr])
    field = _activation(group, 1).in_type
    first = enn.R2Conv(scalar, field, kernel_size, bias=False, initialize=False)
    hidden = enn.R2Conv(field, field, kernel_size, bias=False, initialize=False)
    norm = _norm(group, field)
    return tuple(sum(p.numel() for p in m.parameters()) for m in (first, hidden, norm))


def _stage(group: Group, in_type: enn.FieldType, fields: int, kernel_size: int,
           pool: str = "blur") -> enn.SequentialModule:
    activation = _activation(group, fields)
    hidden = activation.in_type
    # Odd kernel and symmetric padding: the convolution commutes with rot90/flips of the whole map.
    conv = enn.R2Conv(in_type, hidden, kernel_size, padding=kernel_size // 2, bias=False, initialize=False)
    he_init_(conv)
    return enn.SequentialModule(conv, _norm(group, hidden), activation, FieldPool(hidden, pool))


def _activation(group: Group, fields: int) -> enn.EquivariantModule:
    space = gspace(group)
    if not group.continuous:
        return enn.ReLU(enn.FieldType(space, fields * [space.regular_repr]), inplace=True)
    irreps = space.fibergroup.bl_irreps(group.max_frequency)
    return enn.FourierELU(space, fields, irreps, type="regular", N=fourier_samples(group), inplace=True)


def fourier_samples(group: Group) -> int:
    """Rotations at which a Fourier field is sampled for the nonlinearity.

    About four samples per frequency keeps aliasing small; a multiple of 8 puts the quarter turns (exactness on
    the grid) and the 45 deg rotations on the sampling grid.
    """
    return 8 * math.ceil(max(16, 4 * group.max_frequency) / 8)


def _norm(group: Group, field_type: enn.FieldType) -> enn.EquivariantModule:
    return enn.IIDBatchNorm2d(field_type) if group.continuous else InnerBatchNorm(field_type)

"""The plain CNN baseline, the macro-architecture it shares with the G-CNN, and grid-symmetric blur pooling.

Why pooling decides exactness: a stride-2 layer keeps every other pixel. On an even-sized map that naively keeps
pixels 0, 2, ..., n-2, which are not symmetric about the map's centre (n-1)/2, so a 90 deg rotation of the input
is not a rotation of the output: a G-CNN's logits then drift by 1-3 %. `BlurPool2d` picks its window by parity so
that the kept samples are mirror-symmetric about the centre (radius 1 shown): on even sizes a 4-tap binomial [1,3,3,1] with one pixel
of padding (windows centred at 0.5, 2.5, ..., n-1.5), on odd sizes a 3-tap [1,2,1] (centred at 0, 2, ..., n-1).
Both filters are separable and D4-symmetric, so blur pooling commutes exactly with rot90 and flips at any input size,
and it low-passes before subsampling (Zhang 2019), which also helps off-grid rotations.

`pool = "average"` keeps the same centred sampling grid with box filters instead (2x2 on even sides, 3x3 with one
pixel of padding on odd sides): just as exact, a weaker low-pass, and cheaper: on CPU the 4x4 blur costs 10-13 %
of a D4 G-CNN training step, a 2x2 average a few per cent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from equiv.groups import Group, parse_group


@dataclass(frozen=True)
class Architecture:
    """Macro-architecture shared by both families: `depth` stages of conv + BN + nonlinearity + blur pooling.

    Stage i has width * 2**i channels (CNN) or a matched number of fields (G-CNN).
    """

    width: int = 16
    depth: int = 3
    kernel_size: int = 5
    dropout: float = 0.0
    pool: str = "blur"  # blur | average (see the module doc)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.width * 2**i for i in range(self.depth))


class BlurPool2d(nn.Module):
    """Anti-aliased stride-2 downsampling whose sampling grid is symmetric about the map centre (see module doc).

    radius r: binomial filters of 2r+1 taps (odd sizes) and 2r+2 taps (even sizes), r pixels of zero padding.
    """

    def __init__(self, radius: int = 1) -> None:
        super().__init__()
        self.radius = radius
        self.register_buffer("taps_odd", _binomial(2 * radius), persistent=False)
        self.register_buffer("taps_even", _binomial(2 * radius + 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, height, width = x.shape[-3:]
        kernel = torch.outer(self._taps(height), self._taps(width)).to(x.dtype)
        # Every channel gets the same filter, applied as one depthwise convolution (groups = channels): the same
        # sums as folding channels into the batch, but 2-4x faster forward and backward on CPU.
        weight = kernel.expand(channels, 1, *kernel.shape)
        return F.conv2d(x, weight, stride=2, padding=self.radius, groups=channels)

    def _taps(self, size: int) -> torch.Tensor:
        return self.taps_even if size % 2 == 0 else self.taps_odd


class GridAvgPool2d(nn.Module):
    """Stride-2 box averaging on the same centred grid as `BlurPool2d`: 2 taps on even sides, 3 (padded) on odd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tuple(2 if size % 2 == 0 else 3 for size in x.shape[-2:])
        # count_include_pad: the zero padding counts, as in BlurPool2d, so the map stays linear and symmetric.
        return F.avg_pool2d(x, kernel, stride=2, padding=tuple(k // 2 if k == 3 else 0 for k in kernel),
                            count_include_pad=True)


POOLS = {"blur": BlurPool2d, "average": GridAvgPool2d}


def make_pool(kind: str) -> nn.Module:
    """The stride-2 pooling named `kind` (a key of POOLS)."""
    return POOLS[kind]()


def _binomial(order: int) -> torch.Tensor:
    """Row `order` of Pascal's triangle, normalised: order+1 taps, symmetric, a discrete Gaussian."""
    taps = torch.tensor([math.comb(order, k) for k in range(order + 1)], dtype=torch.float32)
    return taps / taps.sum()


class CNN(nn.Module):
    """Plain CNN: stages of conv + batch norm + ReLU + blur pooling, global average pooling, dropout, linear head."""

    def __init__(self, in_channels: int, num_outputs: int, arch: Architecture) -> None:
        super().__init__()
        self.group: Group = parse_group("trivial")
        self.arch = arch
        layers: list[nn.Module] = []
        previous = in_channels
        for channels in arch.channels:
            layers += [
                # Odd kernel with symmetric padding keeps the output aligned with the input grid.
                nn.Conv2d(previous, channels, arch.kernel_size, padding=arch.kernel_size // 2, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                make_pool(arch.pool),
            ]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(previous, num_outputs, arch.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def classifier_head(features: int, num_outputs: int, dropout: float) -> nn.Sequential:
    """Global average pooling, dropout, linear.

    Dropout acts only on pooled (for the G-CNN: invariant) features, so with a fixed RNG state the same units
    are dropped for an input and its rotated copy, and train-mode invariance stays exact.
    """
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(features, num_outputs)
    )

"""Symmetry groups: spec names -> escnn gspaces, and group elements acting on image tensors.

A group is a name plus an integer, as in escnn (`rot2dOnR2(N)`): `trivial`, `flip`, `C<N>`, `D<N>`, `SO2`, `O2`.
The names and the Group value live in equiv.group_names (no torch), re-exported here for the model code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from equiv.group_names import VALID_FORMS, Group, GroupError, parse_group

__all__ = [
    "VALID_FORMS", "Group", "GridElement", "GroupError", "escnn_element", "grid_elements", "gspace", "parse_group",
    "rotate", "rotation_angles",
]


def _import_escnn():
    # Loaded through build_cache: it silences escnn's import warning, fixes its SVD and caches its solvers on disk.
    from equiv.build_cache import load_escnn

    return load_escnn().gspaces


@lru_cache(maxsize=None)
def gspace(group: Group):
    """The escnn gspace on R^2 for a group (cached: gspaces are immutable and costly to build)."""
    gspaces = _import_escnn()
    if group.kind == "trivial":
        return gspaces.trivialOnR2()
    if group.kind == "flip":
        return gspaces.flip2dOnR2()
    if group.kind == "C":
        return gspaces.rot2dOnR2(N=group.order)
    if group.kind == "D":
        return gspaces.flipRot2dOnR2(N=group.order)
    if group.kind == "SO2":
        return gspaces.rot2dOnR2(N=-1, maximum_frequency=max(6, 2 * group.max_frequency))
    return gspaces.flipRot2dOnR2(N=-1, maximum_frequency=max(6, 2 * group.max_frequency))


@dataclass(frozen=True)
class GridElement:
    """A group element that maps the pixel grid onto itself: `flip` (mirror the width axis) then rotate k*90 deg."""

    quarter_turns: int
    flip: bool

    @property
    def name(self) -> str:
        return f"rot{90 * self.quarter_turns}" + ("+flip" if self.flip else "")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Act on a (..., H, W) tensor: counter-clockwise rotation in the usual image display."""
        if self.flip:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, self.quarter_turns, dims=(-2, -1))


def escnn_element(group: Group, element: GridElement):
    """The element of the gspace's fibre group that acts on the plane as `element` does.

    escnn stores a dihedral/O(2) element as (flip, rotation), acting as the rotation after the flip, with the flip
    mirroring the X (width) axis for the gspaces built by `gspace` (reflection axis pi/2): the GridElement order.
    """
    if element not in grid_elements(group):
        raise GroupError(f"{element.name} is not an element of {group.name}; its grid elements: "
                         f"{', '.join(e.name for e in grid_elements(group))}")
    fibre = gspace(group).fibergroup
    flip = int(element.flip)
    if group.kind == "trivial":
        return fibre.identity
    if group.kind == "flip":
        return fibre.element(flip, "int")
    if group.continuous:
        angle = element.quarter_turns * math.pi / 2
        return fibre.element(angle, "radians") if group.kind == "SO2" else fibre.element((flip, angle), "radians")
    steps = element.quarter_turns * group.order // 4
    return fibre.element(steps, "int") if group.kind == "C" else fibre.element((flip, steps), "int")


def grid_elements(group: Group, include_identity: bool = True) -> list[GridElement]:
    """The group's elements that are exact on a square pixel grid: rotations by multiples of 90 deg, mirror flips."""
    turns = [k for k in range(4) if group.contains_rotation(90.0 * k)]
    flips = [False, True] if group.has_reflections else [False]
    elements = [GridElement(k, f) for f in flips for k in turns]
    return elements if include_identity else [e for e in elements if e.quarter_turns or e.flip]


def rotation_angles(group: Group, count: int = 16) -> list[float]:
    """Rotation angles (degrees) in the group that are NOT multiples of 90 deg, for off-grid error reports."""
    if group.continuous:
        return [360.0 * i / count for i in range(count) if (360.0 * i / count) % 90]
    step = 360.0 / group.rotation_order
    return [step * k for k in range(group.rotation_order) if (step * k) % 90]


def rotate(x: torch.Tensor, degrees: float, padding_mode: str = "reflection") -> torch.Tensor:
    """Rotate a (B, C, H, W) batch counter-clockwise by any angle, bilinear, keeping the size.

    Reflection padding fills the corners with tissue instead of black, which would itself be a cue.
    Multiples of 90 deg are done exactly with rot90.
    """
    quarter = degrees / 90.0
    if math.isclose(quarter, round(quarter), abs_tol=1e-9):
        return torch.rot90(x, int(round(quarter)) % 4, dims=(-2, -1))
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps output coords to input coords; this matrix rotates the content counter-clockwise
    # in display orientation (row index grows downwards), matching torch.rot90(k=1).
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(matrix.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)

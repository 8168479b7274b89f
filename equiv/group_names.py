"""Symmetry group names: the grammar a spec writes (`trivial`, `flip`, `C<N>`, `D<N>`, `SO2`, `O2`) and the Group value.

A group is a name plus an integer, as in escnn (`rot2dOnR2(N)`). Standard library only: the spec validator reads
group names through this module, so a spec with a typo is reported without importing torch or escnn (seconds).
equiv.groups adds the escnn gspaces and the group's action on image tensors.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

VALID_FORMS = "trivial, flip, C<N> (e.g. C4, C8, C16), D<N> (e.g. D4, D8), SO2, O2"
_PATTERN = re.compile(r"^(trivial|flip|SO2|O2|C(\d+)|D(\d+))$")

# Families without symmetry: they take only the trivial group; their equivariant twin is 'g' + family.
PLAIN_FAMILIES = ("cnn", "unet")


class GroupError(ValueError):
    """A group name that does not parse; the message lists the valid forms."""


@dataclass(frozen=True)
class Group:
    """A subgroup of O(2) acting on the plane.

    kind: one of trivial, flip, C, D, SO2, O2. order: N for C/D (1 for trivial, 2 for flip, 0 if continuous).
    max_frequency: band limit of the Fourier fields used for the continuous groups SO2 and O2.
    """

    kind: str
    order: int
    max_frequency: int = 3

    @property
    def name(self) -> str:
        return f"{self.kind}{self.order}" if self.kind in ("C", "D") else self.kind

    @property
    def continuous(self) -> bool:
        return self.kind in ("SO2", "O2")

    @property
    def has_reflections(self) -> bool:
        return self.kind in ("flip", "D", "O2")

    @property
    def rotation_order(self) -> int:
        """N for C_N/D_N, 1 for trivial/flip, 0 (meaning 'every angle') for SO2/O2."""
        if self.kind in ("C", "D"):
            return self.order
        return 0 if self.continuous else 1

    def contains_rotation(self, degrees: float) -> bool:
        """Whether rotating by `degrees` is an element of the group."""
        if self.continuous:
            return True
        step = 360.0 / self.rotation_order
        return math.isclose((degrees / step) % 1.0, 0.0, abs_tol=1e-9) or math.isclose(
            (degrees / step) % 1.0, 1.0, abs_tol=1e-9
        )


def parse_group(name: str, max_frequency: int = 3) -> Group:
    """Parse a spec's group name (`D4`, `SO2`, ...) into a Group, or raise GroupError listing the valid forms."""
    match = _PATTERN.match(str(name).strip())
    if match is None:
        raise GroupError(f"unknown group {name!r}; valid forms: {VALID_FORMS}")
    if max_frequency < 1:
        raise GroupError(f"max_frequency must be >= 1 for {name!r}, got {max_frequency}")
    text, c_order, d_order = match.groups()
    if c_order is not None or d_order is not None:
        order = int(c_order or d_order)
        if order < 1:
            raise GroupError(f"group order must be >= 1 in {name!r}; valid forms: {VALID_FORMS}")
        return Group(kind=text[0], order=order, max_frequency=max_frequency)
    order = {"trivial": 1, "flip": 2}.get(text, 0)
    return Group(kind=text, order=order, max_frequency=max_frequency)


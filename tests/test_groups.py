"""Group names, grid elements, rotations, and the escnn element that matches each grid element."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from equiv.build_cache import load_escnn
from equiv.groups import (
    VALID_FORMS, GridElement, GroupError, escnn_element, grid_elements, gspace, parse_group, rotate, rotation_angles,
)

GROUPS = ["trivial", "flip", "C4", "D4", "C8", "D8", "SO2", "O2"]


@pytest.mark.parametrize("name", ["trivial", "flip", "C1", "C4", "C8", "C16", "D1", "D4", "D8", "SO2", "O2", " D4 "])
def test_valid_forms_parse_and_round_trip(name):
    assert parse_group(name).name == name.strip()


@pytest.mark.parametrize("name", ["", "C", "D0", "C0", "c4", "SO3", "rot4", "C-4", "D4.0", "O(2)"])
def test_invalid_names_list_the_valid_forms(name):
    with pytest.raises(GroupError, match="valid forms: trivial, flip, C<N>"):
        parse_group(name)
    assert "SO2, O2" in VALID_FORMS


def test_max_frequency_must_be_positive():
    with pytest.raises(GroupError, match="max_frequency must be >= 1"):
        parse_group("SO2", max_frequency=0)


@pytest.mark.parametrize(
    ("name", "count"),
    [("trivial", 1), ("flip", 2), ("C3", 1), ("C4", 4), ("C6", 2), ("C8", 4), ("D4", 8), ("D6", 4), ("D8", 8),
     ("SO2", 4), ("O2", 8)],
)
def test_grid_elements_are_the_quarter_turns_and_flips_in_the_group(name, count):
    elements = grid_elements(parse_group(name))
    assert len(elements) == count == len(set(elements))
    assert elements[0] == GridElement(0, False)
    assert GridElement(0, False) not in grid_elements(parse_group(name), include_identity=False)


def test_rotation_angles_are_the_off_grid_rotations():
    assert rotation_angles(parse_group("C8")) == [45.0, 135.0, 225.0, 315.0]
    assert rotation_angles(parse_group("D4")) == []
    assert all(angle % 90 for angle in rotation_angles(parse_group("SO2")))


@given(st.integers(0, 3), st.booleans(), st.integers(1, 7), st.integers(1, 7))
def test_grid_elements_act_as_a_group(turns, flip, height, width):
    x = torch.randn(2, height, width)
    g = GridElement(turns, flip)
    # Flips are involutions, four quarter turns are the identity, and a flip reverses the sense of rotation.
    assert torch.equal(GridElement(0, True).apply(GridElement(0, True).apply(x)), x)
    assert torch.equal(GridElement(1, False).apply(GridElement(3, False).apply(x)), x)
    flipped_then_turned = GridElement(turns, True).apply(x)
    assert torch.equal(flipped_then_turned, GridElement(turns, False).apply(torch.flip(x, dims=(-1,))))
    assert g.apply(x).shape[-2:] == ((height, width) if turns % 2 == 0 else (width, height))


def _smooth_image(size: int = 64) -> torch.Tensor:
    x = torch.randn(1, 1, size, size)
    taps = torch.exp(-torch.arange(-8, 9.0) ** 2 / 18)
    x = F.conv2d(x, (taps / taps.sum()).view(1, 1, 1, -1), padding=(0, 8))
    return F.conv2d(x, (taps / taps.sum()).view(1, 1, -1, 1), padding=(8, 0))


def test_rotate_turns_the_same_way_as_rot90():
    x = _smooth_image()
    centre = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    nearly_quarter = rotate(x, 89.5)[centre]
    assert (nearly_quarter - torch.rot90(x, 1, dims=(-2, -1))[centre]).norm() < 0.1 * x[centre].norm()
    assert (nearly_quarter - torch.rot90(x, -1, dims=(-2, -1))[centre]).norm() > 0.5 * x[centre].norm()
    assert torch.equal(rotate(x, 270.0), torch.rot90(x, 3, dims=(-2, -1)))


@pytest.mark.parametrize("name", GROUPS)
def test_escnn_element_moves_the_plane_like_the_grid_element(name):
    group = parse_group(name)
    enn = load_escnn().nn
    space = gspace(group)
    scalar = enn.GeometricTensor(torch.randn(1, 1, 5, 6), enn.FieldType(space, [space.trivial_repr]))
    for element in grid_elements(group):
        moved = scalar.transform(escnn_element(group, element)).tensor
        assert torch.equal(moved, element.apply(scalar.tensor)), element.name


def test_escnn_element_rejects_elements_outside_the_group():
    with pytest.raises(GroupError, match="rot90 is not an element of flip; its grid elements: rot0, rot0\\+flip"):
        escnn_element(parse_group("flip"), GridElement(1, False))

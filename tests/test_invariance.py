"""Exact invariance of the G-CNNs on the pixel grid, equivariance of their feature maps, and the checks themselves."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import equiv
from equiv import build_model
from equiv.checks import centred_disk, smooth_images, equivariance_errors, invariance_errors, offgrid_errors, relative_error
from equiv.groups import escnn_element, grid_elements, parse_group, rotation_angles

GROUPS = ["trivial", "flip", "C4", "D4", "C8", "D8", "SO2", "O2"]
EXACT = 1e-5  # the requirement, on PCam's 96x96
# Other sizes are exact too, but float32 rounding in deep D8 stacks on small maps was measured at 1.6e-5
# (D8, depth 3, kernel 5, 33x33, eval): tolerate rounding there, still four orders below the plain CNN.
ROUNDING = {96: EXACT}


def tolerance(size: int) -> float:
    return ROUNDING.get(size, 5e-5)



def train_steps(model: nn.Module, steps: int, batch: int = 4) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        x, y = smooth_images(batch, seed=100 + step), torch.arange(batch) % 2
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()


@given(
    name=st.sampled_from(GROUPS), depth=st.integers(1, 3), width=st.integers(2, 6),
    kernel_size=st.sampled_from([3, 5]), size=st.sampled_from([96, 64, 33]), dropout=st.sampled_from([0.0, 0.5]),
)
def test_gcnn_logits_are_invariant_and_features_equivariant(name, depth, width, kernel_size, size, dropout):
    torch.manual_seed(0)
    model = build_model("gcnn", name, 3, 2, width=width, depth=depth, kernel_size=kernel_size, dropout=dropout)
    x = smooth_images(2, size)
    for training in (True, False):
        model.train(training)
        errors = invariance_errors(model, x)
        assert max(errors.values()) <= tolerance(size), (training, errors)
    model.eval()
    with torch.no_grad():
        reference = model.feature_maps(x)
        for element in grid_elements(model.group):
            moved = model.feature_maps(element.apply(x))
            for stage, (ours, theirs) in enumerate(zip(moved, reference)):
                expected = theirs.transform(escnn_element(model.group, element)).tensor
                assert relative_error(ours.tensor, expected) <= tolerance(size), (element.name, stage)


@pytest.mark.parametrize("name, size", [("C4", 96), ("D4", 96), ("D8", 33)])
def test_gcnn_with_average_pooling_is_exact_too(name, size):
    torch.manual_seed(0)
    model = build_model("gcnn", name, 3, 2, width=4, depth=3, pool="average")
    train_steps(model, 2)
    x = smooth_images(2, size)
    for training in (True, False):
        model.train(training)
        assert max(invariance_errors(model, x).values()) <= tolerance(size)
    exported = equiv.export_eval(model)
    torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-5)


def test_plain_cnn_is_not_invariant():
    """The same measurement fails for the CNN, so the property test above can fail."""
    torch.manual_seed(0)
    model = build_model("cnn", "trivial", 3, 2, width=4, depth=2, kernel_size=3).eval()
    errors = invariance_errors(model, smooth_images(2), group=parse_group("D4"))
    assert errors["rot0"] == 0.0
    assert min(v for k, v in errors.items() if k != "rot0") > 1e-3, errors


def test_acceptance_default_d4_gcnn_is_exact_before_and_after_training_and_the_cnn_is_not():
    x = smooth_images(2)
    for family, group in (("gcnn", "D4"), ("cnn", "trivial")):
        torch.manual_seed(0)
        model = build_model(family, group, 3, 2)
        measured = []
        for steps in (0, 2):
            train_steps(model, steps)
            for training in (True, False):
                model.train(training)
                measured.append(max(invariance_errors(model, x, group=parse_group("D4")).values()))
        if family == "gcnn":
            assert max(measured) <= EXACT, measured
        else:
            assert min(measured) >= 1e-2, measured


def test_measuring_leaves_the_model_unchanged():
    model = build_model("gcnn", "C4", 3, 2, width=4, depth=1, kernel_size=3, dropout=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    invariance_errors(model, smooth_images(2, 32))
    offgrid_errors(model, smooth_images(2, 32), angles=[30.0])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Mean(nn.Module):
    """Mean over all pixels: invariant under every rotation (up to interpolation)."""

    group = parse_group("SO2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1)) + 1.0


class _LeftHalf(_Mean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : x.shape[-1] // 2].mean(dim=(-2, -1)) + 1.0


def test_offgrid_errors_separate_invariant_from_non_invariant_models():
    x = smooth_images(2, 64) + 2.0
    invariant, biased = offgrid_errors(_Mean(), x), offgrid_errors(_LeftHalf(), x)
    assert set(invariant) == {f"rot{a:g}" for a in rotation_angles(parse_group("SO2"))}
    assert max(invariant.values()) < 1e-3 < min(biased.values())


def test_offgrid_errors_names_and_defaults():
    model = _Mean()
    x = smooth_images(1, 32)
    assert set(offgrid_errors(model, x, group=parse_group("C8"))) == {"rot45", "rot135", "rot225", "rot315"}
    assert set(offgrid_errors(model, x, group=parse_group("D8"), angles=[45.0])) == {"rot45", "rot45+flip"}
    assert offgrid_errors(model, x, group=parse_group("D4")) == {}


def test_centred_disk_is_a_soft_disk():
    disk = centred_disk(32, 32)
    assert disk[16, 16] == 1.0 and disk[0, 0] == 0.0 and disk[0, 16] == 0.0
    assert torch.equal(disk, torch.rot90(disk)) and torch.equal(disk, disk.flip(-1))


class _Pointwise(nn.Module):
    group = parse_group("D4")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class _Shifted(_Pointwise):
    """A shift by (1, 2) pixels: no element of D4 other than the identity commutes with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, (1, 2), dims=(-2, -1))


def test_equivariance_errors_for_dense_outputs():
    x = torch.randn(2, 3, 16, 16)
    assert max(equivariance_errors(_Pointwise(), x).values()) == 0.0
    assert min(v for k, v in equivariance_errors(_Shifted(), x).items() if k != "rot0") > 0.1


def test_equivariance_errors_on_logits_equal_invariance_errors():
    model = build_model("gcnn", "flip", 3, 2, width=4, depth=1, kernel_size=3).eval()
    x = smooth_images(2, 32)
    assert equivariance_errors(model, x) == invariance_errors(model, x)


def test_checks_need_a_group():
    with pytest.raises(ValueError, match="has no `group` attribute"):
        invariance_errors(nn.Identity(), torch.zeros(1, 1, 4, 4))

"""Augmentation: reproducible from the generator, geometric transforms shared by masks, no black corners."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from runner.spec.config import AugmentSpec
from runner.data.augment import Augmenter, hed_jitter, rotate, transform


def batch(seed: int = 0, n: int = 6, side: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 5, (n, side, side), generator=g)
    x = torch.stack([mask / 4.0, torch.rand(n, side, side, generator=g), torch.full((n, side, side), 0.5)], 1)
    return x, mask


@pytest.mark.parametrize("geometric", ["none", "flip", "rot90", "d4", "rotate"])
def test_same_generator_state_gives_same_output(geometric):
    aug = Augmenter(AugmentSpec(geometric=geometric, stain=0.05, brightness=0.2, contrast=0.2))
    x, m = batch()
    a = aug(x, m, torch.Generator().manual_seed(7))
    b = aug(x, m, torch.Generator().manual_seed(7))
    c = aug(x, m, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].min() >= 0 and a[0].max() <= 1 and a[1].dtype == m.dtype


@given(seed=st.integers(0, 2 ** 31))
def test_d4_applies_one_group_element_to_image_and_mask_alike(seed):
    x, m = batch(seed % 1000)
    y, ym = Augmenter(AugmentSpec(geometric="d4"))(x, m, torch.Generator().manual_seed(seed))
    for i in range(len(x)):
        matches = [(k, f) for k in range(4) for f in (False, True) if torch.equal(y[i], transform(x[i], k, f))]
        assert matches and any(torch.equal(ym[i], transform(m[i], k, f)) for k, f in matches)


def test_rotate_has_no_black_corners_and_masks_keep_their_ids():
    x = torch.full((4, 3, 32, 32), 0.8)
    m = torch.randint(1, 4, (4, 32, 32))
    y, ym = rotate(x, m, torch.tensor([0.3, 1.0, 2.5, 4.0]))
    assert torch.allclose(y, x, atol=1e-5)  # a constant image stays constant: corners are filled by reflection
    assert set(ym.unique().tolist()) <= {1, 2, 3}


def test_rotate_by_a_quarter_turn_matches_rot90():
    x, m = batch(1, n=2, side=16)
    y, ym = rotate(x, m, torch.full((2,), math.pi / 2))
    assert torch.allclose(y, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4)
    assert torch.equal(ym, torch.rot90(m, 1, dims=(-2, -1)))


def test_photometric_changes_leave_masks_alone():
    x, m = batch()
    y, ym = Augmenter(AugmentSpec(stain=0.1, brightness=0.3, contrast=0.3))(x, m, torch.Generator().manual_seed(0))
    assert torch.equal(ym, m) and not torch.allclose(y, x)


def test_hed_jitter_without_noise_is_the_identity_and_shifts_stains_with_noise():
    x = torch.rand(2, 3, 8, 8) * 0.9 + 0.05
    assert torch.allclose(hed_jitter(x, torch.zeros(2, 2, 3)), x, atol=1e-5)
    darker_h = torch.zeros(2, 2, 3)
    darker_h[:, 1, 0] = 0.3  # more hematoxylin absorbs more red than blue
    y = hed_jitter(x, darker_h)
    assert (x - y)[:, 0].mean() > (x - y)[:, 2].mean() > 0


def test_no_mask_and_invalid_spec():
    x, _ = batch()
    y, ym = Augmenter(AugmentSpec(geometric="rot90"))(x, None, torch.Generator().manual_seed(0))
    assert ym is None and y.shape == x.shape
    with pytest.raises(ValueError, match="allowed: none, flip, rot90, d4, rotate"):
        Augmenter(AugmentSpec(geometric="shear"))

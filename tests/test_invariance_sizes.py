"""Exact invariance at patch sizes other than PCam's 96: even and odd sides, down to odd maps deep in the network.

The pooling picks its window by the parity of each map (equiv/cnn.py), so every stage keeps a sampling grid that is
symmetric about the map's centre: 150 -> 75 -> 38 -> 19 -> 10 and 225 -> 113 -> 57 -> 29 -> 15 mix odd and even
maps. Measured with the default smooth inputs (width 4, depth 3, kernel 5, 3 outputs, train and eval mode): the
C4 and D4 G-CNNs within 1.1e-7 to 3.0e-7 at 149, 150, 151, 224 and 225; the plain CNN 5e-3 to 9e-2.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import equiv
from equiv import build_model
from equiv.checks import invariance_errors, smooth_images
from equiv.groups import parse_group

EXACT = 1e-5
SIZES = [150, 224, 149, 151, 225]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["C4", "D4"])
@settings(max_examples=2, deadline=None)
@given(depth=st.integers(1, 4), kernel_size=st.sampled_from([3, 5]), pool=st.sampled_from(["blur", "average"]),
       outputs=st.sampled_from([2, 3]), dropout=st.sampled_from([0.0, 0.5]))
def test_gcnn_is_exact_at_new_sizes(name, size, depth, kernel_size, pool, outputs, dropout):
    torch.manual_seed(0)
    model = build_model("gcnn", name, 3, outputs, width=2, depth=depth, kernel_size=kernel_size, pool=pool,
                        dropout=dropout)
    x = smooth_images(2, size)
    for training in (True, False):
        model.train(training)
        errors = invariance_errors(model, x)
        assert max(errors.values()) <= EXACT, (training, errors)
    exported = equiv.export_eval(model)  # what an exported artifact runs
    assert max(invariance_errors(exported, x).values()) <= EXACT


@pytest.mark.parametrize("size", SIZES)
def test_plain_cnn_is_not_invariant_at_new_sizes(size):
    torch.manual_seed(0)
    model = build_model("cnn", "trivial", 3, 3, width=4, depth=3, kernel_size=5).eval()
    errors = invariance_errors(model, smooth_images(2, size), group=parse_group("D4"))
    assert errors["rot0"] == 0.0
    assert min(v for k, v in errors.items() if k != "rot0") > 100 * EXACT, errors

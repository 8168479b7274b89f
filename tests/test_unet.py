"""U-Nets: output shapes, exact equivariance of `gunet` (and its absence in `unet`), export, parameter matching, errors."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equiv import count_params
from equiv.checks import equivariance_errors
from equiv.groups import GridElement, parse_group
from equiv.gunet import PARAM_TOLERANCE, field_counts, predicted_parameters
from equiv.segmentation import build_unet
from equiv.unet import UNetConfig, UNetConfigError, UNetInputError

# O2 (Fourier fields over 32 group samples) is the slowest to run: checked by the heavy session only.
EQUIVARIANT_GROUPS = ["flip", "C4", "D4", "C8", "SO2", pytest.param("O2", marks=pytest.mark.heavy)]
TOLERANCE = 1e-5
IDENTITY = GridElement(0, False).name


def _errors(model: torch.nn.Module, x: torch.Tensor, group: str | None = None) -> dict[str, float]:
    """Relative equivariance error per non-identity grid element (of `group`, default the model's own)."""
    errors = equivariance_errors(model, x, parse_group(group) if group else None)
    return {name: error for name, error in errors.items() if name != IDENTITY}


def _warm_up(model: torch.nn.Module, channels: int, size: int, steps: int = 1) -> None:
    """A few train-mode passes so batch-norm running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(2, channels, size, size) * 3 + 1)


architectures = st.fixed_dictionaries(
    {
        "depth": st.integers(1, 2),
        "width": st.integers(1, 4),
        "kernel_size": st.sampled_from([3, 5]),
        "in_channels": st.integers(1, 3),
        "num_outputs": st.integers(1, 2),
        "size": st.sampled_from([32, 64]),
        "seed": st.integers(0, 2**16),
    }
)


def _build(family: str, group: str, arch: dict, **extra) -> torch.nn.Module:
    torch.manual_seed(arch["seed"])
    keys = ("depth", "width", "kernel_size")
    return build_unet(family, parse_group(group), arch["in_channels"], arch["num_outputs"],
                      **{k: arch[k] for k in keys}, **extra)


# Parametrised by group so every group is covered; fewer hypothesis examples per group keep the suite fast.
@pytest.mark.parametrize("group", EQUIVARIANT_GROUPS)
@settings(max_examples=max(1, settings().max_examples // 3))
@given(arch=architectures, train=st.booleans())
def test_gunet_is_equivariant_on_every_grid_element(group, arch, train):
    model = _build("gunet", group, arch)
    _warm_up(model, arch["in_channels"], arch["size"])
    model.train(train)
    x = torch.randn(1, arch["in_channels"], arch["size"], arch["size"])
    errors = _errors(model, x)
    assert errors and max(errors.values()) < TOLERANCE, errors


@given(arch=architectures, train=st.booleans())
def test_plain_unet_is_not_equivariant(arch, train):
    # The check above can fail: a plain U-Net is clearly not rot90/flip equivariant.
    model = _build("unet", "trivial", arch)
    model.train(train)
    x = torch.randn(2, arch["in_channels"], arch["size"], arch["size"])
    errors = _errors(model, x, "D4")
    # 10x the equivariance tolerance: the thorough profile found a width-1, 1-channel U-Net at 7.5e-4.
    assert len(errors) == 7 and min(errors.values()) > 10 * TOLERANCE, errors


@pytest.mark.parametrize("group", EQUIVARIANT_GROUPS)
@settings(max_examples=max(1, settings().max_examples // 3))
@given(arch=architectures, dropout=st.sampled_from([0.0, 0.2]))
def test_export_gives_the_same_eval_outputs(group, arch, dropout):
    model = _build("gunet", group, arch, dropout=dropout)
    _warm_up(model, arch["in_channels"], arch["size"])
    model.train()
    plain = model.export()
    assert model.training, "export must not change the model's mode"
    assert not any(m.__module__.startswith("escnn") for m in plain.modules())
    model.eval()
    x = torch.randn(2, arch["in_channels"], arch["size"], arch["size"])
    with torch.no_grad():
        expected, actual = model(x), plain(x)
    assert actual.shape == expected.shape
    # Exported batch norms and Fourier activations round differently in float32: logits of size ~10 differ by ~1e-5.
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("family,group", [("unet", "trivial"), ("gunet", "D4"), ("gunet", "SO2")])
def test_output_is_per_pixel_logits_of_input_size(family, group):
    model = build_unet(family, parse_group(group), 3, 2, width=2, depth=2)
    out = model(torch.randn(3, 3, 32, 64))
    assert out.shape == (3, 2, 32, 64)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.group == parse_group(group)


@pytest.mark.parametrize("group", ["flip", "C4", "D4", "C8", "SO2", "O2"])
@pytest.mark.parametrize("width,depth", [(8, 3), (4, 2), (16, 1)])
def test_param_match_within_tolerance(group, width, depth):
    config = UNetConfig("gunet", parse_group(group), 3, 1, width=width, depth=depth)
    plain = predicted_parameters(replace(config, family="unet"))
    fields = field_counts(config)
    model = build_unet("gunet", config.group, 3, 1, width=width, depth=depth)
    assert model.fields == fields
    actual = count_params(model)
    assert abs(actual / plain - 1) <= PARAM_TOLERANCE, (fields, actual, plain)
    # The formula the matching relies on counts the built model exactly.
    assert actual == predicted_parameters(config)


@pytest.mark.parametrize("width,depth,kernel", [(8, 3, 3), (3, 1, 5)])
def test_parameter_formula_is_exact_for_the_plain_unet(width, depth, kernel):
    model = build_unet("unet", parse_group("trivial"), 2, 3, width=width, depth=depth, kernel_size=kernel)
    config = UNetConfig("unet", parse_group("trivial"), 2, 3, width=width, depth=depth, kernel_size=kernel)
    assert count_params(model) == predicted_parameters(config)


def test_match_channels_uses_plain_channel_counts_as_fields():
    model = build_unet("gunet", parse_group("C4"), 3, 1, width=2, depth=2, match="channels")
    assert model.fields == [2, 4, 8]
    # Regular C4 fields are 4 channels wide.
    assert model.encoders[0][0].out_type.size == 8


def test_default_models_stay_small():
    plain = build_unet("unet", parse_group("trivial"), 3, 1)
    assert 50_000 <= count_params(plain) <= 200_000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "vnet"}, "family='vnet': allowed unet, gunet"),
        ({"family": "unet", "group": "C4"}, "group='C4' with family 'unet': allowed trivial"),
        ({"depth": 0}, "depth=0: allowed integers >= 1 and <= 6"),
        ({"width": 0}, "width=0: allowed integers >= 1"),
        ({"kernel_size": 4}, "kernel_size=4: allowed odd integers"),
        ({"dropout": 1.0}, "dropout=1.0: allowed numbers >= 0 and < 1"),
        ({"match": "flops"}, "match='flops': allowed params, channels"),
        ({"in_channels": -1, "num_outputs": 0}, "in_channels=-1.*num_outputs=0"),
    ],
)
def test_bad_arguments_name_key_and_allowed_values(kwargs, match):
    args = {"family": "gunet", "group": "D4", "in_channels": 3, "num_outputs": 1, **kwargs}
    family, group = args.pop("family"), parse_group(args.pop("group"))
    with pytest.raises(UNetConfigError, match=match):
        build_unet(family, group, args.pop("in_channels"), args.pop("num_outputs"), **args)


@pytest.mark.parametrize("family,group", [("unet", "trivial"), ("gunet", "C4")])
def test_bad_input_size_names_size_and_divisor(family, group):
    model = build_unet(family, parse_group(group), 3, 1, width=2, depth=3)
    with pytest.raises(UNetInputError, match=r"input size 36x32 must be divisible by 2\*\*depth = 8"):
        model(torch.randn(1, 3, 36, 32))
    with pytest.raises(UNetInputError, match=r"\(B, 3, H, W\).*\(1, 2, 32, 32\)"):
        model(torch.randn(1, 2, 32, 32))

"""export_eval: plain-torch copies that compute what the escnn models compute, and the module converters."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equiv import build_model, export_eval
from equiv.build_cache import load_escnn
from equiv.checks import invariance_errors
from equiv.export import export_module
from equiv.groups import gspace, parse_group

GROUPS = ["trivial", "flip", "C4", "D4", "C8", "D8", "SO2", "O2"]


def _settle_batch_norm(model: nn.Module) -> None:
    """A few train-mode passes so running statistics are not the initial zeros and ones."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 + 1)
    model.eval()


@given(name=st.sampled_from(GROUPS), depth=st.integers(1, 3), width=st.integers(2, 6),
       kernel_size=st.sampled_from([3, 5]))
def test_exported_gcnn_matches_the_escnn_model(name, depth, width, kernel_size):
    torch.manual_seed(0)
    model = build_model("gcnn", name, 3, 2, width=width, depth=depth, kernel_size=kernel_size, dropout=0.3)
    _settle_batch_norm(model)
    x = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        expected = model(x)
        exported = export_eval(model)
        torch.testing.assert_close(exported(x), expected, rtol=0, atol=1e-5)
    escnn_parts = [type(m).__name__ for m in exported.modules() if type(m).__module__.startswith("escnn")]
    assert escnn_parts == []
    assert not exported.training and exported.group == model.group


def test_exported_model_stays_exactly_invariant():
    model = build_model("gcnn", "D4", 3, 2, width=4, depth=2, kernel_size=3)
    _settle_batch_norm(model)
    exported = export_eval(model)
    assert max(invariance_errors(exported, torch.randn(2, 3, 96, 96)).values()) <= 1e-5


def test_plain_cnn_exports_as_itself_in_eval_mode():
    model = build_model("cnn", "trivial", 3, 2, width=4, depth=1).train()
    assert export_eval(model) is model and not model.training


def test_a_models_own_export_is_used():
    class WithExport(nn.Module):
        group = parse_group("C4")

        def export(self) -> nn.Module:
            return nn.Identity()

    exported = export_eval(WithExport())
    assert isinstance(exported, nn.Identity) and exported.group == parse_group("C4")


def _escnn_modules(name: str):
    enn = load_escnn().nn
    group = parse_group(name, max_frequency=2)
    space = gspace(group)
    if group.continuous:
        fourier = enn.FourierELU(space, 3, space.fibergroup.bl_irreps(2), type="regular", N=8)
        field = fourier.in_type
        extra = [fourier, enn.NormPool(field)]
    else:
        field = enn.FieldType(space, 3 * [space.regular_repr])
        extra = [enn.GroupPooling(field)]
    pools = [
        enn.PointwiseAvgPool2D(field, kernel_size=3, stride=2, padding=1),
        enn.PointwiseAvgPoolAntialiased2D(field, sigma=0.66, stride=2),
    ]
    return field, pools + extra


@pytest.mark.parametrize("name", ["D4", "SO2", "O2"])
def test_converters_for_modules_escnn_cannot_export(name):
    field, modules = _escnn_modules(name)
    enn = load_escnn().nn
    x = enn.GeometricTensor(torch.randn(2, field.size, 11, 12), field)
    for module in modules:
        module.eval()
        with torch.no_grad():
            expected = module(x).tensor
            exported = export_module(module)
            torch.testing.assert_close(exported(x.tensor), expected, rtol=0, atol=1e-6)
        assert not type(exported).__module__.startswith("escnn"), type(module).__name__


def test_mixed_field_sizes_are_refused_with_a_reason():
    enn = load_escnn().nn
    space = gspace(parse_group("C4"))
    mixed = enn.FieldType(space, [space.regular_repr, space.trivial_repr])
    with pytest.raises(NotImplementedError, match=r"fields of sizes \[1, 4\] cannot be exported"):
        export_module(enn.NormPool(mixed))

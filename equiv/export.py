"""Plain-torch inference copies of equiv models and escnn modules.

escnn's `export()` turns convolutions and batch norms into torch layers (the filters are expanded once), but
raises NotImplementedError for average pooling, anti-aliased pooling, Fourier nonlinearities and norm pooling.
`export_module` converts those here, with the same arithmetic as their escnn forward, and falls back to
escnn's `export()` for everything else; the results are escnn-free torch modules.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def export_eval(model: nn.Module) -> nn.Module:
    """The model for inference, in eval mode: its own `export()` if it has one, escnn modules converted, else itself.

    Puts `model` in eval mode (escnn's exports do too). The copy keeps the model's `group` attribute.
    """
    model.eval()
    if hasattr(model, "export"):
        exported = export_module(model) if _is_escnn(model) else model.export()
    else:
        return model
    if hasattr(model, "group") and not hasattr(exported, "group"):
        exported.group = model.group
    return exported.eval()


def export_module(module: nn.Module) -> nn.Module:
    """A plain-torch eval copy of one escnn module (sequential modules are converted part by part)."""
    from equiv.build_cache import load_escnn

    enn = load_escnn().nn
    module.eval()
    if isinstance(module, enn.SequentialModule):
        return nn.Sequential(*(export_module(child) for child in module.children())).eval()
    converters = {
        enn.PointwiseAvgPoolAntialiased2D: _antialiased_pool,
        enn.PointwiseAvgPool2D: _average_pool,
        enn.FourierPointwise: _fourier_pointwise,
        enn.NormPool: _norm_pool,
        enn.GroupPooling: _group_pool,
    }
    for kind, convert in converters.items():
        if isinstance(module, kind):
            return convert(module).eval()
    return copy.deepcopy(module.export()).eval()


class FourierActivation(nn.Module):
    """escnn's FourierPointwise without escnn: sample each field on the group grid, activate, project back."""

    def __init__(self, sample: torch.Tensor, project: torch.Tensor, function) -> None:
        super().__init__()
        self.register_buffer("A", sample.clone())
        self.register_buffer("Ainv", project.clone())
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        fields = x.view(batch, channels // self.A.shape[1], self.A.shape[1], *x.shape[2:])
        samples = self.function(torch.einsum("bcf...,gf->bcg...", fields, self.A))
        coefficients = torch.einsum("bcg...,fg->bcf...", samples, self.Ainv)
        return coefficients.reshape(batch, -1, *x.shape[2:])


class FieldNorm(nn.Module):
    """Norm of each field of `size` consecutive channels (escnn NormPool for a single field size)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.size, *x.shape[2:]).norm(dim=2)


class FieldMax(nn.Module):
    """Maximum over each field of `size` consecutive channels (escnn GroupPooling for a single field size)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.size, *x.shape[2:]).max(dim=2).values


class DepthwiseFilter(nn.Module):
    """Strided per-channel convolution with a fixed filter (escnn PointwiseAvgPoolAntialiased2D)."""

    def __init__(self, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("weight", weight.clone())
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=x.shape[1])


def _antialiased_pool(module) -> nn.Module:
    return DepthwiseFilter(module.filter, module.stride, module.padding)


def _average_pool(module) -> nn.Module:
    return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode)


def _fourier_pointwise(module) -> nn.Module:
    return FourierActivation(module.A, module.Ainv, module._function)


def _norm_pool(module) -> nn.Module:
    return FieldNorm(_single_field_size(module))


def _group_pool(module) -> nn.Module:
    return FieldMax(_single_field_size(module))


def _single_field_size(module) -> int:
    sizes = {r.size for r in module.in_type.representations}
    if len(sizes) != 1:
        raise NotImplementedError(
            f"{type(module).__name__} over fields of sizes {sorted(sizes)} cannot be exported; "
            "use fields of a single size"
        )
    return sizes.pop()


def _is_escnn(module: nn.Module) -> bool:
    return type(module).__module__.startswith("escnn.")

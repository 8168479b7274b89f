"""Fast generalised He initialisation of escnn convolutions (build with `R2Conv(..., initialize=False)`).

escnn's `generalized_he_init` walks every basis coefficient of a layer in Python, building one attribute dict per
coefficient (escnn issue 54): most of a warm build. Its variance for a coefficient depends only on which basis
element of which (input field type, output field type) block it belongs to, never on which copy of the field
it sits in, because escnn counts inputs per output irrep over *all* input fields. So we compute the variances once
per block element and tile them over the field copies. The result is not an approximation: it equals escnn's
variance vector entry for entry (tests/test_models.py compares them), and the weights are drawn with the same
single `randn` call, so a seeded build gives the same weights as escnn's own initialisation.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch


def he_init_(conv) -> None:
    """Initialise an escnn R2Conv's basis coefficients in place (and zero its bias, as escnn does)."""
    variances = he_variances(conv.basisexpansion)
    with torch.no_grad():
        conv.weights.copy_(variances.to(conv.weights.device) * torch.randn_like(conv.weights))
        if getattr(conv, "bias", None) is not None:
            conv.bias.zero_()


def he_variances(expansion) -> torch.Tensor:
    """The per-coefficient scale escnn's `generalized_he_init` uses, for a `BlocksBasisExpansion`."""
    blocks = {pair: _block_attributes(expansion, pair) for pair in expansion._representations_pairs}
    inputs, counts = _fan_in(blocks, expansion._in_count)
    pieces = []
    for (in_name, out_name), attributes in blocks.items():
        scale = torch.tensor([
            1.0 / math.sqrt(inputs[out_name, a["out_irrep_idx"]] * counts[out_name, a["in_irrep"], a["out_irrep_idx"]])
            for a in attributes
        ])
        copies = expansion._in_count[in_name] * expansion._out_count[out_name]
        pieces.append(scale.repeat(copies))
    variances = torch.cat(pieces) if pieces else torch.zeros(0)
    if variances.numel() != expansion.dimension():
        raise RuntimeError(f"He variances cover {variances.numel()} of {expansion.dimension()} coefficients; "
                           "escnn's basis layout changed, use R2Conv(initialize=True)")
    return variances


def _block_attributes(expansion, pair: tuple[str, str]) -> list[dict]:
    block = getattr(expansion, f"block_expansion_{expansion._escape_pair(pair)}")
    return list(block.get_basis_info())


def _fan_in(blocks: dict, in_count: dict) -> tuple[dict, dict]:
    """Per output irrep (out field type, irrep index): distinct input irreps, and coefficients per input irrep.

    Every input field of a type contributes the same block, hence the multiplication by the field count.
    """
    sources = defaultdict(set)
    counts = defaultdict(int)
    for (in_name, out_name), attributes in blocks.items():
        for a in attributes:
            sources[out_name, a["out_irrep_idx"]].add(a["in_irrep"])
            counts[out_name, a["in_irrep"], a["out_irrep_idx"]] += in_count[in_name]
    return {key: len(value) for key, value in sources.items()}, counts

"""escnn's InnerBatchNorm without its extra pass over the feature map.

escnn normalises each group of equally sized fields and copies the result into a fresh tensor, slice by slice.
When every field has the same size and the fields fill the tensor in order (every model here: regular fields of
one group), the normalised tensor, reshaped, already is the output; the copy cost 3 % of a D4 G-CNN training step
on CPU.
Parameters, buffers, state-dict keys, statistics, equivariance and `export()` are escnn's own.
"""
from __future__ import annotations

import torch

from equiv.build_cache import load_escnn

enn = load_escnn().nn


class InnerBatchNorm(enn.InnerBatchNorm):
    """Drop-in for escnn.nn.InnerBatchNorm: the same module, one copy fewer in the common case."""

    def forward(self, input: enn.GeometricTensor) -> enn.GeometricTensor:
        if len(self._contiguous) != 1 or not all(self._contiguous.values()):
            return super().forward(input)  # mixed field sizes: escnn's general path
        (size,) = self._contiguous
        x = input.tensor
        norm = getattr(self, f"batch_norm_[{size}]")
        y = norm(x.view(x.shape[0], -1, size, *x.shape[2:]))
        # A plain .view would make the next in-place ReLU an in-place op on a view, which autograd records as
        # CopySlices + AsStrided (a clone and a scatter in backward, more than the copy saved). _unsafe_view gives
        # a tensor autograd does not treat as a view; safe because batch norm's backward does not use its output.
        y = torch.ops.aten._unsafe_view(y, x.shape)
        return enn.GeometricTensor(y, self.out_type, input.coords)

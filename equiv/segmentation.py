"""The U-Net families' one entry point: `unet` (plain, equiv.unet) and `gunet` (equivariant, equiv.gunet).

It stands above both so that neither imports the other back: gunet builds on the plain skeleton of equiv.unet.
"""
from __future__ import annotations

from torch import nn

from equiv.group_names import Group
from equiv.unet import UNetConfig, build_plain, validate


def build_unet(
    family: str,
    group: Group,
    in_channels: int,
    num_outputs: int,
    *,
    width: int = 8,
    depth: int = 3,
    kernel_size: int = 3,
    dropout: float = 0.0,
    match: str = "params",
    max_frequency: int = 3,
) -> nn.Module:
    """A U-Net mapping (B, in_channels, H, W) floats to (B, num_outputs, H, W) logits, H and W divisible by 2**depth.

    `unet` needs the trivial group. `gunet` is equivariant to `group`; match="params" sizes it to within 10 % of the
    plain U-Net's parameter count, match="channels" gives it as many fields per level as the plain one has channels.
    The default width 8 keeps the default models near 120k parameters (a width-16 U-Net has ~490k), for CPU runs.
    """
    config = UNetConfig(family, group, in_channels, num_outputs, width, depth, kernel_size, dropout, match,
                        max_frequency)
    validate(config)
    if family == "unet":
        return build_plain(config)
    # Imported here: escnn (behind equiv.gunet) is only needed for the equivariant family.
    from equiv.gunet import GUNet

    return GUNet(config)

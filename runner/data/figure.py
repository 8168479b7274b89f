"""A PNG grid of sample patches with their labels (classification) or instance outlines (segmentation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runner.data.batches import Split

CLASS_NAMES = ("normal", "tumour")


def sample_figure(split: Split, path: Path, n: int = 16, columns: int = 8, seed: int = 0, title: str = "") -> Path:
    """Save `n` seeded random samples of `split` as a grid to `path` (PNG); returns the path.

    Classification panels are titled with the label and show PCam's centre 32x32 (a third of the side) in green;
    segmentation panels show instance outlines in yellow.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(split), size=min(n, len(split)), replace=False))
    images, targets = split.get_batch(indices)
    images = images.permute(0, 2, 3, 1).numpy()
    rows = -(-len(indices) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, target in zip(axes.flat, images, targets.numpy()):
        if target.ndim == 0:
            ax.imshow(image)
            side = image.shape[0] // 3
            start = (image.shape[0] - side) // 2 - 0.5
            ax.add_patch(plt.Rectangle((start, start), side, side, fill=False, ec="lime", lw=0.6))
            ax.set_title(CLASS_NAMES[int(target)] if int(target) < 2 else str(int(target)), fontsize=8)
        else:
            shown = image.copy()
            shown[find_boundaries(target, mode="inner")] = (255, 230, 0)
            ax.imshow(shown)
            ax.set_title(f"{len(np.unique(target)) - 1} nuclei", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The resolved configuration of one job: frozen dataclasses that code inside the runner trusts.

`runner.spec.parse` validates TOML into these at the edge; `runner.spec.identity` expands a spec into one
JobConfig per job.
Field comments are the user documentation's source: keep them short and say the allowed values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TASKS = ("classification", "segmentation")
SOURCES = ("synthetic", "pcam", "folder", "manifest", "arrays")
# Classification metrics a study may select on and report as its headline (nll is minimised, the rest maximised).
CLASS_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1", "nll")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
GEOMETRIC_AUGMENTS = ("none", "flip", "rot90", "d4", "rotate")
CLASSIFIER_FAMILIES = ("cnn", "gcnn")
SEGMENTER_FAMILIES = ("unet", "gunet")
FAMILIES = CLASSIFIER_FAMILIES + SEGMENTER_FAMILIES


@dataclass(frozen=True)
class DataSpec:
    source: str = "synthetic"  # synthetic | pcam | folder | manifest | arrays
    # pcam: folder with camelyonpatch_level_2_split_*.h5[.gz]; folder: classification <class>/ or
    # {train,valid,test}/<class>/ subfolders of images, segmentation images/ + masks/
    root: str = ""
    # manifest: a CSV with path, label[, split, group]; arrays: an .npz or .h5 holding `image` and `label`
    # (classification, or MedMNIST's train_images/train_labels/...) or `image` and `mask` (segmentation)
    path: str = ""
    fraction: float = 1.0  # share of the training split used (stratified, seeded): a data-efficiency axis
    train_size: int = 2000  # synthetic: patches generated; pcam: stratified cap (0 = all 262,144)
    valid_size: int = 500  # as train_size, for the validation split
    test_size: int = 500  # as train_size, for the test split
    image_size: int = 96  # synthetic patch side; segmentation tile side for folder/arrays
    seed: int = 0  # data generation and split seed (independent of the training seed)
    # true: in memory (a small subset copied into each worker; a large one decompressed once under ROOT/data and
    # memory-mapped, so the workers of a node share one copy through the page cache); false: batches read from
    # the HDF5 files (little memory, but a random row reads its whole 64-row chunk: slow)
    in_memory: bool = True
    crop: int = 0  # own classification data: centre-crop every patch to this side; 0 = the files' own size


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 2
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # constant | cosine | step (x0.1 at 50 % and 75 % of epochs)
    early_stopping: int = 0  # patience in epochs without validation improvement; 0 = off
    checkpoint_minutes: float = 10.0  # also checkpoint within an epoch after this many minutes
    amp: bool = True  # mixed precision on CUDA (ignored on CPU/MPS)


@dataclass(frozen=True)
class AugmentSpec:
    geometric: str = "none"  # none | flip | rot90 | d4 | rotate (continuous angle, no black corners)
    stain: float = 0.0  # HED stain jitter strength (std of the per-channel scale/shift), 0 = off
    brightness: float = 0.0  # max relative brightness change, 0 = off
    contrast: float = 0.0  # max relative contrast change, 0 = off


@dataclass(frozen=True)
class ModelSpec:
    family: str = "cnn"  # cnn | gcnn (classification); unet | gunet (segmentation)
    group: str = "trivial"  # trivial | flip | C<N> | D<N> | SO2 | O2 (equivariant families only)
    width: int = 16  # channels of the plain CNN's first stage (the G-CNN matches it, see `match`)
    depth: int = 3  # number of stages (each halves the resolution)
    kernel_size: int = 5
    dropout: float = 0.0
    match: str = "params"  # params: same parameter count as the plain model | channels: same field count
    max_frequency: int = 3  # band limit of SO2/O2 Fourier fields
    pool: str = "blur"  # classifiers: blur (anti-aliased) | average (2x2 boxes, same centred grid: as exact, cheaper)


@dataclass(frozen=True)
class EvalSpec:
    # Test-time rotation angles (degrees) for the accuracy-vs-angle curve.
    rotation_angles: tuple[float, ...] = tuple(float(a) for a in range(0, 360, 15))
    rotation_samples: int = 512  # test images (seeded subset) evaluated at each angle
    invariance: bool = True  # measure invariance/equivariance error on test inputs at the end of a job
    # Classification: the validation metric that picks a job's best epoch and heads the report (auc is macro
    # one-vs-rest for more than two classes): auc | accuracy | balanced_accuracy | f1 | nll (minimised)
    metric: str = "auc"


@dataclass(frozen=True)
class JobConfig:
    """Everything that defines one job. Its canonical JSON (minus non-semantic fields) is hashed into the job key."""

    experiment: str
    task: str
    seed: int
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""Trained jobs and exported artifacts shared by the inference tests: trained once per session, on tiny data.

A classification experiment (a plain CNN good enough to find planted tumour, and a small D4 G-CNN) and a
segmentation experiment (a tiny U-Net) are run through the real command line into one run root, then exported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.cli import main

CLASSIFICATION_SPEC = """
[experiment]
name = "tiny-cls"
task = "classification"
seeds = [0]
[data]
train_size = 256
valid_size = 32
test_size = 32
[train]
epochs = 2
batch_size = 32
lr = 3e-3
[eval]
rotation_angles = [0]
rotation_samples = 16
[[model]]
family = "cnn"
width = 8
depth = 2
[[model]]
family = "gcnn"
group = "D4"
width = 4
depth = 2
kernel_size = 3
"""

SEGMENTATION_SPEC = """
[experiment]
name = "tiny-seg"
task = "segmentation"
seeds = [0]
[data]
image_size = 32
train_size = 32
valid_size = 8
test_size = 8
[train]
epochs = 1
batch_size = 16
[eval]
rotation_angles = [0]
rotation_samples = 8
[[model]]
family = "unet"
width = 4
depth = 2
"""


@dataclass(frozen=True)
class Trained:
    root: Path
    cnn: Path  # export --best of the classification experiment (the CNN: it wins on validation)
    gcnn: Path  # the D4 G-CNN, exported by job key prefix
    unet: Path

    @property
    def db(self) -> str:
        return f"sqlite:///{self.root / 'results.db'}"


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    base = tmp_path_factory.mktemp("inference")
    root = base / "runs"
    for name, text in (("cls.toml", CLASSIFICATION_SPEC), ("seg.toml", SEGMENTATION_SPEC)):
        (base / name).write_text(text)
        assert run_cli(base / name, "--root", root) == 0
    import reports

    jobs = reports.load(f"sqlite:///{root / 'results.db'}")
    gcnn_key = jobs.loc[jobs["family"] == "gcnn", "key"].iloc[0]
    unet_id = jobs.loc[jobs["family"] == "unet", "job_id"].iloc[0]
    exports = {"cnn": ["--experiment", "tiny-cls", "--best"], "gcnn": ["--job", gcnn_key[:8]],
               "unet": ["--job", str(unet_id)]}
    for name, selection in exports.items():
        assert run_cli("export", "--root", root, *selection, "--out", base / name) == 0
    return Trained(root, base / "cnn", base / "gcnn", base / "unet")

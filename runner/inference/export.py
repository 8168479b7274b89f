"""Export a trained job to a self-describing folder: model.pt2, model.onnx and model.json.

The network is rebuilt from the job's checkpoint (the best-validation weights the test metrics came from), turned
into plain torch by `equiv.export_eval`, then exported twice: `torch.export` (.pt2) and ONNX. Nothing is written
to the destination until both copies agree with the trained model within 1e-5 (relative, per patch) on held-out
test patches and the exported model still has the group symmetry it was trained with: the folder is assembled
in a temporary sibling and renamed into place.

A classifier has as many outputs as its checkpoint's `classes` (class names in label order) and takes patches of
its `image_size`; checkpoints written before those keys existed are binary PCam models (normal, tumour) at
`input_size(config)`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.inference import artifact
from runner.inference.selection import SelectionError, best_job_id
from runner.spec.config import JobConfig
from runner.spec.identity import config_from_dict
from runner.store import Database, JobModel
from runner.training import checkpoint

AGREEMENT_TOLERANCE = 1e-5  # relative output difference allowed between the exported copies and the trained model
SYMMETRY_TOLERANCE = 1e-4  # relative change under a group element that still counts as exact symmetry
VERIFY_PATCHES = 16
# PatchCamelyon's patches come from Camelyon16 slides scanned at 40x (0.243 um/px) and downsampled 4x (level 2):
# 0.972 um/px. The synthetic data imitates PCam, so it is given the same scale.
PCAM_MPP = 0.972
CLASS_NAMES = {"classification": ["normal", "tumour"], "segmentation": ["background", "nucleus"]}
# Sources whose patches export does not read (the user's own files, which may be elsewhere by now or slow to load):
# the copies are compared on seeded random tissue-like images instead.
OWN_DATA_SOURCES = ("folder", "manifest", "arrays")
VERIFY_SEED = 0


class ExportError(ValueError):
    """An export that cannot be made as asked (unknown job, no checkpoint, --out exists); nothing was written."""


class VerificationError(ExportError):
    """The exported copies do not compute what the trained model computes; nothing was written."""


@dataclass(frozen=True)
class ExportRequest:
    root: Path
    db_url: str
    out: Path
    job: str | None = None  # id or key prefix; else the experiment's best model
    experiment: str | None = None
    family: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    job_key: str
    pt2_error: float
    onnx_error: float
    symmetry_error: float
    seconds: float


def export(request: ExportRequest) -> ExportResult:
    start = time.monotonic()
    if request.out.exists():
        raise ExportError(f"--out {request.out} already exists; remove it or choose another folder")
    job = find_job(request)
    config = config_from_dict(json.loads(job.config_json))
    trained = load_trained(request.root, job.key, config)
    x, source = verification_inputs(config, request.root, trained.image_size)
    with staged_folder(request.out) as staging:
        meta = write_verified(trained.model, config, x, source, staging)
        meta.update(describe_job(request, job, config, trained))
        (staging / artifact.META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    check = meta["verification"]
    return ExportResult(request.out, job.key, check["pt2_max_relative_difference"],
                        check["onnx_max_relative_difference"], meta["symmetry"]["own_group_error"],
                        time.monotonic() - start)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out`, renamed to `out` when the block succeeds and removed when it raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's private mode would otherwise stick to the published folder
        yield staging
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---- which job, which weights ----------------------------------------------------------------------------------

def find_job(request: ExportRequest) -> JobModel:
    db = Database(request.db_url, create=False)
    reference = request.job if request.job else str(best_job(request))
    job = db.find_job(reference)
    if job.status != "done":
        raise ExportError(f"job {job.job_id} ({job.key}) is {job.status}, not done; only finished jobs are exported "
                          "(python -m runner status lists them)")
    return job


def best_job(request: ExportRequest) -> int:
    import reports

    try:
        jobs = reports.load(request.db_url, experiment=request.experiment)
        task = str(jobs["task"].iloc[0]) if len(jobs) else "classification"
        return best_job_id(jobs, task, request.family, request.group)
    except (reports.ReportError, SelectionError) as exc:
        raise ExportError(f"--best for experiment {request.experiment!r}: {exc}") from exc


@dataclass(frozen=True)
class Trained:
    """A job's network with its best weights, the class names of its outputs and the side of its patches."""

    model: torch.nn.Module
    class_names: list[str]
    image_size: int


def load_trained(root: Path, key: str, config: JobConfig) -> Trained:
    from runner.training.loop import build

    path = checkpoint.existing_path(root, config.experiment, key)  # legacy roots: the shared folder
    state = checkpoint.load(path)
    if state is None:
        raise ExportError(f"no checkpoint at {path}; pass the --root the job ran under, or run it again")
    classes = _checkpoint_classes(state, config, path)
    model = build(config, len(classes))  # segmentation: one output whatever its class names
    model.load_state_dict(state["best_model"] if state.get("best_model") is not None else state["model"])
    return Trained(model.eval(), classes, int(state.get("image_size") or input_size(config)))


def trained_model(root: Path, key: str, config: JobConfig) -> torch.nn.Module:
    return load_trained(root, key, config).model


def _checkpoint_classes(state: dict[str, Any], config: JobConfig, path: Path) -> list[str]:
    """The checkpoint's class names; older checkpoints are binary with PCam's (or segmentation's) names."""
    classes = state.get("classes") if config.task == "classification" else None
    if classes is None:
        return list(CLASS_NAMES[config.task])
    classes = [str(name) for name in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ExportError(f"{path} names the classes {classes}: a classifier needs two or more distinct names; "
                          "run the job again")
    return classes


def input_size(config: JobConfig) -> int:
    """The patch side of a checkpoint that does not record it."""
    return 96 if config.data.source == "pcam" else config.data.image_size


def verification_inputs(config: JobConfig, root: Path, size: int) -> tuple[torch.Tensor, str]:
    """Normalised held-out test patches of side `size`, and what they are (model.json's verification.inputs).

    The user's own data is not read: seeded random tissue-like images of that size instead; so too when the
    PCam or synthetic files are not at hand.
    """
    from runner.data import DataError, load_splits
    from runner.training.predict import PIXEL_MAX, normalise

    if config.data.source in OWN_DATA_SOURCES:
        reason = f"data.source = {config.data.source!r}: the user's own files are not read at export"
    else:
        try:
            split = load_splits(config.task, config.data, root / "data").test
            x, _ = split.get_batch(np.arange(min(VERIFY_PATCHES, len(split))))
        except DataError:
            reason = "the job's data files are not at hand"
        else:
            if tuple(x.shape[-2:]) == (size, size):
                return normalise(x.float() / PIXEL_MAX), f"{len(x)} held-out test patches of the job's data"
            reason = f"the job's test patches are {x.shape[-2]}x{x.shape[-1]}, not the model's input"
    from equiv.checks import smooth_images

    return smooth_images(VERIFY_PATCHES, size, seed=VERIFY_SEED), (
        f"{VERIFY_PATCHES} seeded random tissue-like images (equiv.checks.smooth_images, seed {VERIFY_SEED}) of "
        f"{size}x{size} pixels: {reason}")


# ---- writing and checking the two copies -----------------------------------------------------------------------

def write_verified(model: torch.nn.Module, config: JobConfig, x: torch.Tensor, inputs: str,
                   folder: Path) -> dict[str, Any]:
    """Write model.pt2 and model.onnx into `folder`, check them on `x` (described by `inputs`), and return
    model.json's measured sections."""
    import equiv

    plain = equiv.export_eval(model)
    with torch.no_grad():
        reference = model(x)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(plain, (x[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / artifact.PT2_FILE))
    with contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):  # it prints progress and notes
        onnx_program = torch.onnx.export(plain, (x[:2],), dynamo=True, dynamic_shapes=({0: batch},),
                                         input_names=["image"], output_names=["logits"], verbose=False)
    onnx_program.save(str(folder / artifact.ONNX_FILE))
    reloaded = torch.export.load(str(folder / artifact.PT2_FILE)).module()
    with torch.no_grad():
        pt2_error = _relative(reloaded(x), reference)
    onnx_error = _relative(torch.from_numpy(_run_onnx(folder / artifact.ONNX_FILE, x)), reference)
    worst = max(pt2_error, onnx_error)
    if not worst <= AGREEMENT_TOLERANCE:
        raise VerificationError(f"exported copies differ from the trained model by {worst:.2e} (pt2 {pt2_error:.2e}, "
                          f"onnx {onnx_error:.2e}; allowed {AGREEMENT_TOLERANCE:g}); nothing was written")
    symmetry = symmetry_of(reloaded, config, x)
    return {"verification": {"patches": len(x), "inputs": inputs, "pt2_max_relative_difference": pt2_error,
                             "onnx_max_relative_difference": onnx_error, "tolerance": AGREEMENT_TOLERANCE},
            "symmetry": symmetry}


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    from equiv.checks import relative_error

    return relative_error(a.float(), b.float())


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def symmetry_of(module: torch.nn.Module, config: JobConfig, x: torch.Tensor) -> dict[str, Any]:
    """Errors of the exported model under its own group's grid elements and under all eight rot90/flips."""
    from equiv.checks import equivariance_errors, invariance_errors
    from equiv.groups import parse_group

    measure = invariance_errors if config.task == "classification" else equivariance_errors
    own = measure(module, x, parse_group(config.model.group, config.model.max_frequency))
    grid = measure(module, x, parse_group("D4"))
    own_error = max(own.values())
    if not own_error <= SYMMETRY_TOLERANCE:
        raise VerificationError(f"the exported model lost its {config.model.group} symmetry (error {own_error:.2e}, "
                          f"allowed {SYMMETRY_TOLERANCE:g}); nothing was written")
    return {"kind": "invariant" if config.task == "classification" else "equivariant",
            "own_group_error": own_error, "grid_errors": grid, "tolerance": SYMMETRY_TOLERANCE,
            "exact_elements": [name for name, error in grid.items() if error <= SYMMETRY_TOLERANCE]}


# ---- model.json ------------------------------------------------------------------------------------------------

def describe_job(request: ExportRequest, job: JobModel, config: JobConfig, trained: Trained) -> dict[str, Any]:
    """What a user of the artifact needs besides the measurements: input, scale, classes, where it came from."""
    from runner.training.predict import INPUT_MEAN, INPUT_STD, PIXEL_MAX
    from runner.training.provenance import git_state

    db = Database(request.db_url, create=False)
    _, final = db.metrics_of(job.job_id)
    mpp, mpp_note = scale_of(config)
    commit, dirty = git_state(Path(__file__).resolve().parent)
    size = trained.image_size
    classes = len(trained.class_names)
    return {
        "format_version": artifact.FORMAT_VERSION,
        "task": config.task,
        "class_names": trained.class_names,
        "output": f"logits (N, {classes}): softmax gives P(class) in class_names order"
        if config.task == "classification" else "logits (N, 1, H, W): sigmoid gives P(nucleus) per pixel",
        "input": {"size": [size, size], "channels": 3, "colour": "RGB", "dtype": "uint8",
                  "layout": "the runtime takes float32 NCHW after normalisation"},
        "microns_per_pixel": mpp, "microns_per_pixel_note": mpp_note,
        "normalisation": {"scale": 1 / PIXEL_MAX, "mean": INPUT_MEAN, "std": INPUT_STD,
                          "formula": f"(x / {PIXEL_MAX:g} - {INPUT_MEAN:g}) / {INPUT_STD:g}"},
        "family": config.model.family, "group": config.model.group,
        "job": {"id": job.job_id, "key": job.key, "label": job.label, "experiment": config.experiment,
                "seed": config.seed},
        "test_metrics": {m.name: m.value for m in final},
        "provenance": {"trained": {"git_commit": job.git_commit, "git_dirty": job.git_dirty, "device": job.device,
                                   "hostname": job.hostname,
                                   "packages": json.loads(job.packages_json) if job.packages_json else None,
                                   "finished_at": job.finished_at.isoformat() if job.finished_at else None},
                       "exported": {"git_commit": commit, "git_dirty": dirty,
                                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}},
        "torch_version": torch.__version__,
        "config": config.to_dict(),
    }


def scale_of(config: JobConfig) -> tuple[float | None, str]:
    if config.data.source in ("pcam", "synthetic"):
        return PCAM_MPP, ("PatchCamelyon level 2: Camelyon16 slides at 40x (0.243 um/px) downsampled 4x; "
                          "the synthetic data imitates PCam at this scale")
    return None, ("unknown for the user's own data; for whole-slide prediction set microns_per_pixel here to the "
                  "training patches' scale")

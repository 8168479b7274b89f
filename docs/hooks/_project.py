"""Every place where the documentation reaches into the project's code, in one module.

Each name below is looked up in its place in the package layout (README: Architecture); when a name moves, the build
stops with the candidates it tried, and this file is the only one to fix. Nothing here imports torch: the doc tests and the
reference pages must stay fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]

# (module, attribute) candidates.
CLI_PARSER = (("runner.cli.main", "parser"),)
READ_SPEC = (("runner.spec", "read_spec"),)
SPEC_ERROR = (("runner.spec", "SpecError"),)
READ_PROFILE = (("runner.executors.cluster", "read_profile"),)
CLUSTER_ERROR = (("runner.executors.cluster", "ClusterError"),)
CLUSTER_PROFILE = (("runner.executors.cluster", "ClusterProfile"),)
# The frozen dataclasses whose field comments describe each spec key ("Field comments are the user documentation's
# source", runner/spec/config.py).
SPEC_CONFIG = (("runner.spec.config", None),)
SEARCH_CONFIG = (("runner.spec.search", "SearchSpec"),)
FINAL_CONFIG = (("runner.spec.search", "FinalSpec"),)
DB_BASE = (("runner.store.tables", "BaseModel"),)
EXIT_CODES = (("runner.exit_codes", None),)
GROUP_FORMS = (("equiv.group_names", "VALID_FORMS"),)
MODEL_RULES = (("equiv.hparams", "rules_for"),)
# model.json is written by the exporter, which imports torch: it is read as source (ast), never imported.
EXPORT_MODULE = ("runner.inference.export",)
ARTIFACT_MODULE = ("runner.inference.artifact",)
# The statistics page: the module docstring says what is computed and why; its functions are rendered below it.
STATS_MODULE = ("reports.stats",)
STATS_FUNCTIONS = ("reports.stats.summarize", "reports.stats.paired", "reports.stats.holm",
                   "reports.stats.seeds_for_power")
# Python API pages: mkdocstrings identifiers (read statically by griffe, so they are not imported either).
API_OBJECTS = (
    ("reports.load", "Reading results in a notebook: `reports.load` (one row per job) and its companions, all "
                     "importable from `reports`."),
    ("equiv.build_model", "Build any model family for any group."),
    ("equiv.checks", "Measure invariance and equivariance errors."),
    ("runner.inference.artifact.load", "Load an exported model without this code base."),
    ("runner.inference.artifact.Artifact", "What `load` returns."),
)


class ProjectNameMissing(ImportError):
    """A project name the docs need was found in none of its candidate places (see docs/hooks/_project.py)."""


def resolve(candidates: tuple[tuple[str, str | None], ...]) -> Any:
    """The first candidate that imports: the module itself (attribute None) or one of its attributes."""
    tried = []
    for module_name, attribute in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing candidate means "try the next one"; a module that exists but fails inside is a bug.
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            tried.append(module_name)
            continue
        if attribute is None:
            return module
        if hasattr(module, attribute):
            return getattr(module, attribute)
        tried.append(f"{module_name}.{attribute}")
    raise ProjectNameMissing(f"none of {', '.join(tried)} exists; update docs/hooks/_project.py to the new name")


def source_file(candidates: tuple[str, ...]) -> Path:
    """The .py file of the first candidate module that exists, found without executing it."""
    import importlib.util

    for name in candidates:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None and spec.origin:
            return Path(spec.origin)
    raise ProjectNameMissing(f"none of {', '.join(candidates)} exists; update docs/hooks/_project.py")


def cli_parser() -> argparse.ArgumentParser:
    return resolve(CLI_PARSER)()


def read_spec() -> Callable[..., Any]:
    return resolve(READ_SPEC)


def spec_error() -> type[Exception]:
    return resolve(SPEC_ERROR)


def read_profile() -> Callable[..., Any]:
    return resolve(READ_PROFILE)


def cluster_error() -> type[Exception]:
    return resolve(CLUSTER_ERROR)


def cluster_profile_class() -> type:
    return resolve(CLUSTER_PROFILE)


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema as `python -m runner schema` prints it: the command survives any regrouping."""
    out = subprocess.run([sys.executable, "-m", "runner", "schema"], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


def section_classes() -> dict[str, type]:
    """Spec section -> its frozen dataclass (for the field comments)."""
    config = resolve(SPEC_CONFIG)
    return {"data": config.DataSpec, "train": config.TrainSpec, "augment": config.AugmentSpec,
            "eval": config.EvalSpec, "model": config.ModelSpec,
            "search": resolve(SEARCH_CONFIG), "final": resolve(FINAL_CONFIG)}


def db_metadata():
    """The SQLAlchemy declarative base of the results database (its .metadata and .registry)."""
    return resolve(DB_BASE)


def exit_codes() -> ModuleType:
    return resolve(EXIT_CODES)


def group_forms() -> str:
    return resolve(GROUP_FORMS)


def model_rules(family: str) -> dict[str, Any]:
    return resolve(MODEL_RULES)(family)


def export_source() -> Path:
    return source_file(EXPORT_MODULE)


def artifact_source() -> Path:
    return source_file(ARTIFACT_MODULE)


def stats_source() -> Path:
    return source_file(STATS_MODULE)

"""TOML spec -> validated, frozen Spec. Every problem is collected and reported at once.

A spec has sections [experiment], [data], [train], [augment], [eval], [grid] and one or more [[model]] blocks.
Any scalar may be a list: it becomes a sweep axis. A model block may override [train]/[augment]/[data] for its own
family with sub-tables (`[model.augment]`), and its own lists sweep only that block.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equiv.group_names import PLAIN_FAMILIES, VALID_FORMS, GroupError, parse_group
from runner.spec import config as C
from runner.spec.fields import (
    BLOCK_OVERRIDABLE,
    LIST_VALUED,
    MODEL_RULES,
    SECTIONS,
    Rules,
    check_scalar,
    field_types,
    is_int,
    model_rules,
)
from runner.spec.search import (
    FinalSpec,
    SearchSpec,
    default_metric,
    merge_search,
    parse_final,
    parse_search,
)
from runner.spec.toml_file import TomlFileError, load_toml, tomllib

EXPERIMENT_KEYS = ("name", "task", "seeds", "description")
TOP_LEVEL = ("experiment", "data", "train", "augment", "eval", "grid", "search", "final", "model")


class SpecError(Exception):
    """A spec with problems. `problems` lists (key path, message); str() shows them all with the file."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem{'s' * (len(problems) != 1)} in the spec"]
        lines += [f"  {key}: {message}" for key, message in problems]
        lines.append("Nothing was run or written. Fix the keys above and run again.")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ModelBlock:
    """One [[model]] block after validation: raw values where a list means a sweep axis."""

    index: int
    values: dict[str, Any]  # dotted key ("model.width", "train.lr", ...) -> value or list of values
    search: SearchSpec | None = None  # [search] merged with this block's [model.search]; None: a plain grid


@dataclass(frozen=True)
class Spec:
    path: str
    text: str
    name: str
    task: str
    seeds: tuple[int, ...]
    description: str
    blocks: tuple[ModelBlock, ...]
    final: FinalSpec | None = None

    @property
    def searched(self) -> bool:
        """A study (search and/or final stage) rather than a plain grid: jobs are planned from the database."""
        return self.final is not None or any(block.search is not None for block in self.blocks)


def read_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read, override and validate a spec file; raise SpecError listing every problem."""
    path = Path(path)
    try:
        text, raw = load_toml(path)
    except TomlFileError as exc:
        raise SpecError(str(path), [(exc.key, exc.message)]) from None
    return parse_spec(raw, str(path), text, overrides)


def parse_spec(raw: dict[str, Any], path: str, text: str = "", overrides=()) -> Spec:
    problems: list[tuple[str, str]] = []
    raw = apply_overrides(raw, overrides, problems)
    _check_top_level(raw, problems)
    experiment = _parse_experiment(raw.get("experiment", {}), problems)
    shared = {}
    for section in ("data", "train", "augment", "eval"):
        shared.update(_parse_section(section, raw.get(section, {}), section, problems))
    shared.update(_parse_grid(raw.get("grid", {}), problems))
    blocks = _parse_blocks(raw.get("model"), shared, experiment.get("task"), problems)
    blocks = _parse_searches(raw, blocks, experiment.get("task"), problems)
    final = _parse_final(raw, blocks, experiment.get("task"), problems)
    if problems:
        raise SpecError(path, list(dict.fromkeys(problems)))  # a shared [search] is checked once per block
    return Spec(path=path, text=text, name=experiment["name"], task=experiment["task"],
                seeds=tuple(experiment["seeds"]), description=experiment.get("description", ""),
                blocks=tuple(blocks), final=final)


# ---- overrides -------------------------------------------------------------------------------------------------

def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=0.01` -> (["train", "lr"], 0.01). Values are TOML (`[1, 2]`, `true`, `"x"`); bare words are strings."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=3)")
    key, value = item.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides, problems: list[tuple[str, str]]) -> dict[str, Any]:
    """Set dotted keys on a copy of the raw TOML. `model.X` sets X in every [[model]] block."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        try:
            keys, value = parse_override(item)
        except ValueError as exc:
            problems.append((f"override {item!r}", str(exc)))
            continue
        if keys[0] == "model":
            blocks = raw.get("model") if isinstance(raw.get("model"), list) else []
            for block in blocks:
                _set_nested(block, keys[1:], value)
        else:
            _set_nested(raw, keys, value)
    return raw


def _set_nested(table: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        table = table.setdefault(key, {})
    table[keys[-1]] = value


# ---- sections --------------------------------------------------------------------------------------------------

def _check_top_level(raw: dict[str, Any], problems) -> None:
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append((key, f"unknown section; allowed: {', '.join(TOP_LEVEL)}"))
    for key in ("experiment", "data", "train", "augment", "eval", "grid", "search", "final"):
        if key in raw and not isinstance(raw[key], dict):
            problems.append((key, f"expected a table [{key}], got {type(raw[key]).__name__}"))
            raw[key] = {}


def _parse_experiment(table: dict[str, Any], problems) -> dict[str, Any]:
    out: dict[str, Any] = {"task": "classification", "seeds": [0], "description": ""}
    for key, value in table.items():
        if key not in EXPERIMENT_KEYS:
            problems.append((f"experiment.{key}", f"unknown key; allowed: {', '.join(EXPERIMENT_KEYS)}"))
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(("experiment.name", "required: a non-empty string naming the experiment"))
    else:
        out["name"] = name.strip()
    task = table.get("task", "classification")
    if task not in C.TASKS:
        problems.append(("experiment.task", f"got {task!r}; allowed: {', '.join(C.TASKS)}"))
    else:
        out["task"] = task
    seeds = table.get("seeds", [0])
    seeds = [seeds] if is_int(seeds) else seeds
    if not (isinstance(seeds, list) and seeds and all(is_int(s) and s >= 0 for s in seeds)):
        problems.append(("experiment.seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}"))
    elif len(set(seeds)) != len(seeds):
        problems.append(("experiment.seeds", f"seeds repeat: {seeds!r}"))
    else:
        out["seeds"] = seeds
    if not isinstance(table.get("description", ""), str):
        problems.append(("experiment.description", "expected a string"))
    else:
        out["description"] = table.get("description", "")
    return out


def _parse_section(section: str, table: Any, where: str, problems, rules: Rules = MODEL_RULES) -> dict[str, Any]:
    """Validate one table of a section; return {"section.field": value-or-sweep-list}."""
    if not isinstance(table, dict):
        problems.append((where, f"expected a table, got {type(table).__name__}"))
        return {}
    types = field_types(section)
    out = {}
    for key, value in table.items():
        if key not in types:
            problems.append((f"{where}.{key}", f"unknown key; allowed in [{section}]: {', '.join(types)}"))
            continue
        dotted = f"{section}.{key}"
        problem = _check_value(dotted, types[key], value, rules)
        if problem:
            problems.append((f"{where}.{key}", problem))
        else:
            out[dotted] = _normalise(dotted, types[key], value)
    return out


def _parse_grid(table: Any, problems) -> dict[str, Any]:
    """[grid] holds dotted keys with lists: `"train.lr" = [1e-3, 3e-3]`, the same as a list in place."""
    out: dict[str, Any] = {}
    if not isinstance(table, dict):
        return out
    for dotted, values in table.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS:
            problems.append((f"grid.{dotted}", f"unknown section {section!r}; use section.key with a section of "
                             f"{', '.join(SECTIONS)}"))
            continue
        if not isinstance(values, list):
            problems.append((f"grid.{dotted}", "expected a list of values to sweep"))
            continue
        if section == "model":
            out[f"grid:{dotted}"] = values  # applied inside each block
        else:
            out.update(_parse_section(section, {key: values}, f"grid.{section}", problems))
    return out


def _parse_blocks(blocks: Any, shared: dict[str, Any], task: str | None, problems) -> list[ModelBlock]:
    if not isinstance(blocks, list) or not blocks:
        problems.append(("model", "at least one [[model]] block is required, e.g. [[model]] family = \"cnn\""))
        return []
    out = []
    for index, block in enumerate(blocks):
        where = f"model[{index}]"
        if not isinstance(block, dict):
            problems.append((where, "expected a table [[model]]"))
            continue
        values = {k: v for k, v in shared.items() if not k.startswith("grid:model.")}
        scalars = {k: v for k, v in block.items() if k not in BLOCK_OVERRIDABLE and k != "search"}
        for dotted, swept in shared.items():
            if dotted.startswith("grid:model.") and dotted[len("grid:model."):] not in scalars:
                scalars[dotted[len("grid:model."):]] = swept
        values.update(_parse_section("model", scalars, where, problems, model_rules(task)))
        for section in BLOCK_OVERRIDABLE:
            if section in block:
                values.update(_parse_section(section, block[section], f"{where}.{section}", problems))
        _check_block(values, where, task, problems)
        out.append(ModelBlock(index=index, values=values))
    return out


def _check_block(values: dict[str, Any], where: str, task: str | None, problems) -> None:
    """Combinations that single fields cannot catch: family vs task, group vs family, group names."""
    families = _as_list(values.get("model.family", "cnn"))
    allowed = C.SEGMENTER_FAMILIES if task == "segmentation" else C.CLASSIFIER_FAMILIES
    for family in families:
        if family in C.FAMILIES and family not in allowed:
            problems.append((f"{where}.family", f"{family!r} does not fit task {task!r}; allowed: {', '.join(allowed)}"))
    for group in _as_list(values.get("model.group", "trivial")):
        try:
            parse_group(group)
        except GroupError:
            problems.append((f"{where}.group", f"unknown group {group!r}; valid forms: {VALID_FORMS}"))
            continue
        plain = [f for f in families if f in PLAIN_FAMILIES]
        if group != "trivial" and plain:
            problems.append((f"{where}.group", f"family {plain[0]!r} is a plain CNN: its group must be 'trivial' "
                             f"(got {group!r}); use family 'gcnn'/'gunet' for {group}"))
    if task == "segmentation" and "average" in _as_list(values.get("model.pool", "blur")):
        problems.append((f"{where}.pool", "model.pool applies to the classifiers (cnn, gcnn); the U-Nets always pool "
                         "with 2x2 averages"))
    if task == "segmentation":
        for depth in _as_list(values.get("model.depth", C.ModelSpec.depth)):
            for size in _as_list(values.get("data.image_size", C.DataSpec.image_size)):
                if is_int(depth) and is_int(size) and size % 2 ** depth:
                    problems.append((f"{where}.depth", f"a U-Net of depth {depth} needs data.image_size divisible "
                                     f"by {2 ** depth}; got {size}"))
    for source in _as_list(values.get("data.source", "synthetic")):
        if source == "pcam" and task == "segmentation":
            problems.append((f"{where}.data.source", "pcam has no masks; for segmentation use synthetic, folder or arrays"))
        if source == "folder" and not values.get("data.root"):  # pcam without a root: the download's folder
            problems.append((f"{where}.data.root", f"source {source!r} needs data.root = the folder with its files"))
        if source == "arrays" and not values.get("data.path"):
            problems.append((f"{where}.data.path", "source 'arrays' needs data.path = an .npz or .h5 file"))
        if source == "manifest" and not values.get("data.path"):
            problems.append((f"{where}.data.path", "source 'manifest' needs data.path = a CSV with columns path and "
                             "label (optional: split, group)"))
        if source == "manifest" and task == "segmentation":
            problems.append((f"{where}.data.source", "a manifest lists class labels; for segmentation use synthetic, "
                             "folder or arrays"))


# ---- search and final stage -----------------------------------------------------------------------------------

def _parse_searches(raw: dict[str, Any], blocks: list[ModelBlock], task: str | None, problems) -> list[ModelBlock]:
    """Attach each block's search ([search] merged with its [model.search]) after checking it against the block."""
    shared = raw.get("search")
    raw_blocks = raw.get("model") if isinstance(raw.get("model"), list) else []
    out = []
    for block in blocks:
        own = raw_blocks[block.index].get("search") if isinstance(raw_blocks[block.index], dict) else None
        merged = merge_search(shared, own)
        where = "search" if own is None else f"model[{block.index}].search"
        search = (parse_search(merged, where, task, problems, default_metric(task, raw.get("eval")))
                  if merged is not None else None)
        if search is not None:
            _check_search_block(search, block, where, problems)
        out.append(dataclasses.replace(block, search=search))
    return out


def _check_search_block(search: SearchSpec, block: ModelBlock, where: str, problems) -> None:
    for dotted, _ in search.space:
        if isinstance(block.values.get(dotted), list):
            problems.append((f"{where}.space.\"{dotted}\"", f"model[{block.index}] also sweeps {dotted} with a list; "
                             "a key is either a grid axis or searched, not both"))
    epochs = [e for e in _as_list(block.values.get("train.epochs", C.TrainSpec.epochs)) if is_int(e)]
    if search.prune != "none" and epochs and search.min_epochs >= min(epochs):
        problems.append((f"{where}.min_epochs", f"got {search.min_epochs}; pruning needs min_epochs below "
                         f"train.epochs ({min(epochs)} in model[{block.index}])"))


def _parse_final(raw: dict[str, Any], blocks: list[ModelBlock], task: str | None, problems) -> FinalSpec | None:
    if "final" not in raw:
        return None
    metrics = {b.search.metric for b in blocks if b.search is not None}
    final = parse_final(raw["final"], task, next(iter(metrics)) if len(metrics) == 1 else None, problems,
                        default_metric(task, raw.get("eval")))
    searched = sorted({k for b in blocks if b.search for k, _ in b.search.space} & set(final.per if final else ()))
    if searched:
        problems.append(("final.per", f"{', '.join(searched)} is searched, so it cannot also name the models "
                         "that the final stage compares; remove it from final.per or from the search space"))
    searched_in_raw = "search" in raw or any(isinstance(b, dict) and "search" in b for b in raw.get("model") or [])
    choosable = [b for b in blocks if b.search is not None or any(isinstance(v, list) for v in b.values.values())]
    if blocks and not choosable and not searched_in_raw:  # a [search] with problems is reported on its own
        problems.append(("final", "nothing to select from: add a [search] or sweep a key with a list "
                         "(e.g. train.lr = [1e-3, 3e-3]) so that [final] can pick each model's best configuration"))
    return final


# ---- values ----------------------------------------------------------------------------------------------------

def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_value(dotted: str, kind: Any, value: Any, rules: Rules = MODEL_RULES) -> str | None:
    if dotted in LIST_VALUED:
        if not (isinstance(value, list) and value and all(is_int(v) or isinstance(v, float) for v in value)):
            return f"expected a non-empty list of numbers, got {value!r}"
        return None
    if isinstance(value, list):
        if not value:
            return "an empty list sweeps nothing; give at least one value"
        if len(value) != len({repr(v) for v in value}):
            return f"the sweep repeats a value: {value!r}"
        problems = [p for p in (check_scalar(dotted, kind, v, rules) for v in value) if p]
        return problems[0] if problems else None
    return check_scalar(dotted, kind, value, rules)


def _normalise(dotted: str, kind: Any, value: Any) -> Any:
    """Ints given for float fields become floats so that 1 and 1.0 hash to the same job."""
    if dotted in LIST_VALUED:
        return tuple(float(v) for v in value)
    if kind is float:
        return [float(v) for v in value] if isinstance(value, list) else float(value)
    return value

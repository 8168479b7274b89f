"""What a spec may hold, field by field: the sections and their dataclasses, the allowed values (choices, bounds,
the models' own rules) and the check of one value against them.

Both the spec parser (runner.spec.parse, runner.spec.search) and the JSON Schema (runner.spec.json_schema) read these
tables, so the validator and the schema cannot disagree; nothing here imports the parsers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from equiv.hparams import MATCH_MODES, POOLS, RULES, Bound, Rule, rules_for
from runner.spec import config as C

SECTIONS: dict[str, type] = {
    "data": C.DataSpec,
    "train": C.TrainSpec,
    "augment": C.AugmentSpec,
    "eval": C.EvalSpec,
    "model": C.ModelSpec,
}
BLOCK_OVERRIDABLE = ("data", "train", "augment")
SEARCHABLE_SECTIONS = ("data", "train", "augment", "model")


CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": C.SOURCES,
    "train.optimizer": C.OPTIMIZERS,
    "train.schedule": C.SCHEDULES,
    "augment.geometric": C.GEOMETRIC_AUGMENTS,
    "model.family": C.FAMILIES,
    "model.match": MATCH_MODES,
    "model.pool": POOLS,
    "eval.metric": C.CLASS_METRICS,
}
# The model's own rules (equiv.hparams), which its constructors apply too: a spec that validates builds.
Rules = dict[str, Rule]
MODEL_RULES: Rules = {f"model.{key}": rule for key, rule in RULES.items()}  # the widest: any family
BOUNDS: dict[str, Bound] = {
    "data.fraction": Bound(0.0, 1.0, low_open=True),
    "data.train_size": Bound(0),
    "data.valid_size": Bound(0),
    "data.test_size": Bound(0),
    "data.image_size": Bound(16, 1024),
    "data.seed": Bound(0),
    "data.crop": Bound(0, 1024),
    "train.epochs": Bound(1, 10_000),
    "train.batch_size": Bound(1, 65_536),
    "train.lr": Bound(0.0, 10.0, low_open=True),
    "train.momentum": Bound(0.0, 1.0),
    "train.weight_decay": Bound(0.0, 1.0),
    "train.early_stopping": Bound(0),
    "train.checkpoint_minutes": Bound(0.0, low_open=True),
    "augment.stain": Bound(0.0, 1.0),
    "augment.brightness": Bound(0.0, 1.0),
    "augment.contrast": Bound(0.0, 1.0),
    "eval.rotation_samples": Bound(1),
    **{dotted: rule.bound for dotted, rule in MODEL_RULES.items()},
}
# Lists in these fields are values, not sweeps.
LIST_VALUED = {"eval.rotation_angles"}


def field_types(section: str) -> dict[str, Any]:
    """Field name -> annotated type of a section's dataclass."""
    cls = SECTIONS[section]
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def model_rules(task: str | None) -> Rules:
    """The model keys' rules for the task's families (a U-Net's depth is narrower than a classifier's)."""
    return {f"model.{key}": rule for key, rule in rules_for("unet" if task == "segmentation" else "cnn").items()}


def is_int(value: Any) -> bool:
    """An integer, and not a bool (TOML's true is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return is_int(value) or isinstance(value, float)


def type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, "a list of numbers")


def check_scalar(dotted: str, kind: Any, value: Any, rules: Rules = MODEL_RULES) -> str | None:
    ok = {
        int: is_int(value),
        float: is_number(value),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind, False)
    if not ok:
        return f"expected {type_name(kind)}, got {value!r}"
    if dotted in CHOICES and value not in CHOICES[dotted]:
        return f"got {value!r}; allowed: {', '.join(CHOICES[dotted])}"
    if dotted in rules and not rules[dotted].admits(value):
        return f"got {value!r}; allowed: {rules[dotted].describe()}"
    bound = BOUNDS.get(dotted)
    if bound and not bound.admits(value):
        return f"got {value!r}; allowed: {bound.describe()}"
    return None


def check_search_key(dotted: str, value: Any, kind: str, rules: Rules = MODEL_RULES) -> str | None:
    """A problem with one value a search distribution can produce for `dotted`; KeyError: not a spec key."""
    section, _, name = dotted.partition(".")
    types = field_types(section) if section in SEARCHABLE_SECTIONS else {}
    if name not in types or dotted in LIST_VALUED:
        keys = ", ".join(f"{s}.*" for s in SEARCHABLE_SECTIONS)
        raise KeyError(f"{dotted!r} is not a spec key that can be searched; use a key of {keys} "
                       "(e.g. train.lr, model.width)")
    if kind in ("log", "uniform") and types[name] is not float:
        return f"{dotted} takes {type_name(types[name])}: use {{ int = [low, high] }} or a choice"
    problem = check_scalar(dotted, types[name], float(value) if types[name] is float else value, rules)
    return f"{problem} (for {dotted})" if problem else None

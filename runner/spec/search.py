"""[search] and [final] tables -> frozen SearchSpec / FinalSpec, with every problem collected at once.

`runner.spec.parse` calls `parse_search` for the experiment-wide [search] and for each `[model.search]` override,
and `parse_final` for [final]. Nothing here knows Optuna: the sampler and pruner are built from these in
runner.search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runner.spec.config import CLASS_METRICS
from runner.spec.fields import SECTIONS, Rules, check_search_key, field_types, is_int, is_number, model_rules

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "asha", "median")
DISTRIBUTIONS = ("log", "uniform", "int", "choice")
SEARCH_KEYS = ("sampler", "trials", "seed", "prune", "min_epochs", "reduction_factor", "metric", "startup_trials",
               "space")
FINAL_KEYS = ("seeds", "epochs", "select", "per")
# The validation metrics a job records each epoch, and which way is better (runner/training/loop.py's validate;
# auc and f1 are macro over classes when there are more than two).
METRIC_DIRECTIONS = {"valid_auc": "maximize", "valid_accuracy": "maximize", "valid_balanced_accuracy": "maximize",
                     "valid_f1": "maximize", "valid_nll": "minimize", "valid_loss": "minimize",
                     "valid_dice": "maximize", "valid_iou": "maximize"}
TASK_METRICS = {"classification": ("valid_auc", "valid_accuracy", "valid_balanced_accuracy", "valid_f1",
                                   "valid_nll", "valid_loss"),
                "segmentation": ("valid_dice", "valid_iou", "valid_loss")}
DEFAULT_METRIC = {"classification": "valid_auc", "segmentation": "valid_dice"}


def default_metric(task: str | None, eval_table: Any) -> str:
    """The validation metric a search compares and the final stage selects on when the spec names none: the
    experiment's headline (`eval.metric`, classification only), else the task's default."""
    headline = eval_table.get("metric") if isinstance(eval_table, dict) else None
    if task in (None, "classification") and isinstance(headline, str) and headline in CLASS_METRICS:
        return f"valid_{headline}"
    return DEFAULT_METRIC.get(task or "", "valid_auc")
# Config keys that name the model (what a search compares) or do not change results: never searched.
NOT_SEARCHABLE = {"model.family", "model.group", "data.source", "data.root", "data.path", "data.in_memory",
                  "train.checkpoint_minutes"}
PER_KEYS_SHORT = {"family": "model.family", "group": "model.group"}
DEFAULT_PER = ("family", "group", "augment.geometric")


@dataclass(frozen=True)
class Distribution:
    """One searched axis: log-uniform, uniform, integer (with step) or a choice among values."""

    kind: str  # log | uniform | int | choice
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def grid_values(self) -> tuple[Any, ...] | None:
        """The finite values a grid sampler walks; None for continuous distributions."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this distribution can produce (an earlier trial of an edited space may not be)."""
        if self.kind == "choice":
            return value in self.choices
        if not is_number(value) or not self.low <= value <= self.high or (self.kind == "int" and not is_int(value)):
            return False
        step = self.step or (1 if self.kind == "int" else None)
        return step is None or abs((value - self.low) / step - round((value - self.low) / step)) < 1e-9

    def describe(self) -> str:
        if self.kind == "choice":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        step = f" step {self.step:g}" if self.step else ""
        return f"{self.kind}[{self.low:g}, {self.high:g}]{step}"


@dataclass(frozen=True)
class SearchSpec:
    sampler: str = "tpe"  # grid | random | tpe
    trials: int = 10  # per model block and per combination of its plain-list axes; grid: the grid's size
    seed: int = 0
    prune: str = "none"  # none | asha | median
    min_epochs: int = 1  # the first rung (asha) or the warm-up (median)
    reduction_factor: int = 3  # asha: keep the top 1/reduction_factor at each rung
    metric: str = "valid_auc"  # the validation metric compared (the parser sets the task default: valid_auc, valid_dice)
    startup_trials: int = 5  # tpe: random trials before the model; median: done trials before pruning starts
    space: tuple[tuple[str, Distribution], ...] = ()

    @property
    def direction(self) -> str:
        return METRIC_DIRECTIONS[self.metric]

    def grid_size(self) -> int:
        return math.prod(len(d.grid_values() or ()) for _, d in self.space)


@dataclass(frozen=True)
class FinalSpec:
    seeds: tuple[int, ...]
    epochs: int = 0  # 0: the search's train.epochs
    select: str = "valid_auc"  # validation metric that picks each model's best configuration
    per: tuple[str, ...] = ("model.family", "model.group", "augment.geometric")  # what makes one "model"

    @property
    def direction(self) -> str:
        return METRIC_DIRECTIONS[self.select]


Problems = list[tuple[str, str]]


# ---- [search] --------------------------------------------------------------------------------------------------

def merge_search(base: dict[str, Any] | None, override: dict[str, Any] | None) -> dict[str, Any] | None:
    """A [model.search] table overrides the experiment's keys; its space adds to (or replaces keys of) the shared one."""
    if base is None and override is None:
        return None
    merged = {**(base or {}), **(override or {})}
    if isinstance((base or {}).get("space"), dict) and isinstance((override or {}).get("space"), dict):
        merged["space"] = {**base["space"], **override["space"]}
    return merged


def parse_search(table: Any, where: str, task: str | None, problems: Problems,
                 default: str | None = None) -> SearchSpec | None:
    """Validate one (merged) search table; every value a distribution can produce is checked against the spec key
    with the model rules of the task's families."""
    if not isinstance(table, dict):
        problems.append((where, f"expected a table [{where}]"))
        return None
    before = len(problems)
    for key in table:
        if key not in SEARCH_KEYS:
            problems.append((f"{where}.{key}", f"unknown key; allowed in [search]: {', '.join(SEARCH_KEYS)}"))
    values = {key: rule.parse(table, key, where, problems) for key, rule in SEARCH_SCALARS.items()}
    values |= {
        "metric": _metric(table.get("metric", default or DEFAULT_METRIC.get(task or "", "valid_auc")), task,
                          f"{where}.metric", problems),
    }
    space = _parse_space(table.get("space"), f"{where}.space", model_rules(task), problems)
    trials = _trials(table, values["sampler"], space, where, problems)
    if len(problems) > before:
        return None
    return SearchSpec(trials=trials, space=tuple(sorted(space.items())), **values)


@dataclass(frozen=True)
class Scalar:
    """One plain key of [search]: a choice among `allowed`, or an integer >= `low`; its default. The validator and the
    JSON Schema (runner/spec/json_schema.py) both read SEARCH_SCALARS, so what a spec may say is written once."""

    default: Any
    allowed: tuple[str, ...] = ()
    low: int | None = None

    def parse(self, table: dict[str, Any], key: str, where: str, problems: Problems) -> Any:
        value = table.get(key, self.default)
        if self.allowed and value not in self.allowed:
            problems.append((f"{where}.{key}", f"got {value!r}; allowed: {', '.join(self.allowed)}"))
            return self.default
        if self.low is not None and (not is_int(value) or value < self.low):
            problems.append((f"{where}.{key}", f"expected an integer >= {self.low}, got {value!r}"))
            return self.default
        return value


SEARCH_SCALARS = {
    "sampler": Scalar("tpe", allowed=SAMPLERS),
    "seed": Scalar(0, low=0),
    "prune": Scalar("none", allowed=PRUNERS),
    "min_epochs": Scalar(1, low=1),
    "reduction_factor": Scalar(3, low=2),
    "startup_trials": Scalar(5, low=0),
}
FINAL_EPOCHS = Scalar(0, low=1)  # [final] epochs; 0 (absent) keeps each job's train.epochs
TRIALS_LOW = 1  # `trials` has no default: a grid sampler counts its points, the others need it said


def _metric(value: Any, task: str | None, where: str, problems: Problems) -> str:
    allowed = TASK_METRICS.get(task or "", tuple(METRIC_DIRECTIONS))
    if value not in allowed:
        problems.append((where, f"got {value!r}; a {task or 'this'} experiment records: {', '.join(allowed)}"))
        return allowed[0]
    return value


def _trials(table, sampler: str, space: dict[str, Distribution], where: str, problems: Problems) -> int:
    if sampler == "grid":
        continuous = [k for k, d in space.items() if d.grid_values() is None]
        if continuous:
            problems.append((f"{where}.sampler", f"the grid sampler needs finite axes ('choice' or 'int'); "
                             f"{', '.join(continuous)} {'is' if len(continuous) == 1 else 'are'} continuous: "
                             "use sampler = 'tpe' or 'random', or a choice"))
            return 1
        size = math.prod(len(d.grid_values()) for d in space.values()) if space else 1
        trials = table.get("trials", size)
        if is_int(trials) and trials > size:
            problems.append((f"{where}.trials", f"got {trials}; the grid has only {size} points"))
    else:
        trials = table.get("trials", 10)
    if not is_int(trials) or trials < TRIALS_LOW:
        problems.append((f"{where}.trials", f"expected an integer >= {TRIALS_LOW}, got {trials!r}"))
        return 1
    return trials


def _parse_space(space: Any, where: str, rules: Rules, problems: Problems) -> dict[str, Distribution]:
    if space is None or space == {}:
        problems.append((where, 'a search needs at least one axis, e.g. [search.space] "train.lr" = '
                         "{ log = [1e-4, 1e-2] }"))
        return {}
    if not isinstance(space, dict):
        problems.append((where, "expected a table of dotted keys to distributions"))
        return {}
    out = {}
    for dotted, raw in space.items():
        distribution = _parse_distribution(dotted, raw, f'{where}."{dotted}"', rules, problems)
        if distribution is not None:
            out[dotted] = distribution
    return out


def _parse_distribution(dotted: str, raw: Any, where: str, rules: Rules, problems: Problems) -> Distribution | None:
    if dotted in NOT_SEARCHABLE:
        problems.append((where, f"{dotted} cannot be searched: model.family and model.group name the models being "
                         "compared (sweep them with a list), the others do not change results"))
        return None
    kinds = [k for k in DISTRIBUTIONS if isinstance(raw, dict) and k in raw]
    extra = [k for k in raw if k not in DISTRIBUTIONS and k != "step"] if isinstance(raw, dict) else []
    if len(kinds) != 1 or extra:
        problems.append((where, f"expected one distribution: {{ log = [low, high] }}, {{ uniform = [low, high] }}, "
                         f"{{ int = [low, high], step = 1 }} or {{ choice = [...] }}; got {raw!r} "
                         f"(allowed distributions: {', '.join(DISTRIBUTIONS)})"))
        return None
    kind, value = kinds[0], raw[kinds[0]]
    if kind == "choice":
        distribution = _choice_distribution(value, raw, where, problems)
    else:
        distribution = _range_distribution(kind, value, raw.get("step"), where, problems)
    if distribution is None:
        return None
    return distribution if _fits_key(dotted, distribution, where, rules, problems) else None


def _choice_distribution(value, raw, where, problems) -> Distribution | None:
    if "step" in raw:
        problems.append((where, "step applies to int and uniform distributions, not choice"))
        return None
    if not isinstance(value, list) or not value:
        problems.append((where, f"choice needs a non-empty list of values, got {value!r}"))
        return None
    if len({repr(v) for v in value}) != len(value):
        problems.append((where, f"choice repeats a value: {value!r}"))
        return None
    return Distribution("choice", choices=tuple(value))


def _range_distribution(kind, value, step, where, problems) -> Distribution | None:
    if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
        problems.append((where, f"{kind} needs [low, high] with two numbers, got {value!r}"))
        return None
    low, high = value
    if low >= high:
        problems.append((where, f"low must be below high, got {kind} = [{low}, {high}]"))
        return None
    if kind == "log" and low <= 0:
        problems.append((where, f"log bounds must be > 0, got [{low}, {high}]"))
        return None
    if kind == "int" and not (is_int(low) and is_int(high)):
        problems.append((where, f"int bounds must be integers, got [{low}, {high}]"))
        return None
    if step is not None and (kind == "log" or not is_number(step) or step <= 0 or (kind == "int" and not is_int(step))):
        problems.append((where, f"step must be a positive {'integer' if kind == 'int' else 'number'} and applies to "
                         f"int and uniform only; got step = {step!r} for {kind}"))
        return None
    return Distribution(kind, low=low, high=high, step=step)


def _fits_key(dotted: str, distribution: Distribution, where: str, rules: Rules, problems: Problems) -> bool:
    """Every value the distribution can produce must be a valid value of the spec key (type, bounds, choices)."""
    probes = distribution.choices if distribution.kind == "choice" else (distribution.low, distribution.high)
    for value in probes:
        try:
            problem = check_search_key(dotted, value, distribution.kind, rules)
        except KeyError as exc:
            problems.append((where, str(exc.args[0])))
            return False
        if problem:
            problems.append((where, problem))
            return False
    return True


# ---- [final] ---------------------------------------------------------------------------------------------------

def parse_final(table: Any, task: str | None, search_metric: str | None, problems: Problems,
                default: str | None = None) -> FinalSpec | None:
    if not isinstance(table, dict):
        problems.append(("final", "expected a table [final]"))
        return None
    before = len(problems)
    for key in table:
        if key not in FINAL_KEYS:
            problems.append((f"final.{key}", f"unknown key; allowed in [final]: {', '.join(FINAL_KEYS)}"))
    seeds = table.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(is_int(s) and s >= 0 for s in seeds)) or \
            len(set(seeds)) != len(seeds):
        problems.append(("final.seeds", f"expected a non-empty list of distinct integers >= 0 (e.g. [0, 1, 2, 3, 4]), "
                         f"got {seeds!r}"))
    epochs = FINAL_EPOCHS.parse(table, "epochs", "final", problems) if "epochs" in table else 0
    select = _metric(table.get("select", search_metric or default or DEFAULT_METRIC.get(task or "", "valid_auc")),
                     task, "final.select", problems)
    per = _parse_per(table.get("per", list(DEFAULT_PER)), problems)
    if len(problems) > before:
        return None
    return FinalSpec(seeds=tuple(seeds), epochs=epochs, select=select, per=per)


def _parse_per(per: Any, problems: Problems) -> tuple[str, ...]:
    known = {f"{s}.{f}" for s in SECTIONS if s != "eval" for f in field_types(s)}
    if not (isinstance(per, list) and per and all(isinstance(p, str) for p in per)):
        problems.append(("final.per", f"expected a non-empty list of keys, e.g. {list(DEFAULT_PER)}; got {per!r}"))
        return ()
    out = []
    for item in per:
        dotted = PER_KEYS_SHORT.get(item, item)
        if dotted not in known:
            problems.append(("final.per", f"unknown key {item!r}; allowed: family, group or a spec key such as "
                             "augment.geometric, data.fraction, model.width"))
        out.append(dotted)
    return tuple(out)

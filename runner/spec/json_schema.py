"""The spec's JSON Schema, generated from the same dataclasses and rules the loader uses (editors validate with it).

`specs/spec.schema.json` is this output; a test keeps them equal (`python -m runner schema > specs/spec.schema.json`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from runner.spec import config as C
from runner.spec import search as S
from runner.spec.fields import BLOCK_OVERRIDABLE, BOUNDS, CHOICES, LIST_VALUED, MODEL_RULES, SECTIONS, field_types

_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _scalar(dotted: str, kind: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES[kind]}
    if dotted in CHOICES:
        schema["enum"] = list(CHOICES[dotted])
    bound = BOUNDS.get(dotted)
    if bound and bound.low is not None:
        schema["exclusiveMinimum" if bound.low_open else "minimum"] = bound.low
    if bound and bound.high is not None:
        schema["exclusiveMaximum" if bound.high_open else "maximum"] = bound.high
    if dotted in MODEL_RULES and MODEL_RULES[dotted].odd:
        schema["not"] = {"multipleOf": 2}  # odd kernels only
    return schema


def _field(dotted: str, kind: Any, default: Any) -> dict[str, Any]:
    if dotted in LIST_VALUED:
        return {"type": "array", "items": {"type": "number"}, "minItems": 1, "default": list(default)}
    one = _scalar(dotted, kind)
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}], "default": default}


def section_schema(section: str) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}
    props = {name: _field(f"{section}.{name}", kind, defaults[name]) for name, kind in field_types(section).items()}
    return {"type": "object", "additionalProperties": False, "properties": props}


def _distribution() -> dict[str, Any]:
    pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    one = {kind: {"type": "object", "additionalProperties": False, "required": [kind],
                  "properties": {kind: pair, **({"step": {"type": "number", "exclusiveMinimum": 0}}
                                                if kind in ("int", "uniform") else {})}}
           for kind in ("log", "uniform", "int")}
    one["choice"] = {"type": "object", "additionalProperties": False, "required": ["choice"],
                     "properties": {"choice": {"type": "array", "minItems": 1}}}
    return {"oneOf": list(one.values())}


def search_schema() -> dict[str, Any]:
    metrics = {"enum": list(S.METRIC_DIRECTIONS)}
    special = {"trials": {"type": "integer", "minimum": S.TRIALS_LOW}, "metric": metrics,
               "space": {"type": "object", "additionalProperties": _distribution()}}
    properties = {key: special[key] if key in special else _search_scalar(S.SEARCH_SCALARS[key])
                  for key in S.SEARCH_KEYS}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _search_scalar(rule: S.Scalar) -> dict[str, Any]:
    """The schema of one of [search]'s plain keys, from the table the validator checks them with."""
    if rule.allowed:
        return {"enum": list(rule.allowed), "default": rule.default}
    return {"type": "integer", "minimum": rule.low, "default": rule.default}


def final_schema() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["seeds"], "properties": {
        "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        "epochs": {"type": "integer", "minimum": S.FINAL_EPOCHS.low},
        "select": {"enum": list(S.METRIC_DIRECTIONS)},
        "per": {"type": "array", "items": {"type": "string"}, "minItems": 1, "default": list(S.DEFAULT_PER)},
    }}


def json_schema() -> dict[str, Any]:
    model = section_schema("model")
    model["properties"].update({s: section_schema(s) for s in BLOCK_OVERRIDABLE})
    model["properties"]["search"] = search_schema()
    model["required"] = ["family"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "experiment spec",
        "type": "object",
        "additionalProperties": False,
        "required": ["experiment", "model"],
        "properties": {
            "experiment": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                "name": {"type": "string", "minLength": 1},
                "task": {"enum": list(C.TASKS), "default": "classification"},
                "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                "description": {"type": "string"},
            }},
            **{s: section_schema(s) for s in ("data", "train", "augment", "eval")},
            "grid": {"type": "object", "additionalProperties": {"type": "array", "minItems": 1}},
            "search": search_schema(),
            "final": final_schema(),
            "model": {"type": "array", "minItems": 1, "items": model},
        },
    }

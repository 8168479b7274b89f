"""The spec's JSON Schema, generated from the same dataclasses and rules the loader uses (editors validate with it).

`specs/spec.schema.json` is this output; a test keeps them equal (`python -m runner schema > specs/spec.schema.json`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from runner.spec import BLOCK_OVERRIDABLE, BOUNDS, CHOICES, LIST_VALUED, SECTIONS, field_types
from runner import config as C

_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _scalar(dotted: str, kind: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES[kind]}
    if dotted in CHOICES:
        schema["enum"] = list(CHOICES[dotted])
    bound = BOUNDS.get(dotted)
    if bound and bound.low is not None:
        schema["exclusiveMinimum" if bound.low_open else "minimum"] = bound.low
    if bound and bound.high is not None:
        schema["maximum"] = bound.high
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


def json_schema() -> dict[str, Any]:
    model = section_schema("model")
    model["properties"].update({s: section_schema(s) for s in BLOCK_OVERRIDABLE})
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
            "model": {"type": "array", "minItems": 1, "items": model},
        },
    }

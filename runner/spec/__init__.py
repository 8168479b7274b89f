"""Specs: a TOML file -> a validated, frozen Spec -> jobs, each identified by the hash of its resolved config.

parse (the file, [experiment], sections, [[model]] blocks), search ([search] and [final]), fields (what each key may
hold, shared by the parser and the JSON Schema), config (the job config dataclasses), identity (expansion into jobs,
job keys), json_schema (the schema editors validate with), toml_file (reading a TOML file).
"""
from runner.spec.parse import ModelBlock, Spec, SpecError, parse_spec, read_spec

__all__ = ["ModelBlock", "Spec", "SpecError", "parse_spec", "read_spec"]

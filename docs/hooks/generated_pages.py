"""The reference pages, generated from the code at build time (never typed, never committed).

Each function returns one page's markdown. The sources: the spec's JSON Schema (`python -m runner schema`) with the
field comments of its frozen dataclasses, the real argparse parser, the database's SQLAlchemy metadata, the exporter's
source for model.json, the exit-code module and the cluster profile's dataclass. Project names are reached only
through `_project`.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import _project

GENERATED = ("<!-- Generated at build time by docs/hooks/generated_pages.py from {source}. Do not edit: change the code. "
             "-->\n\n")


# ---- shared helpers --------------------------------------------------------------------------------------------

def cell(text: Any) -> str:
    """Plain text that is safe inside a markdown table cell: help texts say `[--check]` or `[search]`, which
    markdown would otherwise read as links."""
    text = str(text).replace("|", "\\|").replace("\n", " ").strip()
    return text.replace("[", "\\[").replace("]", "\\]")


def code(value: Any) -> str:
    return "" if value in (None, "") else "`" + str(value).replace("|", "\\|").replace("\n", " ").strip() + "`"


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":--" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line, or the comment lines just above it, in the class's source."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    whole_line: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
            if not source.splitlines()[token.start[0] - 1][: token.start[1]].strip():
                whole_line.add(token.start[0])
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            trailing = comments.get(node.end_lineno) if node.end_lineno not in whole_line else None
            above, line = [], node.lineno - 1
            while line in whole_line:
                above.insert(0, comments[line])
                line -= 1
            text = trailing or " ".join(above)
            if text:
                out[node.target.id] = text
    return out


# ---- the spec --------------------------------------------------------------------------------------------------

def _scalar_of(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the schema of one value, whether a list of them is a sweep axis)."""
    if "anyOf" in prop:
        return prop["anyOf"][0], True
    return prop, False


def _type_of(schema: dict[str, Any]) -> str:
    if schema.get("type") == "array":
        return f"list of {_type_of(schema.get('items', {}))}s"
    if "enum" in schema and "type" not in schema:
        return "string"
    if "oneOf" in schema:
        return "distribution"
    return {"integer": "integer", "number": "number", "boolean": "boolean", "string": "string",
            "object": "table"}.get(schema.get("type"), "any")


def _allowed(schema: dict[str, Any]) -> str:
    if schema.get("type") == "array":
        inner = _allowed(schema.get("items", {}))
        size = f"at least {schema['minItems']} item(s)" if "minItems" in schema else ""
        return "; ".join(p for p in (inner, size) if p)
    parts = []
    if "enum" in schema:
        parts.append(" \\| ".join(code(v) for v in schema["enum"]))
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in schema:
            parts.append(f"{sign} {schema[key]:g}")
    if schema.get("not") == {"multipleOf": 2}:
        parts.append("odd")
    if schema.get("minLength"):
        parts.append("not empty")
    return ", ".join(parts)


def _default(prop: dict[str, Any], cls: type | None, name: str) -> str:
    if "default" in prop:
        value = prop["default"]
    elif cls is not None and name in {f.name for f in dataclasses.fields(cls)}:
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        if field.default is dataclasses.MISSING:
            return "required"
        value = field.default
    else:
        return ""
    if isinstance(value, (list, tuple)) and len(value) > 6 and all(isinstance(v, (int, float)) for v in value):
        step = value[1] - value[0]
        if all(abs((b - a) - step) < 1e-9 for a, b in zip(value, value[1:])):
            return f"`{value[0]:g}` to `{value[-1]:g}` step `{step:g}` ({len(value)} values)"
    return code(_toml(value))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _section_rows(section: str, schema: dict[str, Any], cls: type | None, extra: dict[str, str]) -> list[tuple]:
    comments = field_comments(cls) if cls is not None else {}
    rows = []
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if prop.get("type") == "object" and name in ("data", "train", "augment", "search", "space"):
            continue  # sub-tables have their own section
        one, sweep = _scalar_of(prop)
        default = "required" if name in required else _default(prop, cls, name)
        note = " ".join(p for p in (prop.get("description") or comments.get(name, ""), extra.get(name, "")) if p)
        rows.append((f"`{section}.{name}`", _type_of(one), default, _allowed(one), "yes" if sweep else "",
                     cell(note)))
    return rows


def spec_page() -> str:
    schema = _project.json_schema()
    classes = _project.section_classes()
    props = schema["properties"]
    header = ("key", "type", "default", "allowed", "list = sweep", "meaning")
    out = [GENERATED.format(source="`python -m runner schema` and the field comments of the spec's dataclasses"),
           "# Spec reference\n\n",
           "Every key a spec may hold, with its type, default and allowed values, from the spec's own definitions: "
           "the JSON Schema that `python -m runner schema` prints (the same rules the loader applies) and the "
           "comments on the fields of the spec's dataclasses. Where *list = sweep* says yes, a list of values "
           "makes that key a grid axis. Unknown keys, wrong types and out-of-range values are all reported at "
           "once, with the file and the key path.\n\n",
           f"Top-level tables: {', '.join(code(k) for k in props)}; required: "
           f"{', '.join(code(k) for k in schema.get('required', ()))}.\n\n"]
    out += ["## [experiment]\n\n", table(header, _section_rows("experiment", props["experiment"], None, {
        "seeds": "every configuration runs once per seed"}))]
    for section in ("data", "train", "augment", "eval"):
        out += [f"\n## [{section}]\n\n", table(header, _section_rows(section, props[section], classes[section], {}))]
    model = props["model"]["items"]
    cnn, unet = _project.model_rules("cnn"), _project.model_rules("unet")
    narrower = {key: f"Segmentation families (unet, gunet): {rule.describe()}."
                for key, rule in unet.items() if cnn.get(key) != rule}
    narrower["group"] = f"Forms: {_project.group_forms()}. A plain family (cnn, unet) takes only `trivial`."
    out += ["\n## [[model]]\n\n", "One block per model family; at least one is required. A block may override "
            "`[data]`, `[train]` and `[augment]` for itself with sub-tables (`[model.train]`, ...) that take the keys "
            "of those sections, and `[search]` with `[model.search]`. Its own lists sweep only that block.\n\n",
            table(header, _section_rows("model", model, classes["model"], narrower))]
    out += ["\n## [grid]\n\n", "Sweeps by dotted key, the same as a list in place: `\"train.lr\" = [1e-3, 3e-3]`. "
            f"Each value: {_type_of(props['grid']['additionalProperties'])}, "
            f"{_allowed(props['grid']['additionalProperties'])}.\n\n"]
    search = props["search"]
    out += ["\n## [search]\n\n", "A study: each model block is searched (Optuna's samplers and pruners, rebuilt "
            "from the database at every trial). `[model.search]` overrides these keys for one block.\n\n",
            table(header, _section_rows("search", search, classes["search"], {}))]
    out += ["\n### [search.space]\n\n", "Dotted spec keys (of `data`, `train`, `augment`, `model`) mapped to one "
            "distribution each:\n\n", table(("form", "meaning"), _distribution_rows(
                search["properties"]["space"]["additionalProperties"]))]
    out += ["\n## [final]\n\n", "The final stage: each model's best configuration, trained again once per seed.\n\n",
            table(header, _section_rows("final", props["final"], classes["final"], {}))]
    return "".join(out)


def _distribution_rows(schema: dict[str, Any]) -> list[tuple[str, str]]:
    meaning = {"log": "log-uniform between the two numbers", "uniform": "uniform between the two numbers",
               "int": "integers between the two (inclusive)", "choice": "one of the listed values"}
    rows = []
    for one in schema["oneOf"]:
        kind = one["required"][0]
        optional = [k for k in one["properties"] if k != kind]
        example = {"log": "[1e-4, 1e-2]", "uniform": "[0.0, 0.3]", "int": "[8, 32]", "choice": "[0.0, 0.05]"}[kind]
        form = f"`{{ {kind} = {example}" + "".join(f", {k} = ..." for k in optional) + " }`"
        rows.append((form, meaning.get(kind, "") + (f"; optional {', '.join(optional)}" if optional else "")))
    return rows


# ---- the commands ----------------------------------------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    return list(_subparsers(parser).choices)


def _argument_row(action: argparse.Action) -> tuple[str, ...]:
    name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
    if action.option_strings and action.nargs == 0:
        kind = "flag"
    elif action.option_strings:
        kind = getattr(action.type, "__name__", None) or "string"
        kind = {"str": "string", "int": "integer", "float": "number"}.get(kind, kind)
        kind += " (repeatable)" if isinstance(action, argparse._AppendAction) else ""
    else:
        kind = {"+": "one or more", "*": "zero or more", "?": "optional"}.get(action.nargs, "positional")
    default = ""
    if action.option_strings and action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS):
        default = code(action.default)
    choices = " \\| ".join(code(c) for c in action.choices) if action.choices else ""
    required = "required" if action.required and action.option_strings else ""
    return name, kind, default, choices, cell(" ".join(p for p in (required, action.help or "") if p))


def cli_page() -> str:
    top = _project.cli_parser()
    sub = _subparsers(top)
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    out = [GENERATED.format(source="the real argparse parser of `python -m runner`"), "# Command reference\n\n",
           "Every command and flag, read from the parser that `python -m runner` uses. "
           "`python -m runner SPEC ...` is short for `python -m runner run SPEC ...`.\n\n",
           "```text\n" + (top.description or "").strip() + "\n```\n\n",
           table(("command", "what it does"), [(f"[`{n}`](#{n})", cell(helps.get(n, ""))) for n in sub.choices])]
    for name, parser in sub.choices.items():
        usage = " ".join(parser.format_usage().split())[len("usage: "):]
        out += [f"\n## {name}\n\n", f"{cell(helps.get(name, ''))}\n\n" if helps.get(name) else "",
                f"```text\n{textwrap.fill(usage, 110, subsequent_indent='    ')}\n```\n\n"]
        if parser.description and parser.description != top.description:
            out.append(" ".join(parser.description.split()) + "\n\n")
        for group in parser._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = group.title if group.title not in ("positional arguments", "options", "optional arguments") \
                else None
            if title:
                out.append(f"**{cell(title)}**\n\n")
            out.append(table(("argument", "takes", "default", "choices", "meaning"),
                             [_argument_row(a) for a in actions]) + "\n")
    return "".join(out)


# ---- exit codes and the cluster profile -------------------------------------------------------------------------

def exit_code_meanings() -> dict[int, tuple[str, str]]:
    """code -> (constant name, meaning from the module's docstring table; '' where the table lacks it)."""
    module = _project.exit_codes()
    meanings = {int(m.group(1)): m.group(2).strip()
                for m in re.finditer(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", module.__doc__ or "", re.M)}
    return {value: (name, meanings.get(value, "")) for name, value in vars(module).items()
            if name.startswith("EXIT_") and isinstance(value, int)}


def exit_codes_page() -> str:
    rows = [(f"`{code_}`", f"`{name}`", cell(meaning)) for code_, (name, meaning) in sorted(exit_code_meanings().items())]
    return (GENERATED.format(source="the exit-code module") + "# Exit codes\n\n"
            "Every command of `python -m runner` ends with one of these; scripts and schedulers can act on them.\n\n"
            + table(("code", "constant", "meaning"), rows))


def cluster_page() -> str:
    cls = _project.cluster_profile_class()
    doc = inspect.getmodule(cls).__doc__ or ""
    described = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*#?\s*(\w+) = .*?#\s*(.+)$", doc, re.M)}
    run = _subparsers(_project.cli_parser()).choices["run"]
    options = {o for action in run._actions for o in action.option_strings}
    rows = []
    for field in dataclasses.fields(cls):
        flag = f"--{field.name.replace('_', '-')}"
        if field.default is not dataclasses.MISSING:
            default = code(_toml(field.default)) if field.default not in (None, ()) else ""
        else:  # computed where the profile is read (e.g. the submitting interpreter): no fixed value to show
            default = "computed when submitting"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        rows.append((f"`{field.name}`", code(kind), default,
                     f"`{flag}`" if flag in options else "", cell(described.get(field.name, ""))))
    return (GENERATED.format(source="the cluster profile's dataclass and its module's example") +
            "# Cluster profile reference\n\n"
            "A lab's Slurm settings, one `[slurm]` table in a TOML file passed with `--cluster FILE`. Every key is "
            "optional; a command-line option of the same name overrides it (lists add to the profile's). None of "
            "it is part of a job's identity.\n\n"
            + table(("key", "type", "default", "option", "meaning"), rows))


# ---- the database ----------------------------------------------------------------------------------------------

def database_page() -> str:
    base = _project.db_metadata()
    classes = {mapper.local_table.name: mapper.class_ for mapper in base.registry.mappers}
    out = [GENERATED.format(source="the SQLAlchemy models of the results database"), "# Database tables\n\n",
           "The results database is the only record of a run: SQLite at `ROOT/results.db` by default, or any "
           "SQLAlchemy URL (`--db`), PostgreSQL on a cluster. The tables, from the models the runner creates them "
           "with:\n\n"]
    for tab in base.metadata.sorted_tables:
        cls = classes.get(tab.name)
        out.append(f"\n## {tab.name}\n\n")
        doc = inspect.getdoc(cls) if cls is not None and cls.__doc__ else ""
        if doc:
            out.append(" ".join(doc.split()) + "\n\n")
        comments = field_comments(cls) if cls is not None else {}
        rows = []
        for column in tab.columns:
            keys = ["primary key"] if column.primary_key else []
            keys += [f"→ `{fk.target_fullname}`" for fk in column.foreign_keys]
            keys += ["unique"] if column.unique else []
            keys += ["indexed"] if column.index else []
            nullable = "" if column.primary_key else ("yes" if column.nullable else "no")
            attribute = next((k for k, c in cls.__mapper__.columns.items() if c is column), column.name) if cls else ""
            rows.append((f"`{column.name}`", code(column.type), nullable, " ".join(keys),
                         cell(comments.get(attribute, ""))))
        out.append(table(("column", "type", "null", "keys", "meaning"), rows))
        uniques = [c for c in tab.constraints if c.__class__.__name__ == "UniqueConstraint" and len(c.columns) > 1]
        for unique in uniques:
            out.append(f"\nUnique together: {', '.join(code(c.name) for c in unique.columns)}.\n")
    return "".join(out)


# ---- model.json ------------------------------------------------------------------------------------------------

# The functions of the exporter whose dict literals become model.json (it writes their union).
META_FUNCTIONS = ("describe_job", "write_verified")


def _constants(tree: ast.Module, prefix: str = "") -> dict[str, str]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[prefix + target.id] = repr(node.value.value)
    return out


def model_json_keys() -> list[tuple[str, str, str]]:
    """(dotted key, the expression that computes it, the function) for every key the exporter writes."""
    path = _project.export_source()
    source = path.read_text()
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    constants = _constants(tree) | _constants(ast.parse(_project.artifact_source().read_text()), "artifact.")

    def returned_dict(function: ast.FunctionDef) -> ast.Dict | None:
        returns = [n.value for n in ast.walk(function) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)]
        return returns[-1] if returns else None

    rows: list[tuple[str, str, str]] = []

    def assigned(where: str) -> dict[str, ast.expr]:
        """Local names of a function bound once to an expression (`symmetry = symmetry_of(...)`)."""
        return {n.targets[0].id: n.value for n in ast.walk(functions[where])
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}

    def walk(node: ast.Dict, prefix: str, where: str) -> None:
        for key, value in zip(node.keys, node.values):
            if not isinstance(key, ast.Constant):
                continue
            dotted = f"{prefix}{key.value}"
            if isinstance(value, ast.Name) and isinstance(assigned(where).get(value.id), (ast.Call, ast.Dict)):
                value = assigned(where)[value.id]
            called = value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else None
            if isinstance(value, ast.Dict):
                walk(value, dotted + ".", where)
            elif called in functions and returned_dict(functions[called]) is not None:
                walk(returned_dict(functions[called]), dotted + ".", called)
            else:
                expression = ast.get_source_segment(source, value) or ""
                if expression in constants:
                    expression = f"{expression} = {constants[expression]}"
                rows.append((dotted, " ".join(expression.split()), where))

    for name in META_FUNCTIONS:
        found = returned_dict(functions[name])
        if found is None:
            raise ValueError(f"{path}: {name} no longer returns a dict literal; update docs/hooks/generated_pages.py")
        walk(found, "", name)
    return sorted(rows)


def artifact_reads() -> set[str]:
    """The model.json keys the loader reads: `meta["a"]["b"]` and `meta.get("a")` chains in artifact.py."""
    tree = ast.parse(_project.artifact_source().read_text())
    reads = set()
    for node in ast.walk(tree):
        chain, current = [], node
        while isinstance(current, ast.Subscript) and isinstance(current.slice, ast.Constant):
            chain.insert(0, str(current.slice.value))
            current = current.value
        if isinstance(current, ast.Call) and isinstance(current.func, ast.Attribute) and current.func.attr == "get" \
                and current.args and isinstance(current.args[0], ast.Constant):
            chain.insert(0, str(current.args[0].value))
            current = current.func.value
        named = (isinstance(current, ast.Name) and current.id == "meta") or \
            (isinstance(current, ast.Attribute) and current.attr == "meta")
        if chain and named:
            reads.add(".".join(chain))
    return {r for r in reads if not any(o != r and o.startswith(r + ".") for o in reads)}


def model_json_page() -> str:
    rows = model_json_keys()
    reads = artifact_reads()
    return (GENERATED.format(source="the exporter's source (the dicts it writes into model.json)") +
            "# model.json\n\n"
            "`python -m runner export` writes a folder with `model.pt2` (`torch.export`), `model.onnx` and "
            "`model.json`, which says everything needed to use the model without this code base. The loader "
            "(`load` in the Python API) refuses a folder whose `format_version` is not its own. Keys, "
            "and the expression in the exporter that computes each (read from its source at build time):\n\n"
            + table(("key", "computed as", "written by", "read by the loader"),
                    [(f"`{k}`", code(e), f"`{w}`", "yes" if any(k == r or k.startswith(r + ".") for r in reads)
                      else "") for k, e, w in rows]))


# ---- the Python API page ---------------------------------------------------------------------------------------

def api_page() -> str:
    out = [GENERATED.format(source="the docstrings, through mkdocstrings"), "# Python API\n\n",
           "The parts of the code base meant to be called from a notebook or another program. Rendered from their "
           "docstrings and signatures.\n\n"]
    for identifier, what in _project.API_OBJECTS:
        out += [f"## `{identifier}`\n\n{what}\n\n", f"::: {identifier}\n    options:\n      show_root_heading: false\n"
                "      heading_level: 3\n\n"]
    return "".join(out)


def statistics_page() -> str:
    doc = ast.get_docstring(ast.parse(_project.stats_source().read_text())) or ""
    summary, _, rest = doc.partition("\n\n")
    out = [GENERATED.format(source="the statistics module's docstring and functions"),
           "# Statistics of the final table\n\n",
           "When a spec has a `[final]` table, the report's headline table is the final evaluation: one row per "
           "model, from its best configuration trained again with the final seeds, compared with the plain model "
           "seed by seed. What is computed, and why:\n\n", f"**{summary.strip()}**\n\n", rest.strip(), "\n\n"]
    for identifier in _project.STATS_FUNCTIONS:
        out += [f"## `{identifier.rsplit('.', 1)[1]}`\n\n", f"::: {identifier}\n    options:\n"
                "      show_root_heading: false\n      heading_level: 3\n\n"]
    return "".join(out)


PAGES = {
    "reference/spec.md": spec_page,
    "reference/commands.md": cli_page,
    "reference/exit-codes.md": exit_codes_page,
    "reference/cluster-profile.md": cluster_page,
    "reference/database.md": database_page,
    "reference/model-json.md": model_json_page,
    "reference/statistics.md": statistics_page,
    "api.md": api_page,
}


def write_all(folder: Path) -> list[Path]:
    """Write every generated page under `folder` (for looking at them without a build)."""
    written = []
    for name, make in PAGES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        written.append(path)
    return written

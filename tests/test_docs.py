"""The documentation is tested like code: its examples must be accepted by the code they describe.

- Every ```toml block in docs/ and README.md goes through the spec validator (a cluster profile, a `[slurm]` table,
  through the profile reader). A block that is only part of a spec starts with a `# fragment` comment and is checked
  inside a minimal spec; a block that starts with `# file: NAME` is the spec a later command on the page runs.
- Every `python -m runner ...` line in a code block is parsed by the real argparse parser, routed as
  `python -m runner` routes it; a `run` of a spec that exists (in the repository or as a `# file:` block) also has
  its overrides validated.
- README's relative links point at files that exist, and its anchors at headings that exist.

Fast and torch-free: no site is built here (that is `nox -s docs`, with --strict), and a test checks that all of
this runs without importing torch. Project names are reached through docs/hooks/_project.py only.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKS = DOCS / "hooks"
if str(HOOKS) not in sys.path:
    sys.path.insert(0, str(HOOKS))

import _project  # noqa: E402
import generated_pages  # noqa: E402

FRAGMENT, FILE = "# fragment", "# file:"
MINIMAL_SPEC = {"experiment": {"name": "docs-fragment"}, "model": [{"family": "cnn"}]}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh", ""}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def first_comment(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")


def markdown_files() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if HOOKS not in p.parents) + [ROOT / "README.md"]


def fenced_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a markdown file, indented ones (inside lists) included."""
    text = path.read_text() if text is None else text
    blocks, lines, number = [], text.splitlines(), 0
    while number < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[number])
        if not opening:
            number += 1
            continue
        indent, fence, language = opening.groups()
        body, start = [], number + 1
        number += 1
        while number < len(lines) and not lines[number].strip().startswith(fence):
            body.append(lines[number][len(indent):] if lines[number].startswith(indent) else lines[number])
            number += 1
        blocks.append(Block(path, start, language.lower(), "\n".join(body) + "\n"))
        number += 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in markdown_files() for block in fenced_blocks(path)]


# ---- TOML blocks -----------------------------------------------------------------------------------------------

def _toml_value(value) -> str:
    """Inline TOML for the values tomllib produces (the minimal spec is written back as one `key = value` per table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def as_spec_text(block: Block, readme_lenient: bool) -> str:
    """The text the validator reads: the block itself, or a fragment placed inside the minimal spec."""
    tables = tomllib.loads(block.text)
    fragment = block.first_comment.startswith(FRAGMENT)
    # README.md is edited by others and has no markers yet; until its cut adds them, a README block without an
    # [experiment] is read as a fragment. Blocks in docs/ must say so.
    if readme_lenient and block.path.name == "README.md" and "experiment" not in tables:
        fragment = True
    if not fragment:
        return block.text
    merged = {**MINIMAL_SPEC, **tables}
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in merged.items())


def check_toml_block(block: Block, folder: Path, readme_lenient: bool = True) -> str | None:
    """None when the block is accepted; otherwise what the validator said."""
    try:
        tables = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        return f"not valid TOML: {exc}"
    path = folder / "block.toml"
    if "slurm" in tables:  # a cluster profile: no spec may have a [slurm] table, so this cannot hide a spec
        path.write_text(block.text)
        try:
            _project.read_profile()(path, {})
        except _project.cluster_error() as exc:
            return str(exc)
        return None
    path.write_text(as_spec_text(block, readme_lenient))
    try:
        _project.read_spec()(path)
    except _project.spec_error() as exc:
        return str(exc)
    return None


def toml_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.language == "toml"]


@pytest.mark.parametrize("block", toml_blocks(), ids=lambda b: b.where)
def test_every_toml_block_is_accepted_by_the_validator(block, tmp_path):
    problem = check_toml_block(block, tmp_path)
    assert problem is None, f"{block.where}: the validator refuses this block:\n{problem}"


# ---- command lines ---------------------------------------------------------------------------------------------

def runner_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line number, the arguments after `python -m runner`) for each such command in a shell block."""
    out, pending, first = [], "", 0
    for offset, raw in enumerate(block.text.splitlines()):
        if not pending:
            first = block.line + offset
        line = pending + raw.strip().removeprefix("$ ")
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if "python -m runner" not in line:
            continue
        tokens = shlex.split(line, comments=True)
        segment: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", "||", ";", "|"):
                for at in range(len(segment) - 2):
                    if segment[at].endswith("python") and segment[at + 1:at + 3] == ["-m", "runner"]:
                        out.append((first, segment[at + 3:]))
                        break
                segment = []
            else:
                segment.append(token)
    return out


def check_command(arguments: list[str], specs: dict[str, str] | None = None, folder: Path | None = None) -> str | None:
    """None when `python -m runner ARGUMENTS` parses (and a run's spec and overrides validate); else the problem."""
    top = _project.cli_parser()
    names = generated_pages.command_names(top)
    argv = list(arguments)
    if argv and argv[0] not in names and not argv[0].startswith("-"):
        argv.insert(0, "run")  # as `python -m runner SPEC` does
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args, extra = top.parse_known_args(argv)
    except SystemExit as exc:  # argparse exits on an error (2) and after --help (0); a doc line should do neither
        return stderr.getvalue().strip() or f"argparse exited with {exc.code}"
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command != "run"]
    if stray:
        return f"unrecognized arguments: {' '.join(stray)}"
    if args.command != "run":
        return None
    overrides = [*args.overrides, *extra]
    spec = ROOT / args.spec
    if not spec.is_file() and specs and args.spec in specs and folder is not None:
        spec = folder / Path(args.spec).name
        spec.write_text(specs[args.spec])
    if not spec.is_file():
        return None  # a spec the reader writes themselves: only the command line can be checked
    try:
        _project.read_spec()(spec, overrides)
    except _project.spec_error() as exc:
        return str(exc)
    return None


def named_specs(path: Path) -> dict[str, str]:
    """`# file: NAME` blocks of a page: the specs its commands run."""
    out = {}
    for block in fenced_blocks(path):
        if block.language == "toml" and block.first_comment.startswith(FILE):
            out[block.first_comment[len(FILE):].strip()] = block.text
    return out


def command_cases() -> list[tuple[str, list[str], Path]]:
    cases = []
    for path in markdown_files():
        for block in fenced_blocks(path):
            if block.language in SHELL_LANGUAGES:
                cases += [(f"{path.relative_to(ROOT)}:{line}", args, path) for line, args in runner_commands(block)]
    return cases


@pytest.mark.parametrize("where, arguments, page", [pytest.param(*case, id=case[0]) for case in command_cases()])
def test_every_runner_command_is_accepted_by_the_parser(where, arguments, page, tmp_path):
    problem = check_command(arguments, named_specs(page), tmp_path)
    assert problem is None, f"{where}: python -m runner {shlex.join(arguments)}\n{problem}"


def test_the_pages_have_commands_and_blocks_to_check():
    # An extraction bug that found nothing would make every test above pass vacuously.
    assert len(command_cases()) >= 40 and len(toml_blocks()) >= 10


# ---- the checks catch what they should -------------------------------------------------------------------------

def _block(text: str, name: str = "docs/page.md") -> Block:
    return Block(ROOT / name, 1, "toml", text)


@pytest.mark.parametrize("text, expected", [
    ('[experiment]\nname = "x"\n[train]\nlr = -1\n[[model]]\nfamily = "cnn"\n', "train.lr"),
    ('[experiment]\nname = "x"\n[[model]]\nfamly = "cnn"\n', "famly"),
    ('[experiment]\nname = "x"\n[[model]]\nfamily = "cnn"\ngroup = "D4"\n', "plain CNN"),
    ("[search]\ntrials = 4\n", "experiment.name"),  # a fragment in docs/ without its marker
    ("# fragment\n[search]\nsampler = \"annealing\"\n", "sampler"),
    ('[experiment\nname = "x"\n', "not valid TOML"),
    ('[slurm]\npartiton = "gpu"\n', "partiton"),
])
def test_a_bad_block_is_refused_with_the_validators_message(text, expected, tmp_path):
    problem = check_toml_block(_block(text), tmp_path)
    assert problem is not None and expected in problem


def test_a_marked_fragment_is_checked_inside_the_minimal_spec(tmp_path):
    assert check_toml_block(_block("# fragment\n[search]\ntrials = 4\n[search.space]\n"
                                   '"train.lr" = { log = [1e-4, 1e-2] }\n'), tmp_path) is None


@pytest.mark.parametrize("line, expected", [
    ("python -m runner specs/quickstart.toml --workrs 2", "--workrs"),
    ("python -m runner specs/quickstart.toml --device tpu", "invalid choice"),
    ("python -m runner report --experiment x train.epochs=3", "unrecognized"),
    ("python -m runner predict", "required"),
    ("python -m runner data mnist", "invalid choice"),
    ("python -m runner specs/quickstart.toml train.lr=-1", "train.lr"),
    ("python -m runner specs/quickstart.toml model.famly=cnn", "famly"),
    ("python -m runner status --help", "exited with 0"),
])
def test_a_bad_command_line_is_refused(line, expected):
    [(_, arguments)] = runner_commands(Block(ROOT / "docs/page.md", 1, "bash", line + "\n"))
    problem = check_command(arguments)
    assert problem is not None and expected in problem


def test_commands_are_found_after_uv_run_across_continuations_and_in_chains():
    text = "uv run python -m runner specs/d4_grid.toml \\\n  --workers 2  # two\nls && python -m runner status\n"
    found = runner_commands(Block(ROOT / "docs/page.md", 10, "bash", text))
    assert found == [(10, ["specs/d4_grid.toml", "--workers", "2"]), (12, ["status"])]


def test_a_command_runs_the_spec_its_page_defines(tmp_path):
    specs = {"mine.toml": '[experiment]\nname = "mine"\n[[model]]\nfamily = "cnn"\n'}
    assert check_command(["mine.toml", "train.epochs=3"], specs, tmp_path) is None
    assert "train.epochs" in check_command(["mine.toml", "train.epochs=0"], specs, tmp_path)


# ---- links, generated pages, the concepts page against the code ------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def relative_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code are not links
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: are absolute


def broken_links(path: Path, text: str) -> list[str]:
    anchors = {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", re.sub(r"```.*?```", "", text, flags=re.S),
                                             re.M)}
    broken = []
    for target in relative_links(text):
        file, _, anchor = target.partition("#")
        if file and not (path.parent / file).exists():
            broken.append(f"{target}: no such file")
        elif not file and anchor not in anchors:
            broken.append(f"{target}: no such heading")
    return broken


def test_readme_links_point_at_files_and_headings_that_exist():
    readme = ROOT / "README.md"
    assert broken_links(readme, readme.read_text()) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading():
    text = "# Title\n\n[a](missing.png) [b](#title) [c](#nowhere) [d](https://example.org/x) ![e](README.md)\n"
    assert broken_links(ROOT / "README.md", text) == ["missing.png: no such file", "#nowhere: no such heading"]


def test_generated_pages_are_not_in_the_source_tree():
    committed = [name for name in generated_pages.PAGES if (DOCS / name).exists()]
    assert committed == [], f"generated at build time, delete from docs/: {committed}"


def test_the_concepts_exit_codes_are_the_codes_the_code_defines():
    text = (DOCS / "concepts.md").read_text()
    section = text[text.index("## Exit codes"):]
    documented = [int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)]
    assert documented == sorted(generated_pages.exit_code_meanings())


def test_every_exit_code_has_a_meaning_in_its_module():
    assert all(meaning for _, meaning in generated_pages.exit_code_meanings().values())


def test_the_exporter_writes_every_model_json_key_the_loader_reads():
    written = {key for key, _, _ in generated_pages.model_json_keys()}
    reads = generated_pages.artifact_reads()
    assert {"format_version", "task", "input.size", "symmetry.exact_elements"} <= reads
    missing = [r for r in reads if not any(k == r or k.startswith(r + ".") for k in written)]
    assert missing == []


def test_the_command_reference_names_every_command_and_option():
    page = generated_pages.cli_page()
    top = _project.cli_parser()
    for name, sub in generated_pages._subparsers(top).choices.items():
        assert f"\n## {name}\n" in page
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # every command has -h; the reference leaves it out
            assert all(f"`{option}`" in page for option in action.option_strings), (name, action.option_strings)


def test_the_spec_reference_names_every_key_of_the_schema():
    page = generated_pages.spec_page()
    schema = _project.json_schema()["properties"]
    for section in ("experiment", "data", "train", "augment", "eval", "search", "final"):
        for key, value in schema[section]["properties"].items():
            if key != "space":
                assert f"`{section}.{key}`" in page
    assert all(f"`model.{key}`" in page for key, value in schema["model"]["items"]["properties"].items()
               if value.get("type") != "object")


def test_the_checks_run_without_torch():
    # The doc checks belong in the fast suite: importing torch (and escnn) would cost seconds per run.
    script = ("import sys; sys.path.insert(0, '.'); import tests.test_docs as t, tempfile, pathlib\n"
              "d = pathlib.Path(tempfile.mkdtemp())\n"
              "assert all(t.check_toml_block(b, d) is None for b in t.toml_blocks())\n"
              "assert all(t.check_command(a, t.named_specs(p), d) is None for _, a, p in t.command_cases())\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

"""Spec validation: every problem reported at once, with the key path and the allowed values."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runner.spec.json_schema import json_schema
from runner.spec import SpecError, parse_spec, read_spec
from runner.spec.fields import field_types

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"experiment": {"name": "t"}, "model": [{"family": "cnn"}]}


def problems_of(raw, overrides=()) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, "bad.toml", overrides=overrides)
    assert "bad.toml" in str(info.value)
    return dict(info.value.problems)


def test_shipped_specs_are_valid():
    for path in sorted((ROOT / "specs").glob("*.toml")):
        spec = read_spec(path)
        assert spec.blocks and spec.seeds


def test_minimal_spec_gets_defaults():
    spec = parse_spec(MINIMAL, "x.toml")
    assert spec.task == "classification" and spec.seeds == (0,)


def test_all_problems_reported_at_once():
    raw = {
        "experiment": {"name": "t", "task": "detection", "seeds": [0, 0]},
        "train": {"lr": -1, "epochs": "two", "optimiser": "adam"},
        "model": [{"family": "cnn", "group": "D4"}, {"family": "gcnn", "group": "Q7", "width": 0}],
    }
    problems = problems_of(raw)
    assert "allowed: classification, segmentation" in problems["experiment.task"]
    assert "repeat" in problems["experiment.seeds"]
    assert "> 0" in problems["train.lr"]
    assert "expected an integer" in problems["train.epochs"]
    assert "allowed in [train]" in problems["train.optimiser"] and "optimizer" in problems["train.optimiser"]
    assert "must be 'trivial'" in problems["model[0].group"]
    assert "valid forms" in problems["model[1].group"]
    assert ">= 1" in problems["model[1].width"]


def test_sweep_values_are_checked_one_by_one():
    raw = {**MINIMAL, "train": {"optimizer": ["adamw", "rmsprop"]}}
    assert "rmsprop" in problems_of(raw)["train.optimizer"]
    assert "adamw, adam, sgd" in problems_of(raw)["train.optimizer"]


def test_family_must_fit_task():
    raw = {"experiment": {"name": "t", "task": "segmentation"}, "model": [{"family": "gcnn", "group": "C4"}]}
    assert "unet, gunet" in problems_of(raw)["model[0].family"]


def test_pcam_needs_no_root_but_a_folder_does():
    raw = {**MINIMAL, "data": {"source": "pcam"}}  # the default folder of `python -m runner data pcam`
    assert parse_spec(raw, "x.toml").blocks[0].values["data.source"] == "pcam"
    raw = {"experiment": {"name": "t", "task": "segmentation"}, "model": [{"family": "unet"}],
           "data": {"source": "folder"}}
    assert "data.root" in problems_of(raw)["model[0].data.root"]


def test_overrides_apply_before_validation():
    spec = parse_spec(MINIMAL, "x.toml", overrides=["train.epochs=3", "model.width=[4, 8]", "data.source=synthetic"])
    values = spec.blocks[0].values
    assert values["train.epochs"] == 3 and values["model.width"] == [4, 8]
    assert "unknown key" in problems_of(MINIMAL, ["train.epoch=3"])["train.epoch"]
    assert "KEY=VALUE" in problems_of(MINIMAL, ["train.epochs"])["override 'train.epochs'"]


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        read_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiment\nname = 1")
    with pytest.raises(SpecError, match="not valid TOML"):
        read_spec(bad)


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


TEXT = '[experiment]\nname = "café"\n[[model]]\nfamily = "cnn"\n'


@pytest.mark.parametrize(("encoding", "problem"), [
    ("latin-1", "(file): is not UTF-8 text (byte 0xe9 at line 2, column 12, position 24); save it as UTF-8"),
    ("utf-16", "(file): is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8; save it as UTF-8"),
])
def test_a_spec_that_is_not_utf8_is_bad_input_naming_the_file(tmp_path, encoding, problem):
    spec = tmp_path / "x.toml"
    spec.write_bytes(TEXT.encode(encoding))
    done = run_cli(spec, "--root", tmp_path / "runs")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{spec}: 1 problem in the spec\n  {problem}" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


def test_utf8_with_a_byte_order_mark_and_windows_newlines_is_read_like_plain_utf8(tmp_path):
    spec = tmp_path / "x.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + TEXT.replace("\n", "\r\n").encode())
    read = read_spec(spec)
    assert read.name == "café" and read.text == TEXT


def test_nan_is_outside_every_bound():
    problems = problems_of({**MINIMAL, "train": {"lr": float("nan")}, "model": [{"family": "cnn",
                                                                                 "dropout": float("nan")}]})
    assert problems["train.lr"] == "got nan; allowed: > 0 and <= 10"
    assert problems["model[0].dropout"] == "got nan; allowed: numbers >= 0 and < 1"


def test_schema_states_the_model_rules():
    model = json_schema()["properties"]["model"]["items"]["properties"]
    assert model["dropout"]["anyOf"][0] == {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}
    assert model["kernel_size"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 15,
                                                "not": {"multipleOf": 2}}


def test_committed_json_schema_is_current():
    committed = json.loads((ROOT / "specs" / "spec.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), "run: python -m runner schema > specs/spec.schema.json"


scalars = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, width=32), st.text(max_size=5), st.booleans())


@given(section=st.sampled_from(["data", "train", "augment", "eval"]), key=st.text("abcdefgh_", min_size=1, max_size=8),
       value=scalars)
def test_random_malformed_keys_raise_spec_error_naming_the_key(section, key, value):
    assume(key not in field_types(section))
    with pytest.raises(SpecError, match="fuzz.toml") as info:
        parse_spec({**MINIMAL, section: {key: value}}, "fuzz.toml")
    assert dict(info.value.problems)[f"{section}.{key}"].startswith("unknown key; allowed in ")


@given(value=scalars)
def test_random_values_for_typed_fields_never_crash(value):
    for key in ("lr", "epochs", "optimizer", "amp"):
        raw = {**MINIMAL, "train": {key: value}}
        try:
            spec = parse_spec(raw, "fuzz.toml")
        except SpecError as exc:
            assert f"train.{key}" in dict(exc.problems)
        else:  # an accepted value is the one the job gets
            assert spec.blocks[0].values[f"train.{key}"] == value


def test_architecture_limits_are_checked_before_running():
    assert "got 4; allowed: odd integers >= 1 and <= 15" in problems_of(
        {**MINIMAL, "model": [{"family": "cnn", "kernel_size": [3, 4]}]})["model[0].kernel_size"]
    seg = {"experiment": {"name": "s", "task": "segmentation"}, "data": {"image_size": 96},
           "model": [{"family": "unet", "depth": 6}]}
    assert "divisible by 64" in problems_of(seg)["model[0].depth"]


def _search_problems(search: dict) -> dict[str, str]:
    """The problems of a spec whose [search] holds `search` (none when it is valid)."""
    raw = {**MINIMAL, "search": {"trials": 2, "space": {"train.lr": {"choice": [1e-3, 3e-3]}}, **search}}
    try:
        parse_spec(raw, "bad.toml")
    except SpecError as exc:
        return dict(exc.problems)
    return {}


def test_the_schema_and_the_validator_agree_on_every_plain_search_key():
    # Both read one table (SEARCH_SCALARS): walk what the schema says and check the validator says the same.
    properties = json_schema()["properties"]["search"]["properties"]
    for key, schema in properties.items():
        if "enum" in schema and key != "metric":
            assert all(f"search.{key}" not in _search_problems({key: v}) for v in schema["enum"]), key
            assert f"search.{key}" in _search_problems({key: "not-" + schema["enum"][0]}), key
        elif schema.get("type") == "integer":
            low = schema["minimum"]
            assert f"search.{key}" not in _search_problems({key: low}), key
            assert f"search.{key}" in _search_problems({key: low - 1}), key
            assert f"search.{key}" in _search_problems({key: 1.5}), key
    final = json_schema()["properties"]["final"]["properties"]["epochs"]["minimum"]
    raw = {**MINIMAL, "final": {"seeds": [0], "epochs": final - 1}}
    assert "final.epochs" in problems_of(raw)


STUDY_RAW = {"experiment": {"name": "t"}, "train": {"epochs": 3}, "final": {"seeds": [0, 1]},
             "search": {"trials": 2, "space": {"train.lr": {"log": [1e-4, 1e-2]}}}, "model": [{"family": "cnn"}]}


def test_a_study_compares_and_selects_on_the_headline_metric_unless_it_names_another():
    plain = parse_spec(STUDY_RAW, "x.toml")
    assert (plain.blocks[0].search.metric, plain.final.select) == ("valid_auc", "valid_auc")
    headline = parse_spec({**STUDY_RAW, "eval": {"metric": "balanced_accuracy"}}, "x.toml")
    assert (headline.blocks[0].search.metric, headline.final.select) == ("valid_balanced_accuracy",) * 2
    named = parse_spec({**STUDY_RAW, "eval": {"metric": "f1"}, "search": {**STUDY_RAW["search"], "metric": "valid_nll"}},
                       "x.toml")
    assert (named.blocks[0].search.metric, named.final.select) == ("valid_nll", "valid_nll")

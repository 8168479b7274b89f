"""Reports from the results database: loading, model selection, tables against stored references, rendering.

The markdown, CSV and LaTeX tables rendered from the fixed fixture database (`tests/report_fixtures.py`) are
compared with the files in `tests/reference/`. After an intended change to the tables, regenerate them with

    UPDATE_REFERENCE=1 uv run pytest tests/test_reports.py -q

and review the diff of tests/reference/ before committing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import reports
from reports.figures import MAX_LINES, pick_lines
from reports.load import connect
from reports.tables import comparison_table, group_sort_key, latex_escape, select_models
from runner.store import ArtifactModel, FinalMetricModel, JobModel, RotationMetricModel
from tests.report_fixtures import build_empty_db, build_fixture_db, create_db, job_config, job_rows, _insert

REFERENCE = Path(__file__).parent / "reference"
EXPERIMENTS = ("pcam-groups", "monuseg-unet")


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> Path:
    return build_fixture_db(tmp_path_factory.mktemp("db") / "results.db")


@pytest.fixture(scope="module")
def rendered(fixture_db, tmp_path_factory) -> tuple[Path, reports.Report]:
    out = tmp_path_factory.mktemp("report")
    return out, reports.render(fixture_db, out)


# ---- load ----------------------------------------------------------------------------------------------------

def test_load_gives_one_row_per_job_with_flat_config_and_final_metrics(fixture_db):
    jobs = reports.load(fixture_db, experiment="pcam-groups")
    assert len(jobs) == 34 and jobs["job_id"].is_unique
    assert {"model.width", "train.lr", "augment.geometric", "data.fraction", "test_auc", "params"} <= set(jobs)
    assert set(jobs["status"]) == {"done", "running", "failed", "queued"}
    assert jobs.loc[jobs["status"] == "running", "test_auc"].isna().all()
    assert jobs.loc[jobs["status"] == "done", "test_auc"].notna().sum() == 30
    # Replicates of one hyperparameter set share a config_key; different lr values do not.
    per_key = jobs[jobs["status"] == "done"].groupby("config_key")
    assert (per_key["seed"].nunique() == 3).sum() == 10
    assert (per_key["train.lr"].nunique() == 1).all()


def test_load_accepts_a_path_a_url_and_an_engine(fixture_db):
    by_path = reports.load(fixture_db)
    by_url = reports.load(f"sqlite:///{fixture_db}")
    by_engine = reports.load(connect(str(fixture_db)))
    pd.testing.assert_frame_equal(by_path, by_url)
    pd.testing.assert_frame_equal(by_path, by_engine)
    assert set(by_path["experiment"]) == set(EXPERIMENTS)


def test_the_database_is_opened_read_only(fixture_db):
    with pytest.raises(OperationalError, match="readonly"):
        with connect(fixture_db).begin() as connection:
            connection.execute(text("DELETE FROM jobs"))
    assert len(reports.load(fixture_db)) == 42


def test_long_loaders_return_curves_rotations_and_samples(fixture_db):
    epochs = reports.load_epochs(fixture_db, [1, 2], ["valid_auc"])
    assert set(epochs["name"]) == {"valid_auc"} and len(epochs) == 12
    rotations = reports.load_rotations(fixture_db, [1])
    assert set(rotations["name"]) == {"accuracy", "auc"} and rotations["angle"].max() == 345
    samples = reports.load_samples(fixture_db, [1, 31])  # job 31 is running: no artifact
    assert list(samples) == [1] and samples[1]["images"].dtype == np.uint8


def test_unknown_experiment_raises_with_the_known_names(fixture_db, tmp_path):
    with pytest.raises(reports.ReportError, match="unknown experiment 'nope'; known experiments: monuseg-unet, "
                                                  "pcam-groups"):
        reports.render(fixture_db, tmp_path, experiment="nope")


def test_missing_database_file_says_what_to_run(tmp_path):
    with pytest.raises(reports.ReportError, match="no results database at .*missing.db.*runner run"):
        reports.load(tmp_path / "missing.db")


# ---- model selection -----------------------------------------------------------------------------------------

def _jobs(rows: list[tuple[str, str, float, int, float, float]]) -> pd.DataFrame:
    """(family, group, lr, seed, valid_auc, test_auc) rows as load() would return them."""
    frame = pd.DataFrame(rows, columns=["family", "group", "train.lr", "seed", "valid_auc", "test_auc"])
    return frame.assign(job_id=range(1, len(frame) + 1), status="done", params=1000, **{
        "augment.geometric": "none", "config_key": [f"{f}-{g}-{lr}" for f, g, lr, *_ in rows]})


def test_selection_uses_validation_never_test():
    jobs = _jobs([("cnn", "trivial", 1e-3, 0, 0.90, 0.70), ("cnn", "trivial", 1e-3, 1, 0.88, 0.72),
                  ("cnn", "trivial", 1e-2, 0, 0.80, 0.95), ("cnn", "trivial", 1e-2, 1, 0.81, 0.96),
                  ("gcnn", "C8", 1e-3, 0, 0.93, 0.80), ("gcnn", "C8", 1e-3, 1, 0.95, 0.82)])
    selected = select_models(jobs, "classification")
    assert list(selected["name"]) == ["cnn", "gcnn C8"]
    assert selected["hyperparameters"].tolist() == ["lr=0.001", "lr=0.001"]
    assert selected["test_auc_mean"].tolist() == pytest.approx([0.71, 0.81])
    table = comparison_table(selected, "classification")
    assert table["delta_test_auc"].tolist() == pytest.approx([0.0, 0.10])


def test_delta_is_missing_without_a_plain_model():
    jobs = _jobs([("gcnn", "C4", 1e-3, 0, 0.9, 0.8), ("gcnn", "D4", 1e-3, 0, 0.91, 0.82)])
    table = comparison_table(select_models(jobs, "classification"), "classification")
    assert table["delta_test_auc"].isna().all()
    assert table["n_seeds"].tolist() == [1, 1] and table["test_auc_std"].isna().all()


def test_a_tie_goes_to_the_configuration_whose_first_job_came_first():
    """lr=0.01 (jobs 1, 2) and lr=0.001 (jobs 3, 4) tie at 0.8125; the old tie-break, the smallest config_key
    ('cnn-trivial-0.001'), took lr=0.001."""
    jobs = _jobs([("cnn", "trivial", 1e-2, 0, 0.75, 0.70), ("cnn", "trivial", 1e-2, 1, 0.875, 0.72),
                  ("cnn", "trivial", 1e-3, 0, 0.8125, 0.90), ("cnn", "trivial", 1e-3, 1, 0.8125, 0.92)])
    selected = select_models(jobs, "classification")
    assert selected["hyperparameters"].tolist() == ["lr=0.01"] and selected["job_ids"].tolist() == [(1, 2)]


def test_tied_plain_models_give_the_reference_whose_first_job_came_first():
    """Two plain rows tie on validation; the old reference was the first in display order (no augmentation)."""
    jobs = _jobs([("cnn", "trivial", 1e-2, 0, 0.75, 0.60), ("cnn", "trivial", 1e-2, 1, 0.875, 0.62),
                  ("cnn", "trivial", 1e-3, 0, 0.8125, 0.70), ("cnn", "trivial", 1e-3, 1, 0.8125, 0.70)])
    jobs.loc[jobs["train.lr"] == 1e-2, "augment.geometric"] = "d4"
    table = comparison_table(select_models(jobs, "classification"), "classification")
    assert table["name"].tolist() == ["cnn", "cnn +d4"]
    assert table["delta_test_auc"].tolist() == pytest.approx([0.09, 0.0])  # against cnn +d4 (jobs 1, 2)


@given(st.lists(st.floats(0.5, 1.0), min_size=8, max_size=8))
def test_selected_config_has_the_best_mean_validation(values):
    configs = [(f, g, lr) for f, g in (("cnn", "trivial"), ("gcnn", "C4")) for lr in (1e-3, 1e-2)]
    rows = [(f, g, lr, seed, values[2 * i + seed], 0.5) for i, (f, g, lr) in enumerate(configs) for seed in (0, 1)]
    jobs = _jobs(rows)
    selected = select_models(jobs, "classification")
    best = jobs.groupby(["family", "config_key"])["valid_auc"].mean().groupby("family").max()
    assert selected.set_index("family")["valid_auc_mean"].to_dict() == pytest.approx(best.to_dict())


def test_groups_sort_by_size_then_by_name():
    groups = ["O2", "C16", "D4", "trivial", "SO2", "C4", "flip", "D8", "C8", "C2"]
    assert sorted(groups, key=group_sort_key) == ["trivial", "flip", "C4", "D4", "C8", "D8", "SO2", "O2", "C16",
                                                  "C2"]


def test_pick_lines_caps_the_figure_and_keeps_the_best_plain_model():
    table = pd.DataFrame({"name": [f"m{i}" for i in range(20)], "family": ["cnn"] + ["gcnn"] * 19,
                          "valid_auc_mean": [0.1] + [0.5 + i / 100 for i in range(19)]})
    lines = pick_lines(table, "classification")
    assert len(lines) == MAX_LINES and "m0" in set(lines["name"]) and "m1" not in set(lines["name"])


def test_latex_escape_handles_specials_and_units():
    assert latex_escape("lr=1e-3 & 50% ± Δ_x") == r"lr=1e-3 \& 50\% $\pm$ $\Delta$\_x"


# ---- rendering -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("suffix", ["md", "csv", "tex"])
def test_tables_match_the_stored_reference(rendered, experiment, suffix):
    out, _ = rendered
    produced = (out / experiment / f"table.{suffix}").read_text()
    reference = REFERENCE / f"report_{experiment}.{suffix}"
    if os.environ.get("UPDATE_REFERENCE") == "1":
        reference.parent.mkdir(parents=True, exist_ok=True)
        reference.write_text(produced)
    assert produced == reference.read_text(), f"{reference} differs; see the module docstring to regenerate"


def test_render_writes_figures_and_one_self_contained_page(rendered):
    out, report = rendered
    expected = {"pcam-groups": {"learning_curves", "rotation", "params", "groups", "sensitivity", "samples"},
                "monuseg-unet": {"learning_curves", "rotation", "params", "groups", "data_efficiency", "samples"}}
    for experiment, names in expected.items():
        assert {p.stem for p in (out / experiment).glob("*.png")} == names
        assert {p.stem for p in (out / experiment).glob("*.pdf")} == names
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 12
    assert not re.search(r'(src|href)="(https?:|//)|<script|<link', page)
    assert "Δ AUC vs CNN" in page and "0.899 ± 0.014" in page
    assert all(path.is_file() for path in report.paths) and out / "report.html" in report.paths


def test_partial_database_says_what_is_missing(rendered):
    _, report = rendered
    summary = report.summary
    assert "Jobs: done 31, running 1, queued 1, failed 1." in summary
    assert "1 done job(s) have no final metrics (valid_auc missing), left out: job id(s) 34" in summary
    assert "Failed: job 32 (gcnn-SO2-s1): RuntimeError: out of memory" in summary
    assert "pcam-groups/data_efficiency: the experiment does not sweep data.fraction" in report.skipped
    assert "| gcnn    | C8      | none" in summary  # the markdown table itself


def test_empty_database_renders_a_page_that_says_so(tmp_path):
    report = reports.render(build_empty_db(tmp_path / "results.db"), tmp_path / "out")
    assert "holds no experiments yet" in report.summary
    assert "holds no experiments yet" in (tmp_path / "out" / "report.html").read_text()
    assert [p.name for p in report.paths] == ["report.html", "report.md"]


def test_experiment_without_finished_jobs_skips_every_figure(tmp_path):
    engine = create_db(tmp_path / "results.db")
    config = job_config("waiting", "classification", 0)
    _insert(engine, [("waiting", "classification")],
            iter([job_rows(1, 1, config, "running", 4), job_rows(2, 1, config, "queued", 4)]))
    report = reports.render(tmp_path / "results.db", tmp_path / "out", experiment="waiting")
    assert "No finished jobs with a validation metric yet" in report.summary
    assert len(report.skipped) == 7 and not list((tmp_path / "out").rglob("*.png"))
    assert (tmp_path / "out" / "waiting" / "table.csv").read_text().strip() == ""


def test_a_job_with_only_a_validation_metric_still_renders(tmp_path):
    engine = create_db(tmp_path / "results.db")
    rows = job_rows(1, 1, job_config("sparse", "classification", 0), "done", 3)
    rows[JobModel][0]["params"] = None
    rows[FinalMetricModel] = [r for r in rows[FinalMetricModel] if r["name"] == "valid_auc"]
    rows[RotationMetricModel], rows[ArtifactModel] = [], []
    _insert(engine, [("sparse", "classification")], iter([rows]))
    report = reports.render(tmp_path / "results.db", tmp_path / "out")
    assert "| cnn     | trivial | none      | –                 | –        | –" in report.summary
    skipped = {line.split(":")[0] for line in report.skipped}
    assert skipped == {"sparse/rotation", "sparse/params", "sparse/data_efficiency", "sparse/sensitivity",
                       "sparse/samples"}

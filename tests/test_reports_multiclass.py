"""The report of a 3-class experiment judged by eval.metric = "nll": per-class recall named by class, the Δ column
on NLL with lower better, the confusion-matrix figure, and the data and split facts from the jobs' confusion.json."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reports
from reports import final
from reports.tables import Scoring, comparison_table, scoring_of, select_models
from runner.store import ArtifactModel, EpochMetricModel, FinalMetricModel
from tests.report_fixtures import _insert, create_db, job_config, job_rows

CLASSES = ["stroma", "tumour", "lymphocytes"]
SPLIT_NOTE = "stratified by label, grouped by slide, seed 0"
EXPERIMENT = "kather-k3"


def _three_class_rows(job_id: int, config) -> dict:
    """A binary fixture job turned into a 3-class one: NLL curves, per-class recall, a confusion matrix."""
    rows = job_rows(job_id, 1, config, "done", config.train.epochs)
    rng = np.random.default_rng(job_id)
    rows[EpochMetricModel] += [dict(row, name="valid_nll") for row in rows[EpochMetricModel]
                               if row["name"] == "valid_loss"]
    finals = {row["name"]: row["value"] for row in rows[FinalMetricModel]}
    good = 0.05 if config.model.family == "gcnn" else 0.0
    recalls = np.clip(0.7 + good + rng.normal(0, 0.02, 3), 0, 1)
    extra = {"valid_nll": 0.6 - good - 0.1 * (config.train.lr == 1e-3) + rng.normal(0, 0.01),
             "test_balanced_accuracy": float(recalls.mean()),
             **{f"test_recall_{k}": float(r) for k, r in enumerate(recalls)}}
    finals.update(extra)
    rows[FinalMetricModel] = [{"job_id": job_id, "name": k, "value": float(v)} for k, v in finals.items()]
    matrix = [[int(100 * r) if i == j else int(50 * (1 - r)) for j in range(3)] for i, r in enumerate(recalls)]
    body = {"classes": CLASSES, "matrix": matrix, "split_note": SPLIT_NOTE, "data": "kather 3 classes, 600 patches"}
    rows[ArtifactModel].append({"job_id": job_id, "name": "confusion.json", "media_type": "application/json",
                                "data": json.dumps(body).encode()})
    return rows


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, reports.Report, Path]:
    tmp = tmp_path_factory.mktemp("k3")
    engine = create_db(tmp / "results.db")
    models = [("cnn", "trivial"), ("gcnn", "D4")]
    configs = [job_config(EXPERIMENT, "classification", seed, model={"family": f, "group": g},
                          train={"lr": lr, "epochs": 4}, eval={"metric": "nll"})
               for (f, g), lr, seed in itertools.product(models, (1e-3, 3e-3), (0, 1))]
    _insert(engine, [(EXPERIMENT, "classification")],
            (_three_class_rows(i + 1, c) for i, c in enumerate(configs)))
    engine.dispose()
    out = tmp / "report"
    return out, reports.render(tmp / "results.db", out), tmp / "results.db"


def test_the_table_names_each_class_recall_and_compares_on_nll(rendered):
    out, _, _ = rendered
    table = (out / EXPERIMENT / "table.md").read_text()
    assert all(f"Recall {name}" in table for name in CLASSES)
    assert "Test bal. acc." in table and "Δ NLL vs CNN" in table and "Δ AUC" not in table
    csv = pd.read_csv(out / EXPERIMENT / "table.csv")
    assert {"valid_nll_mean", "test_recall_2_mean", "delta_test_nll"} <= set(csv.columns)
    assert csv.loc[csv["name"] == "cnn", "delta_test_nll"].item() == pytest.approx(0.0)


def test_selection_takes_the_lowest_validation_nll(rendered):
    _, _, db = rendered
    jobs = reports.load(db, EXPERIMENT)
    scoring = scoring_of(jobs, "classification", tuple(CLASSES))
    assert (scoring.metric, scoring.direction, scoring.classes) == ("nll", "minimize", tuple(CLASSES))
    selected = select_models(jobs, "classification", scoring)
    means = jobs.groupby(["family", "train.lr"])["valid_nll"].mean()
    for _, row in selected.iterrows():
        assert row["valid_nll_mean"] == pytest.approx(means[row["family"]].min())
    assert selected["hyperparameters"].tolist() == ["lr=0.001", "lr=0.001"]  # lower NLL by construction


def test_the_confusion_figure_is_drawn_and_the_data_facts_are_said(rendered):
    out, report, _ = rendered
    assert (out / EXPERIMENT / "confusion.png").is_file() and (out / EXPERIMENT / "confusion.pdf").is_file()
    page = (out / "report.html").read_text()
    assert 'id="confusion"' in page and "rows the true class" in page
    assert f"split: {SPLIT_NOTE}" in report.summary
    assert "Classes (label order): stroma, tumour, lymphocytes" in report.summary
    assert "lower is better" in report.summary


def test_a_binary_database_without_confusion_artifacts_draws_no_confusion_figure(tmp_path):
    from tests.report_fixtures import build_fixture_db

    out = tmp_path / "report"
    report = reports.render(build_fixture_db(tmp_path / "results.db"), out, experiment="pcam-groups")
    assert not (out / "pcam-groups" / "confusion.png").exists()
    assert "Classes (label order)" not in report.summary and not any("confusion" in s for s in report.skipped)


def test_the_strongest_plain_row_under_nll_is_the_lowest():
    table = pd.DataFrame({"family": ["cnn", "cnn", "gcnn"], "test_nll_mean": [0.5, 0.4, 0.3]})
    assert final.strongest_index(table, Scoring("classification", "nll")) == 1
    assert final.strongest_index(table.rename(columns={"test_nll_mean": "test_auc_mean"}),
                                 Scoring("classification", "auc")) == 0


def test_without_eval_metric_the_scoring_is_todays():
    jobs = pd.DataFrame({"family": ["cnn"], "valid_auc": [0.9]})
    assert scoring_of(jobs, "classification") == Scoring("classification", "auc")
    assert scoring_of(jobs, "segmentation") == Scoring("segmentation", "dice")
    selected = pd.DataFrame()
    assert comparison_table(selected, "classification").empty


def test_sample_panels_name_the_true_and_the_predicted_class():
    from reports import figures

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    sample = {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([0, 1]), "probs": probs,
              "classes": np.array(CLASSES)}
    lines = pd.DataFrame({"name": ["cnn"], "job_ids": [(1,)]})
    figure = figures.sample_grid(lines, {1: sample}, "classification")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["y=stroma\nstroma 0.70", "y=tumour\nlymphocytes 0.60"]
    assert [ax.title.get_color() for ax in figure.axes] == ["green", "red"]


def test_the_reliability_diagram_says_what_it_bins():
    import pandas as pd

    from reports.study_figures import calibration

    bins = pd.DataFrame({"name": ["cnn", "cnn"], "ece": [0.05, 0.05], "p": [0.3, 0.8], "y": [0.25, 0.85]})
    assert calibration(bins).axes[0].get_xlabel() == "mean predicted P(tumour) in the bin"
    top = calibration(bins, top_label=True).axes[0]
    assert (top.get_xlabel(), top.get_ylabel()) == ("mean probability of the predicted class in the bin",
                                                    "observed accuracy")

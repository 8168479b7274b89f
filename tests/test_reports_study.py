"""Reports of a study: roles and trials per job, the final table and its sentences, search tables and figures.

The database is written through the runner's own `Database` (tests/study_fixtures.py) with hand-chosen metrics.
The final tables are compared with tests/reference/report_{study,fair}.{md,csv,tex}; after an intended change regenerate
them with

    UPDATE_REFERENCE=1 uv run pytest tests/test_reports_study.py -q

and review the diff before committing.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sqlalchemy import create_engine

import reports
from reports import answer, final, study, study_figures
from reports.figures import Skipped
from reports.load import load_rungs, load_trials
from runner.store import BaseModel, ExperimentModel, FinalMetricModel, JobModel
from tests.report_fixtures import build_fixture_db, job_config, job_rows, _insert
from tests.study_fixtures import (
    CNN_AUC,
    FAIR_BASE,
    FAIR_NAME,
    NAME,
    SPEC_TOML,
    TEST_AUC,
    build_fair_study_db,
    build_study_db,
    fair_auc,
    fair_ece,
)

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    return build_study_db(tmp_path_factory.mktemp("study") / "results.db")


@pytest.fixture(scope="module")
def rendered(study_db, tmp_path_factory) -> tuple[Path, reports.Report]:
    out = tmp_path_factory.mktemp("report")
    return out, reports.render(study_db, out)


@pytest.fixture(scope="module")
def table(study_db) -> pd.DataFrame:
    jobs = reports.load(study_db)
    return final.final_table(jobs, load_trials(study_db), "classification", ["train.lr", "model.dropout"])


# ---- load ----------------------------------------------------------------------------------------------------

def test_jobs_carry_their_role_trial_and_stream(study_db):
    jobs = reports.load(study_db).set_index("label")
    # The cnn's best search trial is also its final seed-0 job: one job, role final, its search trial kept.
    assert jobs.loc["cnn #0 s0", ["role", "trial", "stream"]].tolist() == ["final", 0.0, "model[0] cnn"]
    assert jobs.loc["gcnn D4 #2 s0", ["role", "trial"]].tolist() == ["final", 2.0]
    assert jobs.loc["gcnn D4 #0 s0", ["role", "trial"]].tolist() == ["search", 0.0]
    only_final = jobs.loc["gcnn C4 final s0"]
    assert only_final["role"] == "final" and math.isnan(only_final["trial"]) and only_final["stream"] is None
    assert (jobs["role"] == "final").sum() == 18 and jobs["trial"].notna().sum() == 9


def test_pruned_jobs_are_visible_with_their_reason_and_rung(study_db):
    jobs = reports.load(study_db)
    pruned = jobs[jobs["status"] == "pruned"]
    assert pruned["label"].tolist() == ["cnn #1 s0", "gcnn D4 #1 s0", "gcnn C4 #1 s0"]
    assert pruned["error"].str.startswith("pruned at rung 0 (epoch 1)").all()
    rungs = load_rungs(study_db, pruned["job_id"])
    assert rungs[["rung", "epoch", "cut", "competitors"]].drop_duplicates().values.tolist() == [[0, 1, 0.8, 3]]
    assert not rungs["promoted"].any() and rungs["promoted"].dtype == bool


def test_trials_list_every_link_with_its_params(study_db):
    trials = load_trials(study_db)
    search, finals = trials[trials["role"] == "search"], trials[trials["role"] == "final"]
    assert len(search) == 9 and len(finals) == 18 and finals["number"].eq(0).all()
    assert search.iloc[1]["params"] == {"train.lr": 0.1, "model.dropout": 0.2}
    assert load_trials(study_db, experiment=NAME).equals(trials)


def test_plain_grids_are_all_search_jobs_without_trials(tmp_path):
    jobs = reports.load(build_fixture_db(tmp_path / "grid.db"))
    assert (jobs["role"] == "search").all() and jobs["trial"].isna().all() and jobs["stream"].isna().all()


def test_a_database_without_study_tables_still_loads(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    BaseModel.metadata.create_all(engine, tables=[m.__table__ for m in (ExperimentModel, JobModel,
                                                                         FinalMetricModel)])
    rows = job_rows(1, 1, job_config("old", "classification", 0), "done", 2)
    _insert(engine, [("old", "classification")], iter([{JobModel: rows[JobModel],
                                                        FinalMetricModel: rows[FinalMetricModel]}]))
    jobs = reports.load(tmp_path / "old.db")
    assert jobs["role"].tolist() == ["search"] and load_trials(tmp_path / "old.db").empty
    assert load_rungs(tmp_path / "old.db", [1]).empty


# ---- the final table -----------------------------------------------------------------------------------------

def test_final_table_has_one_row_per_final_model_with_t_intervals(table):
    assert table["name"].tolist() == ["cnn", "gcnn C4", "gcnn D4"]
    assert table["n_seeds"].tolist() == [6, 5, 6]  # C4's seed 5 is still queued
    cnn = table.iloc[0]
    half = scipy_stats.t.ppf(0.975, 5) * np.std(CNN_AUC, ddof=1) / math.sqrt(6)
    assert cnn["test_auc_mean"] == pytest.approx(np.mean(CNN_AUC))
    assert (cnn["test_auc_ci_low"], cnn["test_auc_ci_high"]) == pytest.approx(
        (np.mean(CNN_AUC) - half, np.mean(CNN_AUC) + half))
    assert table["hyperparameters"].tolist() == ["lr=0.001, dropout=0.1", "lr=0.001, dropout=0.1",
                                                 "lr=0.003, dropout=0.05"]


def test_differences_are_paired_by_seed_against_the_plain_cnn(table):
    rows = table.set_index("name")
    assert set(table["baseline"]) == {"cnn"} and math.isnan(rows.at["cnn", "p_value"])
    d4 = np.subtract(TEST_AUC["gcnn D4"], CNN_AUC)
    assert rows.at["gcnn D4", "delta_test_auc"] == pytest.approx(d4.mean())
    assert rows.at["gcnn D4", "p_value"] == pytest.approx(scipy_stats.ttest_rel(TEST_AUC["gcnn D4"], CNN_AUC).pvalue)
    assert 0 < rows.at["gcnn D4", "delta_ci_low"] < rows.at["gcnn D4", "delta_ci_high"]
    c4 = TEST_AUC["gcnn C4"]
    assert rows.at["gcnn C4", "n_pairs"] == 5
    assert rows.at["gcnn C4", "p_value"] == pytest.approx(scipy_stats.ttest_rel(c4, CNN_AUC[:5]).pvalue)
    assert rows.at["gcnn C4", "delta_ci_low"] < 0 < rows.at["gcnn C4", "delta_ci_high"]


def test_differences_carry_holm_adjusted_p_values_over_the_models_against_the_baseline(table):
    rows = table.set_index("name")
    raw = [rows.at["gcnn C4", "p_value"], rows.at["gcnn D4", "p_value"]]
    low, high = sorted(raw)
    # Two comparisons with cnn: the smaller p doubles, the larger stays (but not below the doubled smaller one).
    expected = {raw.index(low): 2 * low, raw.index(high): max(high, 2 * low)}
    assert [rows.at["gcnn C4", "p_holm"], rows.at["gcnn D4", "p_holm"]] == pytest.approx(
        [min(1, expected[0]), min(1, expected[1])])
    assert math.isnan(rows.at["cnn", "p_holm"]) and set(table["holm_m"]) == {2}
    assert "p Holm (2 vs cnn)" in final.format_final(table, "classification").columns


def test_delta_interval_is_the_t_interval_of_the_paired_differences(table):
    d4 = np.subtract(TEST_AUC["gcnn D4"], CNN_AUC)
    expected = scipy_stats.ttest_rel(TEST_AUC["gcnn D4"], CNN_AUC).confidence_interval(0.95)
    rows = table.set_index("name")
    assert (rows.at["gcnn D4", "delta_ci_low"], rows.at["gcnn D4", "delta_ci_high"]) == pytest.approx(
        (expected.low, expected.high))
    assert rows.at["gcnn D4", "delta_test_auc"] == pytest.approx(d4.mean())


def test_findings_say_in_words_when_the_interval_includes_zero(table):
    rows = table.set_index("name")
    c4_words, d4_words = final.findings(table, "classification")
    low, high = rows.at["gcnn D4", "delta_ci_low"], rows.at["gcnn D4", "delta_ci_high"]
    assert d4_words.startswith(f"gcnn D4: +0.022 AUC vs cnn, 95 % CI [{low:+.3f}, {high:+.3f}], p < 0.001, "
                               "p_Holm < 0.001 over 6 paired seeds")
    assert c4_words.startswith("gcnn C4: +0.002 AUC vs cnn, 95 % CI [")
    assert "over 5 paired seeds, at 1.0x the training time of cnn, equal parameters; the interval includes zero: no " \
        "evidence of a difference at this sample size; from the seed-to-seed spread of the differences (sd 0.016) " \
        "about 508 paired seeds would detect a true difference of +0.002 at 80 % power." in c4_words


def test_a_difference_significant_alone_but_not_after_holm_is_called_weak():
    row = pd.Series({"name": "gcnn D4", "baseline": "cnn", "n_pairs": 3, "delta_test_auc": 0.035,
                     "delta_ci_low": 0.012, "delta_ci_high": 0.076, "p_value": 0.03, "p_holm": 0.09, "holm_m": 3,
                     "train_time_ratio": 4.1, "eval_time_ratio": 6.7, "params_ratio": 0.98,
                     "delta_std": 0.02, "seeds_for_power": 5.0})
    words = final.findings(pd.DataFrame([row, row.replace({"gcnn D4": "cnn"})]), "classification")
    assert words[0] == ("gcnn D4: +0.035 AUC vs cnn, 95 % CI [+0.012, +0.076], p = 0.03, p_Holm = 0.09 over 3 "
                        "paired seeds, at 4.1x the training time and 6.7x the evaluation time of cnn, equal "
                        "parameters; significant alone but not after Holm's correction over the 3 comparisons with "
                        "cnn: weak evidence; from the seed-to-seed spread of the differences (sd 0.020) about 5 "
                        "paired seeds would detect a true difference of +0.035 at 80 % power.")


def test_without_a_plain_model_the_findings_say_so(study_db):
    jobs, trials = reports.load(study_db), load_trials(study_db)
    cnn = jobs.loc[jobs["family"] == "cnn", "job_id"]
    no_plain = final.final_table(jobs[~jobs["job_id"].isin(cnn)], trials[~trials["job_id"].isin(cnn)],
                                 "classification", [])
    assert no_plain["name"].tolist() == ["gcnn C4", "gcnn D4"] and no_plain["delta_test_auc"].isna().all()
    assert final.findings(no_plain, "classification") == (
        "No plain model (family cnn or unet) among the final models: no differences to report.",)
    with pytest.raises(Skipped, match="no plain baseline"):
        study_figures.forest(no_plain, "classification")


@pytest.mark.parametrize("suffix", ["md", "csv", "tex"])
def test_final_table_matches_the_stored_reference(rendered, suffix):
    out, _ = rendered
    produced = (out / NAME / f"table.{suffix}").read_text()
    reference = REFERENCE / f"report_{NAME}.{suffix}"
    if os.environ.get("UPDATE_REFERENCE") == "1":
        reference.write_text(produced)
    assert produced == reference.read_text(), f"{reference} differs; see the module docstring to regenerate"


# ---- the search stage ----------------------------------------------------------------------------------------

def test_trial_results_average_each_jobs_best_epoch_and_mark_pruned(study_db):
    jobs, trials = reports.load(study_db), load_trials(study_db)
    epochs = reports.load_epochs(study_db, jobs["job_id"], ["valid_auc"])
    results = study.trial_results(trials, jobs, epochs, SPEC_TOML, "classification")
    cnn = results[results["stream"] == "model[0] cnn"]
    assert cnn["state"].tolist() == ["complete", "pruned", "complete"]
    assert cnn["value"].tolist() == pytest.approx([0.86, 0.60, 0.84])
    assert cnn["pruned_epoch"].isna().tolist() == [True, False, True] and cnn["pruned_epoch"].iloc[1] == 1
    assert study.searched_parameters(results) == ["model.dropout", "train.lr"]
    counts = study.pruned_counts(results).set_index("Model")
    assert counts.loc["gcnn D4", ["Trials", "Complete", "Pruned", "Pruned after", "Best complete"]].tolist() == [
        3, 2, 1, "epoch 1: 1", "0.900"]


def test_spec_text_gives_the_metric_and_the_log_axes():
    assert study.log_axes(SPEC_TOML) == {"train.lr"}
    override = SPEC_TOML + '\n[model.search]\nmetric = "valid_nll"\n[model.search.space]\n"train.weight_decay" = ' \
                           '{ log = [1e-5, 1e-2] }\n'
    assert study.stream_metric("model[2] gcnn C4", override, "classification") == "valid_nll"
    assert study.stream_metric("model[0] cnn", override, "classification") == "valid_auc"
    assert study.log_axes(override) == {"train.lr", "train.weight_decay"}
    assert study.stream_metric("model[0] cnn", "not = [toml", "segmentation") == "valid_dice"


def test_parameter_figure_uses_log_x_for_log_distributed_axes(study_db):
    jobs, trials = reports.load(study_db), load_trials(study_db)
    epochs = reports.load_epochs(study_db, jobs["job_id"], ["valid_auc"])
    results = study.trial_results(trials, jobs, epochs, SPEC_TOML, "classification")
    figure = study_figures.search_parameters(results, ["model.dropout", "train.lr"], {"train.lr"})
    assert [ax.get_xscale() for ax in figure.axes] == ["linear", "log"]
    history = study_figures.search_history(results)
    markers = {len(collection.get_offsets()) for collection in history.axes[0].collections}
    assert markers == {1, 2}  # per stream: two complete dots, one pruned cross


# ---- rendering -----------------------------------------------------------------------------------------------

def test_render_draws_the_study_figures_and_shows_the_findings(rendered):
    out, report = rendered
    assert {"forest", "search_history", "search_parameters"} <= {p.stem for p in (out / NAME).glob("*.png")}
    assert {"forest", "search_history", "search_parameters"} <= {p.stem for p in (out / NAME).glob("*.pdf")}
    page = (out / "report.html").read_text()
    assert "Final evaluation: each model&#x27;s best searched configuration" in page
    assert "no evidence of a difference at this sample size" in page and "Pruned after" in page
    assert not re.search(r'(src|href)="(https?:|//)|<script|<link', page)
    assert "Jobs: done 21, pruned 3, queued 1." in report.summary
    assert "Search: 3 of 9 trials pruned (cnn 1, gcnn D4 1, gcnn C4 1); see the search table." in report.summary
    assert "Final evaluation of gcnn C4: 5 of 6 seeds done; its statistics use those." in report.summary
    assert (out / NAME / "search.csv").read_text().startswith("Stream,Model,Metric,Trials,Complete,Pruned")


def test_segmentation_final_table_compares_dice_with_the_plain_unet():
    rows = [("unet", "trivial", seed, dice) for seed, dice in enumerate((0.70, 0.72, 0.71))]
    rows += [("gunet", "D4", seed, dice) for seed, dice in enumerate((0.74, 0.75, 0.76))]
    jobs = pd.DataFrame(rows, columns=["family", "group", "seed", "test_dice"]).assign(
        job_id=range(1, 7), status="done", params=500, role="final", **{"augment.geometric": "none"},
        config_key=["u"] * 3 + ["g"] * 3)
    trials = pd.DataFrame({"stream": ["final unet"] * 3 + ["final gunet D4"] * 3, "role": "final",
                           "job_id": range(1, 7)})
    table = final.final_table(jobs, trials, "segmentation", [])
    assert table["name"].tolist() == ["unet", "gunet D4"] and table["baseline"].tolist() == ["unet", "unet"]
    assert table.at[1, "delta_test_dice"] == pytest.approx(0.04)
    (words,) = final.findings(table, "segmentation")
    assert words.startswith("gunet D4: +0.040 Dice vs unet, 95 % CI [") and "over 3 paired seeds" in words
    assert "Δ Dice vs unet (95 % CI)" in final.format_final(table, "segmentation").columns


def test_a_study_before_its_final_stage_reports_the_search(tmp_path):
    db = build_study_db(tmp_path / "results.db", with_final=False)
    report = reports.render(db, tmp_path / "out")
    assert "Δ AUC vs CNN" in (tmp_path / "out" / NAME / "table.md").read_text()  # the validation-selection table
    assert (tmp_path / "out" / NAME / "search_history.png").is_file()
    assert f"{NAME}/forest: no final evaluation job is done yet" in report.skipped
    assert (reports.load(db)["role"] == "search").all()


def test_forest_plot_greys_out_intervals_that_include_zero(table):
    figure = study_figures.forest(table, "classification")
    ax = figure.axes[0]
    colors = [container.lines[0].get_color() for container in ax.containers]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == ["gcnn C4", "gcnn D4"]
    assert colors == ["0.35", "C2"]  # C4 crosses zero; D4 lies above it with p_Holm < 0.001
    assert any(line.get_xdata()[0] == 0 for line in ax.get_lines())  # the zero line


# ---- the fair comparison: TTA baselines, Holm, cost, calibration, the answer ---------------------------------

@pytest.fixture(scope="module")
def fair_db(tmp_path_factory) -> Path:
    return build_fair_study_db(tmp_path_factory.mktemp("fair") / "results.db")


@pytest.fixture(scope="module")
def fair(fair_db) -> pd.DataFrame:
    return final.final_table(reports.load(fair_db), load_trials(fair_db), "classification", [])


@pytest.fixture(scope="module")
def fair_rendered(fair_db, tmp_path_factory) -> tuple[Path, reports.Report]:
    out = tmp_path_factory.mktemp("fair-report")
    return out, reports.render(fair_db, out)


def test_every_model_with_tta_metrics_gets_a_tta_row_but_the_d4_model_does_not(fair):
    assert fair["name"].tolist() == ["cnn", "cnn +TTA", "cnn +d4", "cnn +d4 +TTA", "gcnn C4", "gcnn C4 +TTA",
                                     "gcnn D4"]
    rows = fair.set_index("name")
    assert rows.at["cnn +d4 +TTA", "test_auc_mean"] == pytest.approx(np.mean(fair_auc("cnn +d4", tta=True)))
    assert rows.at["cnn +d4 +TTA", "eval_images_per_s"] == pytest.approx(125.0)  # 8 predictions per patch
    assert rows.at["cnn +d4 +TTA", "train_seconds"] == rows.at["cnn +d4", "train_seconds"]  # the same jobs
    assert rows.at["cnn +d4 +TTA", "job_ids"] == rows.at["cnn +d4", "job_ids"]
    assert rows.at["cnn +d4 +TTA", "test_ece_mean"] == pytest.approx(fair_ece("cnn +d4") / 2)
    assert math.isnan(rows.at["cnn +d4 +TTA", "test_auc_patch_low"])  # no patch interval for the TTA average


def test_holm_family_is_every_row_against_the_plain_cnn_and_matches_scipy(fair):
    names = [n for n in fair["name"] if n != "cnn"]
    auc = {n: fair_auc(n.removesuffix(" +TTA"), tta=n.endswith("+TTA")) for n in names}
    raw = [scipy_stats.ttest_rel(auc[n], FAIR_BASE).pvalue for n in names]
    rows = fair.set_index("name")
    assert rows.loc[names, "p_value"].tolist() == pytest.approx(raw)
    assert rows.loc[names, "p_holm"].tolist() == pytest.approx(_holm_by_hand(raw))
    assert set(fair["holm_m"]) == {6}


def _holm_by_hand(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_equivariant_rows_are_also_compared_with_the_strongest_plain_row(fair):
    rows = fair.set_index("name")
    assert set(fair["strongest"]) == {"cnn +d4 +TTA"}
    strongest = fair_auc("cnn +d4", tta=True)
    d4 = scipy_stats.ttest_rel(fair_auc("gcnn D4"), strongest)
    assert rows.at["gcnn D4", "delta_vs_strongest"] == pytest.approx(np.mean(np.subtract(fair_auc("gcnn D4"),
                                                                                          strongest)))
    assert (rows.at["gcnn D4", "strongest_ci_low"], rows.at["gcnn D4", "strongest_ci_high"]) == pytest.approx(
        tuple(d4.confidence_interval(0.95)))
    raw = [scipy_stats.ttest_rel(fair_auc("gcnn C4"), strongest).pvalue,
           scipy_stats.ttest_rel(fair_auc("gcnn C4", tta=True), strongest).pvalue, d4.pvalue]
    assert rows.loc[["gcnn C4", "gcnn C4 +TTA", "gcnn D4"], "p_holm_vs_strongest"].tolist() == pytest.approx(
        _holm_by_hand(raw))
    assert rows.loc[["cnn", "cnn +d4", "cnn +d4 +TTA"], "p_holm_vs_strongest"].isna().all()  # not in that family


def test_cost_is_a_multiple_of_the_plain_cnns_and_said_in_the_sentence(fair):
    rows = fair.set_index("name")
    assert rows.at["gcnn D4", "train_time_ratio"] == pytest.approx(4.1)
    assert rows.at["gcnn D4", "eval_time_ratio"] == pytest.approx(1000 / 150)
    assert rows.at["gcnn D4", "params_ratio"] == pytest.approx(0.98)
    d4 = [w for w in final.findings(fair, "classification") if w.startswith("gcnn D4:")][0]
    assert "over 5 paired seeds, at 4.1x the training time and 6.7x the evaluation time of cnn, equal parameters." \
        in d4


def test_the_answer_names_the_best_model_its_interval_holm_the_tta_baseline_and_the_cost(fair):
    rows = fair.set_index("name")
    low, high = rows.at["gcnn D4", "delta_ci_low"], rows.at["gcnn D4", "delta_ci_high"]
    s_low, s_high = rows.at["gcnn D4", "strongest_ci_low"], rows.at["gcnn D4", "strongest_ci_high"]
    assert answer.answer(fair, "classification") == (
        f"Answer: gcnn D4 has the best mean test AUC, 0.841: +0.031 over cnn (95 % CI [{low:+.3f}, {high:+.3f}], "
        "p_Holm < 0.001 over the 6 comparisons with cnn, 5 paired seeds), which survives Holm's correction. "
        "Against the strongest plain competitor, cnn +d4 +TTA (0.826), it is +0.015 (95 % CI "
        f"[{s_low:+.3f}, {s_high:+.3f}], p_Holm < 0.001): it still wins. It costs 4.1x the training time and "
        "6.7x the evaluation time of cnn, equal parameters.")


def test_the_answer_says_when_the_evidence_is_weak(fair_db):
    jobs, trials = reports.load(fair_db), load_trials(fair_db)
    few = final.final_table(jobs[jobs["seed"] < 3], trials, "classification", [])
    words = answer.answer(few, "classification")
    assert words.endswith("The evidence is weak: only 3 seeds.")


def test_the_answer_says_when_a_plain_model_wins(fair_db):
    jobs, trials = reports.load(fair_db), load_trials(fair_db)
    without_d4 = final.final_table(jobs[jobs["group"] != "D4"], trials, "classification", [])
    words = answer.answer(without_d4, "classification")
    assert words.startswith("Answer: cnn +d4 +TTA has the best mean test AUC, 0.826: no equivariant model beats the "
                            "plain models here. The best one, gcnn C4 +TTA, is -0.008 against it (95 % CI [")
    assert words.endswith("at 3.0x the training time and 32.0x the evaluation time of cnn, equal parameters.")


def test_the_answer_without_a_tta_baseline_says_so(table):
    words = answer.answer(table, "classification")
    assert words.startswith("Answer: gcnn D4 has the best mean test AUC, 0.831: +0.022 over cnn")
    assert "No augmented or TTA plain model scores higher than cnn. No TTA baseline was recorded" in words


def test_reliability_pools_each_models_bins_over_its_seeds(fair_db, fair):
    bins = final.reliability(fair, reports.load(fair_db))
    assert bins["name"].unique().tolist() == ["cnn", "cnn +d4", "gcnn C4", "gcnn D4"]  # no TTA rows
    cnn = bins[bins["name"] == "cnn"]
    assert cnn[["bin", "n", "p", "y"]].to_numpy().ravel() == pytest.approx([1, 200, 0.15, 0.30, 8, 300, 0.85, 0.70])
    assert cnn["ece"].iloc[0] == pytest.approx(fair_ece("cnn")) == pytest.approx(0.15)
    figure = study_figures.calibration(bins)
    assert len(figure.axes[0].get_lines()) == 5  # the diagonal and one line per model
    assert "cnn (ECE 0.150)" in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]


def test_pareto_front_keeps_the_models_nothing_beats_on_both_cost_and_score():
    cost, score = np.array([10.0, 10.5, 30.0, 41.0, 12.0]), np.array([0.81, 0.826, 0.812, 0.841, 0.80])
    assert study_figures.pareto_front(cost, score, lower_is_cheaper=True).tolist() == [0, 1, 3]
    speed = np.array([1000.0, 125.0, 250.0, 150.0])
    assert study_figures.pareto_front(speed, np.array([0.82, 0.826, 0.81, 0.841]), False).tolist() == [0, 3]


def test_cost_and_forest_figures_show_the_plain_variants_and_the_strongest_line(fair):
    figure = study_figures.cost(fair, "classification")
    assert [ax.get_xscale() for ax in figure.axes] == ["log", "log"]
    assert len(figure.axes[0].containers) == 7  # one marker with its interval per row
    forest = study_figures.forest(fair, "classification").axes[0]
    assert any(line.get_linestyle() == "--" and line.get_xdata()[0] == pytest.approx(0.016)
               for line in forest.get_lines())
    assert [t.get_text() for t in forest.get_yticklabels()][-1] == "gcnn D4"
    colors = [container.lines[0].get_color() for container in forest.containers]
    assert colors == ["C2", "C2", "C2", "0.35", "0.35", "C2"]  # the C4 rows are not significant after Holm


def test_fair_report_opens_with_the_answer_and_draws_cost_and_calibration(fair_rendered):
    out, report = fair_rendered
    assert {"forest", "cost", "calibration"} <= {p.stem for p in (out / FAIR_NAME).glob("*.png")}
    page = (out / "report.html").read_text()
    section = page[page.index(f'<section id="{FAIR_NAME}">'):]
    assert section.index('<p class="answer">Answer: gcnn D4') < section.index('<p class="status">')
    assert report.summary.index("**Answer: gcnn D4") < report.summary.index("Jobs: done 20.")
    assert "No +TTA row for gcnn D4: its group contains all eight rot90/flips" in report.summary
    assert "95 % bootstrap interval over test patches [0.810, 0.850]" in report.summary


@pytest.mark.parametrize("suffix", ["md", "csv", "tex"])
def test_fair_table_matches_the_stored_reference(fair_rendered, suffix):
    out, _ = fair_rendered
    produced = (out / FAIR_NAME / f"table.{suffix}").read_text()
    reference = REFERENCE / f"report_{FAIR_NAME}.{suffix}"
    if os.environ.get("UPDATE_REFERENCE") == "1":
        reference.write_text(produced)
    assert produced == reference.read_text(), f"{reference} differs; see the module docstring to regenerate"


def test_the_answer_says_why_a_difference_has_no_p_value(table):
    """Paired seeds with one and the same difference have an interval of zero width and no t-test."""
    same = table.copy()
    best = same["name"] == "gcnn D4"
    same.loc[best, ["p_value", "p_holm"]] = np.nan
    same.loc[best, ["delta_ci_low", "delta_ci_high"]] = same.loc[best, "delta_test_auc"].iloc[0]
    words = answer.answer(same, "classification")
    assert "+0.022 over cnn" not in words
    assert "against cnn it is +0.022, the same difference on every paired seed: no spread to test." in words


def test_the_uncertainty_note_says_what_was_resampled():
    from reports.study_report import _uncertainty_note

    row = pd.Series({"name": "gcnn D4", "patch_ci_seed": 0, "test_auc_patch": 0.9, "test_auc_patch_low": 0.85,
                     "test_auc_patch_high": 0.94, "test_auc_patch_groups": float("nan")})
    assert "over test patches [0.850, 0.940]. Patches are resampled one by one" in _uncertainty_note(row)
    slides = _uncertainty_note(row.copy().set_axis(row.index).replace({float("nan"): 12.0}))
    assert "over the test set's 12 groups (slides or patients, resampled whole" in slides
    assert "too narrow" not in slides

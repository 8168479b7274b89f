"""The one best-configuration rule (runner.selection) and its three callers on one tied database.

The callers: a study's final stage (runner.search.final.select, through `plan`), the report's model selection
(reports.tables.select_models) and `export --best` (runner.inference.selection.best_job_id).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import reports
from runner.store import Database, NewTrial
from runner.spec.identity import job_key
from runner.inference.selection import best_job_id
from runner.search import plan
from reports.tables import select_models
from runner.selection import Result, best
from runner.spec import read_spec
from tests.study_fixtures import NAME, _config, _finals, _job, _run

# ---- the rule on hand-written results ------------------------------------------------------------------------


def test_the_best_mean_over_a_configurations_jobs_wins_in_either_direction():
    results = [Result("a", 1, 0.80), Result("a", 2, 0.90), Result("b", 3, 0.86), Result("c", 4, math.nan)]
    high = best(results, "maximize")
    assert (high.config, high.job_ids, high.candidates) == ("b", (3,), 2) and high.value == pytest.approx(0.86)
    low = best(results, "minimize")
    assert low.config == "a" and low.value == pytest.approx(0.85) and low.job_ids == (1, 2)


def test_a_tie_goes_to_the_configuration_with_the_earliest_job_whatever_its_name_or_order():
    # "z" sorts last and is listed last, but its first job (2) is earlier than all of "a"'s (3, 4).
    results = [Result("a", 4, 0.75), Result("a", 3, 0.875), Result("z", 5, 0.8125), Result("z", 2, 0.8125)]
    assert best(results, "maximize").config == "z"
    assert best(list(reversed(results)), "maximize").config == "z"
    assert best(results, "minimize").config == "z"


def test_a_tie_is_stable_when_rows_are_added():
    tied = [Result("a", 1, 0.5), Result("b", 2, 0.5)]
    assert best(tied + [Result("c", 3, 0.5)], "maximize").config == "a"  # a new tied configuration comes later
    assert best(tied + [Result("b", 4, 0.7)], "maximize").config == "b"  # a better seed breaks the tie for real


def test_means_equal_up_to_rounding_are_a_tie_but_a_real_difference_is_not():
    # 0.8 + 0.9 and 0.85 + 0.85 are 1.7000000000000002 and 1.7: the same mean, rounded differently.
    rounded = [Result("later", 3, 0.80), Result("later", 4, 0.90), Result("earlier", 1, 0.85),
               Result("earlier", 2, 0.85)]
    assert best(rounded, "maximize").config == "earlier"
    assert best(rounded, "minimize").config == "earlier"
    apart = [Result("later", 2, 0.85 + 1e-6), Result("earlier", 1, 0.85)]
    assert best(apart, "maximize").config == "later"


def test_nothing_finite_selects_nothing_and_a_bad_direction_is_refused():
    assert best([], "maximize") is None
    assert best([Result("a", 1, math.nan), Result("b", 2, math.inf)], "maximize") is None
    with pytest.raises(ValueError, match="allowed: maximize, minimize"):
        best([Result("a", 1, 0.5)], "max")


# ---- one tie, three callers, a real study database ---------------------------------------------------------

SPEC_TOML = f"""[experiment]
name = "{NAME}"
task = "classification"
seeds = [0, 1]

[train]
epochs = 2

[search]
sampler = "random"
trials = 2
metric = "valid_auc"

[search.space]
"train.lr" = {{ log = [1e-4, 1e-1] }}
"model.dropout" = {{ uniform = [0.0, 0.3] }}

[final]
seeds = [0, 1, 2]

[[model]]
family = "gcnn"
group = "D4"

[[model]]
family = "cnn"
"""
# Per stream, per trial: (lr, dropout, best valid_auc of seed 0 and seed 1). Every mean is exact in binary.
# The D4's first trial and both cnn trials tie at 0.8125; the D4's jobs come first (ids 1-2), then the cnn's
# first trial P (ids 5-6), then its second trial Q (ids 7-8).
TRIALS = {
    "gcnn D4": [(1e-3, 0.1, (0.75, 0.875)), (3e-3, 0.05, (0.625, 0.75))],
    "cnn": [(1e-3, 0.1, (0.75, 0.875)), (1e-4, 0.0, (0.8125, 0.8125))],
}


def build_tied_study(tmp_path: Path) -> tuple[Database, int, Path]:
    """The search stage of SPEC_TOML, finished, in a SQLite database; returns it, its experiment id and the spec."""
    spec_file = tmp_path / "tied.toml"
    spec_file.write_text(SPEC_TOML)
    db = Database(f"sqlite:///{tmp_path / 'tied.db'}")
    experiment_id, _ = db.sync_experiment(NAME, "classification", str(spec_file), SPEC_TOML, [])
    for index, model in enumerate(TRIALS):
        for number, (lr, dropout, values) in enumerate(TRIALS[model]):
            configs = [_config(model, seed, lr, dropout) for seed in (0, 1)]
            jobs = tuple(_job(c, f"{model} #{number} s{c.seed}") for c in configs)
            db.add_trial(experiment_id, NewTrial(f"model[{index}] {model}", "search", number,
                                                 {"train.lr": lr, "model.dropout": dropout}, {}, jobs))
            for config, value in zip(configs, values):
                _run(db, experiment_id, job_key(config), (value - 0.05, value), "done", _finals(0.8, value))
    return db, experiment_id, spec_file


def test_one_tie_is_broken_the_same_way_by_the_final_stage_the_report_and_export(tmp_path):
    """The cnn's configurations P (jobs 5, 6: valid 0.75, 0.875) and Q (jobs 7, 8: 0.8125, 0.8125) tie on the mean.

    Before the shared rule the final stage took P (earliest job) while the report took the smaller config hash,
    Q (asserted below, so the database really separates the two rules), and `export --best --family cnn`
    exported Q's first seed. Across models, the D4 (jobs 1, 2) and the cnn tie too: export took the first row in
    display order (cnn before gcnn); the rule takes the D4, whose jobs came first.
    """
    db, experiment_id, spec_file = build_tied_study(tmp_path)
    jobs = reports.load(db.url, experiment=NAME)
    by_id = jobs.set_index("job_id")
    p_key, q_key = by_id.at[5, "config_key"], by_id.at[7, "config_key"]
    assert q_key < p_key, "the old report's tie-break (smallest hash) must pick Q here"

    row = select_models(jobs, "classification").set_index("family").loc["cnn"]
    assert row["config_key"] == p_key and row["job_ids"] == (5, 6)
    assert best_job_id(jobs, "classification", family="cnn") == 6  # P's better seed
    assert best_job_id(jobs, "classification") == 2  # the D4's better seed: its jobs came first

    assert plan(db, read_spec(spec_file), experiment_id).added == 2
    trials = reports.load_trials(db.url, experiment=NAME)
    finals = {t.stream: t.params["selected_job"] for t in trials[trials["role"] == "final"].itertuples()}
    assert finals["final family=cnn group=trivial geometric=none"] == by_id.at[5, "key"]
    assert finals["final family=gcnn group=D4 geometric=none"] == by_id.at[1, "key"]

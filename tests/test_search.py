"""Search, pruning and the final stage as pure functions of (spec, history): hand-written histories."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.spec.identity import build_config, expand, job_key
from runner.search.final import final_jobs, select
from runner.search.history import JobHistory, TrialHistory
from runner.search.prune import asha_cut, decide
from runner.search.sampler import ask
from runner.search.streams import streams, trial_jobs
from runner.spec.search import Distribution, SearchSpec
from runner.spec import SpecError, parse_spec, read_spec

ROOT = Path(__file__).resolve().parents[1]
ASHA = SearchSpec(prune="asha", min_epochs=1, reduction_factor=2, metric="valid_auc",
                  space=(("train.lr", Distribution("log", 1e-4, 1e-2)),))
MEDIAN = SearchSpec(prune="median", min_epochs=1, startup_trials=2, metric="valid_auc", space=ASHA.space)


def job(job_id: int, status: str, values: dict[int, float], rungs: dict[int, float] | None = None,
        config: dict | None = None, decisions=()) -> JobHistory:
    return JobHistory(job_id, f"k{job_id}", status, config or {}, values, rungs or {}, tuple(decisions))


# Three jobs of one stream: A done, B pruned at rung 0, C done. ASHA with reduction factor 2, rungs at epochs 1, 2.
OTHERS = [job(1, "done", {1: 0.80, 2: 0.85, 3: 0.86}, {0: 0.80, 1: 0.85}),
          job(2, "pruned", {1: 0.60}, {0: 0.60}),
          job(3, "done", {1: 0.70, 2: 0.75, 3: 0.77}, {0: 0.70, 1: 0.75})]


def test_asha_prunes_below_the_cut_computed_by_hand():
    # rung 0: competitors 0.80, 0.60, 0.70 and the job's 0.65; keep the top 4 // 2 = 2, so the cut is 0.70
    decision = decide(ASHA, job(9, "running", {1: 0.65}), 1, OTHERS)
    assert decision.prune and decision.rungs == ((0, 1, 0.65, 0.70, 4, False),)
    assert "did not reach the cut 0.7 among 4 jobs" in decision.reason("valid_auc", 1)


def test_asha_promotes_then_prunes_at_the_next_rung():
    promoted = decide(ASHA, job(9, "running", {1: 0.75}), 1, OTHERS)
    assert not promoted.prune and promoted.rungs == ((0, 1, 0.75, 0.75, 4, True),)
    # rung 1: 0.85, 0.75 and the job's 0.80; keep max(1, 3 // 2) = 1: only the best goes on
    later = decide(ASHA, job(9, "running", {1: 0.75, 2: 0.80}, {0: 0.75}), 2, OTHERS)
    assert later.prune and later.rungs == ((1, 2, 0.80, 0.85, 3, False),)


def test_asha_between_rungs_and_stored_decisions():
    assert decide(ASHA, job(9, "running", {1: 0.9, 2: 0.9, 3: 0.5}, {0: 0.9, 1: 0.9}), 3, OTHERS).prune is False
    # a decision already in the database is returned as it was: a resumed job gets the same answer
    stored = job(9, "running", {1: 0.65}, {0: 0.65}, decisions=[(0, 1, False)])
    again = decide(ASHA, stored, 1, OTHERS)
    assert again.prune and again.rungs == ()
    assert decide(SearchSpec(space=ASHA.space), job(9, "running", {1: 0.1}), 1, OTHERS).prune is False


def test_asha_cut_direction():
    assert asha_cut([0.3, 0.1, 0.2, 0.4], 2, "maximize") == 0.3
    assert asha_cut([0.3, 0.1, 0.2, 0.4], 2, "minimize") == 0.2
    assert asha_cut([0.5], 3, "maximize") == 0.5  # the first job at a rung always goes on


def test_median_pruner_computed_by_hand():
    # done jobs at epoch 1: 0.80 and 0.70, median 0.75; the pruned job does not count
    low = decide(MEDIAN, job(9, "running", {1: 0.72}), 1, OTHERS)
    assert low.prune and low.rungs == ((1, 1, 0.72, 0.75, 3, False),)
    assert not decide(MEDIAN, job(9, "running", {1: 0.78}), 1, OTHERS).prune
    # before startup_trials jobs are done, nothing is pruned
    assert not decide(MEDIAN, job(9, "running", {1: 0.1}), 1, OTHERS[:1]).prune


def test_minimised_metric_prunes_the_high_values():
    nll = SearchSpec(prune="asha", min_epochs=1, reduction_factor=2, metric="valid_nll", space=ASHA.space)
    others = [job(1, "done", {1: 0.3, 2: 0.2}, {0: 0.3}), job(2, "done", {1: 0.5, 2: 0.4}, {0: 0.5})]
    assert decide(nll, job(9, "running", {1: 0.6}), 1, others).prune
    assert not decide(nll, job(9, "running", {1: 0.25}), 1, others).prune


def trial(number: int, params: dict, attrs: dict, value: float | None) -> TrialHistory:
    status = "running" if value is None else "done"
    return TrialHistory("s", "search", number, params, attrs,
                        (job(number, status, {} if value is None else {1: value}),))


def test_sampler_is_a_function_of_seed_stream_number_and_history():
    search = SearchSpec(sampler="tpe", startup_trials=2, space=(
        ("model.width", Distribution("int", 4, 32, step=4)), ("train.lr", Distribution("log", 1e-4, 1e-2))))
    first = ask(search, "model[0] cnn", 0, [])
    assert first == ask(search, "model[0] cnn", 0, [])
    assert first != ask(search, "model[0] cnn", 1, []) != ask(search, "model[1] cnn", 0, [])
    assert 1e-4 <= first[0]["train.lr"] <= 1e-2 and first[0]["model.width"] % 4 == 0
    history = [trial(i, ask(search, "s", i, [])[0], {}, 0.5 + 0.1 * i) for i in range(4)]
    assert ask(search, "s", 4, history) == ask(search, "s", 4, list(reversed(history)))  # rebuilt in number order


def test_grid_sampler_walks_every_point_once_through_rebuilt_history():
    search = SearchSpec(sampler="grid", trials=6, space=(
        ("train.lr", Distribution("choice", choices=(1e-3, 3e-3, 1e-2))), ("model.width", Distribution("int", 4, 8, 4))))
    history: list[TrialHistory] = []
    for number in range(6):
        params, attrs = ask(search, "s", number, history)
        assert "grid_id" in attrs  # the sampler's bookkeeping, stored and copied into the next rebuild
        history.append(trial(number, params, attrs, None))
    points = {(t.params["train.lr"], t.params["model.width"]) for t in history}
    assert len(points) == 6


def test_final_selection_by_mean_over_seeds_and_ties():
    x = {"seed": 0, "train": {"lr": 1.0}}
    y = {"seed": 0, "train": {"lr": 2.0}}
    jobs = [job(1, "done", {1: 0.80, 2: 0.81}, config=x), job(2, "done", {1: 0.90}, config={**x, "seed": 1}),
            job(3, "done", {1: 0.86}, config=y), job(4, "pruned", {1: 0.99}, config={"seed": 0, "train": {"lr": 3.0}})]
    best = select(jobs, "maximize")
    assert best.config == y and best.key == "k3" and best.candidates == 2 and best.value == pytest.approx(0.86)
    assert select(jobs, "minimize").config == x  # mean of the seeds' best values: (0.80 + 0.90) / 2
    tied = [job(5, "done", {1: 0.5}, config=y), job(6, "done", {1: 0.5}, config=x)]
    assert select(tied, "maximize").key == "k5"
    # (0.8 + 0.9) / 2 rounds above (0.85 + 0.85) / 2: the same mean, so still a tie, to the earliest job
    rounded = [job(8, "done", {1: 0.85}, config=y), job(9, "done", {1: 0.85}, config={**y, "seed": 1}),
               job(10, "done", {1: 0.80}, config=x), job(11, "done", {1: 0.90}, config={**x, "seed": 1})]
    assert select(rounded, "maximize").key == "k8" and select(rounded, "minimize").key == "k8"
    assert select([job(7, "pruned", {1: 0.9}, config=x)], "maximize") is None


def test_final_job_with_a_search_jobs_config_is_that_job():
    spec = read_spec(ROOT / "specs" / "search_demo.toml")
    stream = streams(spec)[0]
    key, _, config = trial_jobs(spec, stream, 0, {"train.lr": 0.001, "train.weight_decay": 1e-4,
                                                 "model.dropout": 0.1, "model.width": 8})[0]
    finals = final_jobs(spec, spec.final, config)
    assert [c["seed"] for _, _, c in finals] == list(spec.final.seeds)
    assert finals[0][0] == key  # seed 0, same epochs: the search job itself
    assert len({k for k, _, _ in finals}) == len(spec.final.seeds)
    longer = final_jobs(spec, type(spec.final)(seeds=(0,), epochs=9), config)
    assert longer[0][0] != key and longer[0][2]["train"]["epochs"] == 9


def test_sampled_values_keep_field_types_so_keys_are_stable():
    spec = read_spec(ROOT / "specs" / "search_demo.toml")
    stream = streams(spec)[0]
    as_int = trial_jobs(spec, stream, 0, {"train.lr": 1, "model.width": 8})[0]
    as_float = trial_jobs(spec, stream, 0, {"train.lr": 1.0, "model.width": 8})[0]
    assert as_int[0] == as_float[0] and as_int[2]["train"]["lr"] == 1.0


def test_specs_without_search_keep_their_job_keys():
    reference = json.loads((ROOT / "tests" / "reference" / "job_keys.json").read_text())
    for name, keys in reference.items():
        assert [j.key for j in expand(read_spec(ROOT / "specs" / name))] == keys, name


STUDY = {"experiment": {"name": "s"}, "train": {"epochs": 3},
         "search": {"trials": 4, "prune": "asha", "space": {"train.lr": {"log": [1e-4, 1e-2]}}},
         "final": {"seeds": [0, 1, 2]}, "model": [{"family": "cnn"}, {"family": "gcnn", "group": ["C4", "D4"]}]}


def test_study_spec_streams_per_block_and_grid_point():
    spec = parse_spec(STUDY, "s.toml")
    assert [s.key for s in streams(spec)] == ["model[0] cnn", "model[1] gcnn C4", "model[1] gcnn D4"]
    assert spec.searched and expand(spec) == []  # searched blocks have no grid jobs
    assert spec.final.select == "valid_auc" and spec.final.per[0] == "model.family"


def problems_of(raw) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, "bad.toml")
    assert "bad.toml" in str(info.value)
    return dict(info.value.problems)


def test_every_bad_search_input_is_reported_at_once():
    raw = {"experiment": {"name": "s"}, "train": {"epochs": 2},
           "search": {"sampler": "bayes", "trials": 0, "prune": "asha", "min_epochs": 3, "metric": "valid_dice",
                      "space": {"train.lr": {"logg": [1e-4, 1e-2]}, "train.weight_decay": {"log": [0, 1e-2]},
                                "model.dropout": {"uniform": [0.3, 0.1]}, "train.rate": {"choice": [1]},
                                "model.width": {"uniform": [4.0, 8.0]}, "model.group": {"choice": ["C4"]},
                                "model.depth": {"int": [1, 99]}}},
           "final": {"select": "valid_iou", "seeds": [1, 1], "per": ["family", "colour"]},
           "model": [{"family": "cnn"}]}
    p = problems_of(raw)
    assert "allowed: grid, random, tpe" in p["search.sampler"]
    assert ">= 1" in p["search.trials"]
    assert "valid_auc" in p["search.metric"] and "valid_dice" in p["search.metric"]
    assert "allowed distributions: log, uniform, int, choice" in p['search.space."train.lr"']
    assert "> 0" in p['search.space."train.weight_decay"']
    assert "low must be below high" in p['search.space."model.dropout"']
    assert "not a spec key" in p['search.space."train.rate"']
    assert "use { int = [low, high] }" in p['search.space."model.width"']
    assert "cannot be searched" in p['search.space."model.group"']
    assert "<= 8" in p['search.space."model.depth"']
    assert "valid_iou" in p["final.select"]
    assert "distinct" in p["final.seeds"] and "colour" in p["final.per"]


def test_min_epochs_conflicts_and_final_without_choice():
    raw = {"experiment": {"name": "s"}, "train": {"epochs": 2},
           "search": {"prune": "median", "min_epochs": 2, "space": {"train.lr": {"log": [1e-4, 1e-2]}}},
           "model": [{"family": "cnn", "train": {"lr": [1e-3, 2e-3]}}]}
    p = problems_of(raw)
    assert "below train.epochs (2" in p["search.min_epochs"]
    assert "either a grid axis or searched" in p['search.space."train.lr"']
    plain = {"experiment": {"name": "s"}, "final": {"seeds": [0, 1]}, "model": [{"family": "cnn"}]}
    assert "nothing to select from" in problems_of(plain)["final"]
    grid = {"experiment": {"name": "s"}, "final": {"seeds": [0, 1]}, "train": {"lr": [1e-3, 2e-3]},
            "model": [{"family": "cnn"}]}
    assert parse_spec(grid, "g.toml").final.seeds == (0, 1)
    grid_sampler = {"experiment": {"name": "s"}, "search": {"sampler": "grid", "trials": 5, "space": {
        "train.lr": {"choice": [1e-3, 2e-3]}, "model.dropout": {"uniform": [0.0, 0.2]}}}, "model": [{"family": "cnn"}]}
    p = problems_of(grid_sampler)
    assert "continuous" in p["search.sampler"]


def test_block_search_overrides_and_exit_code(tmp_path, capsys):
    from runner import cli

    raw = dict(STUDY, model=[{"family": "cnn", "search": {"trials": 2, "space": {"model.width": {"int": [4, 8]}}}},
                             {"family": "gcnn", "group": "C4"}])
    spec = parse_spec(raw, "s.toml")
    assert spec.blocks[0].search.trials == 2 and [k for k, _ in spec.blocks[0].search.space] == [
        "model.width", "train.lr"]
    assert spec.blocks[1].search.trials == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nname = "b"\n[search]\ntrials = -1\n[search.space]\n"train.lr" = { log = [1, 0.1] }'
                   '\n[[model]]\nfamily = "cnn"\n')
    assert cli.main([str(bad), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "search.trials" in err and 'search.space."train.lr"' in err
    assert not (tmp_path / "runs").exists()



def test_study_data_sources_are_checked_before_anything_is_written(tmp_path, capsys):
    from runner import cli

    spec = tmp_path / "pcam.toml"
    spec.write_text(f'[experiment]\nname = "p"\n[data]\nsource = "pcam"\nroot = "{tmp_path / "absent"}"\n'
                    '[search]\n[search.space]\n"train.lr" = { log = [1e-4, 1e-2] }\n[[model]]\nfamily = "cnn"\n')
    assert cli.main([str(spec), "--root", str(tmp_path / "runs")]) == 2
    assert "absent" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_an_edited_space_keeps_earlier_trials_for_the_axes_that_remain():
    search = SearchSpec(sampler="tpe", startup_trials=1, space=(
        ("model.width", Distribution("int", 4, 16, step=4)), ("train.lr", Distribution("log", 1e-4, 1e-2))))
    # written under an earlier space: lr out of today's range, an axis that is gone, a width off today's steps
    old = [trial(0, {"train.lr": 0.5, "model.depth": 3, "model.width": 8}, {}, 0.8),
           trial(1, {"train.lr": 1e-3, "model.width": 6}, {}, 0.7)]
    params, _ = ask(search, "s", 2, old)
    assert set(params) == {"model.width", "train.lr"} and 1e-4 <= params["train.lr"] <= 1e-2
    assert params["model.width"] in (4, 8, 12, 16)
    assert [Distribution("int", 4, 16, step=4).contains(v) for v in (8, 6, 8.0, 20)] == [True, False, False, False]
    assert Distribution("uniform", 0.0, 0.3, step=0.1).contains(0.2) and not Distribution("choice", choices=(1, 2)).contains(3)


def test_errors_print_spec_table_names_and_a_bad_search_is_reported_once(tmp_path, capsys):
    from runner import cli

    plain = tmp_path / "plain.toml"
    plain.write_text('[experiment]\nname = "p"\n[final]\nseeds = [0, 1]\n[[model]]\nfamily = "cnn"\n')
    assert cli.main([str(plain), "--root", str(tmp_path / "runs")]) == 2
    assert "add a [search] or sweep a key" in capsys.readouterr().err  # not swallowed as a style tag
    raw = {**STUDY, "search": {**STUDY["search"], "trials": "x"}}
    assert list(problems_of(raw)) == ["search.trials"]  # no second, misleading "nothing to select from"

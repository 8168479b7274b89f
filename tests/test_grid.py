"""Grid expansion and job identity."""
from __future__ import annotations

import pytest

from runner.spec.identity import config_from_dict, expand, job_key
from runner.spec import parse_spec

BASE = {
    "experiment": {"name": "g", "seeds": [0, 1]},
    "train": {"lr": [0.001, 0.003], "epochs": 1},
    "model": [
        {"family": "cnn", "width": [4, 8]},
        {"family": "gcnn", "group": ["C4", "D4"], "augment": {"geometric": "d4"}},
    ],
}


def jobs_of(raw, overrides=()):
    return expand(parse_spec(raw, "g.toml", overrides=overrides))


def test_block_lists_sweep_only_their_block():
    jobs = jobs_of(BASE)
    cnn = [j for j in jobs if j.config.model.family == "cnn"]
    gcnn = [j for j in jobs if j.config.model.family == "gcnn"]
    assert len(cnn) == 2 * 2 * 2 and len(gcnn) == 2 * 2 * 2  # width|group x lr x seed
    assert {j.config.model.width for j in gcnn} == {16}
    assert {j.config.augment.geometric for j in cnn} == {"none"}
    assert {j.config.augment.geometric for j in gcnn} == {"d4"}
    assert len({j.key for j in jobs}) == len(jobs)


def test_keys_are_stable_and_ignore_non_semantic_fields():
    first = [j.key for j in jobs_of(BASE)]
    assert first == [j.key for j in jobs_of(BASE)]
    moved = jobs_of(BASE, ["data.root=/elsewhere", "train.checkpoint_minutes=1", "data.in_memory=false"])
    assert [j.key for j in moved] == first
    renamed = jobs_of({**BASE, "experiment": {"name": "other", "seeds": [0, 1]}})
    assert [j.key for j in renamed] == first  # identity is the config, the experiment scopes it


def test_semantic_changes_change_keys():
    first = {j.key for j in jobs_of(BASE)}
    assert first.isdisjoint({j.key for j in jobs_of(BASE, ["train.epochs=2"])})
    assert first.isdisjoint({j.key for j in jobs_of(BASE, ["data.fraction=0.5"])})


def test_int_and_float_spellings_hash_alike():
    a = jobs_of(BASE, ["train.weight_decay=0"])
    b = jobs_of(BASE, ["train.weight_decay=0.0"])
    assert [j.key for j in a] == [j.key for j in b]


def test_adding_a_grid_value_keeps_the_old_jobs():
    old = {j.key for j in jobs_of(BASE)}
    new = {j.key for j in jobs_of(BASE, ["train.lr=[0.001, 0.003, 0.01]"])}
    assert old < new and len(new - old) == 8


def test_grid_section_sweeps_like_inline_lists():
    inline = jobs_of({"experiment": {"name": "g"}, "train": {"lr": [0.1, 0.2]}, "model": [{"family": "cnn"}]})
    section = jobs_of({"experiment": {"name": "g"}, "grid": {"train.lr": [0.1, 0.2]}, "model": [{"family": "cnn"}]})
    assert [j.key for j in inline] == [j.key for j in section]


def test_config_round_trips_through_json():
    for job in jobs_of(BASE):
        again = config_from_dict(job.config.to_dict())
        assert again == job.config and job_key(again) == job.key


def test_pool_is_a_model_option_that_keeps_existing_keys():
    from runner.spec.identity import canonical
    from runner.spec import SpecError
    from runner.training.loop import build

    blur, average = (expand(parse_spec({"experiment": {"name": "p"}, "model": [{"family": "gcnn", "group": "C4",
                                                                              "pool": pool, "width": 4}]}, "p.toml"))[0]
                     for pool in ("blur", "average"))
    assert "pool" not in canonical(blur.config)["model"]  # the default leaves the key as it was before the option
    assert canonical(average.config)["model"]["pool"] == "average" and average.key != blur.key
    kinds = {name: {type(m).__name__ for m in build(job.config).modules()} for name, job in
             (("blur", blur), ("average", average))}
    assert "GridAvgPool2d" in kinds["average"] and "GridAvgPool2d" not in kinds["blur"]
    with pytest.raises(SpecError) as info:
        parse_spec({"experiment": {"name": "p"}, "model": [{"family": "cnn", "pool": "max"}]}, "p.toml")
    assert "allowed: blur, average" in str(info.value)
    with pytest.raises(SpecError) as info:
        parse_spec({"experiment": {"name": "s", "task": "segmentation"},
                    "model": [{"family": "unet", "pool": "average"}]}, "s.toml")
    assert "applies to the classifiers" in str(info.value)

"""A small, fixed study database written through the runner's own `Database` (trials, rungs, pruned and final jobs).

Three models are searched (cnn, gcnn D4, gcnn C4: three trials each, one pruned at its first rung) and then
evaluated with six final seeds. Test AUCs are hand-chosen so the statistics are known:
- gcnn D4 beats cnn on every seed (differences 0.015-0.030): its interval excludes zero;
- gcnn C4 differs from cnn by +0.015, -0.020, +0.010, -0.010, +0.015 (seed 5 still queued): its interval
  includes zero.
The cnn's and the D4's best search trial is re-run as the final seed-0 job (same key: a final job that is also a
search job); the C4's final stage trains 3 epochs instead of 2, so all its final jobs are final only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.spec.config import JobConfig
from runner.store import Database, NewTrial
from runner.spec.identity import job_key
from tests.report_fixtures import job_config

NAME = "study"
FINAL_SEEDS = (0, 1, 2, 3, 4, 5)
SPEC_TOML = """[experiment]
name = "study"
task = "classification"
seeds = [0]

[train]
epochs = 2

[search]
sampler = "random"
trials = 3
prune = "asha"
metric = "valid_auc"

[search.space]
"train.lr" = { log = [1e-4, 1e-1] }
"model.dropout" = { uniform = [0.0, 0.3] }

[final]
seeds = [0, 1, 2, 3, 4, 5]

[[model]]
family = "cnn"

[[model]]
family = "gcnn"
group = "D4"

[[model]]
family = "gcnn"
group = "C4"
"""
MODELS = {"cnn": ("cnn", "trivial"), "gcnn D4": ("gcnn", "D4"), "gcnn C4": ("gcnn", "C4")}
# Per search trial: (lr, dropout, valid_auc by epoch, status); the pruned trial stops after epoch 1.
TRIALS = {
    "cnn": [(1e-3, 0.1, (0.80, 0.86), "done"), (1e-1, 0.2, (0.60,), "pruned"), (1e-4, 0.0, (0.78, 0.84), "done")],
    "gcnn D4": [(1e-3, 0.1, (0.82, 0.88), "done"), (3e-2, 0.3, (0.55,), "pruned"), (3e-3, 0.05, (0.85, 0.90), "done")],
    "gcnn C4": [(1e-3, 0.1, (0.81, 0.87), "done"), (1e-2, 0.25, (0.58,), "pruned"), (2e-4, 0.15, (0.79, 0.83), "done")],
}
BEST_TRIAL = {"cnn": 0, "gcnn D4": 2, "gcnn C4": 0}
CNN_AUC = (0.80, 0.82, 0.79, 0.81, 0.83, 0.80)
TEST_AUC = {
    "cnn": CNN_AUC,
    "gcnn D4": tuple(round(c + d, 6) for c, d in zip(CNN_AUC, (0.020, 0.030, 0.025, 0.015, 0.020, 0.025))),
    "gcnn C4": tuple(round(c + d, 6) for c, d in zip(CNN_AUC, (0.015, -0.020, 0.010, -0.010, 0.015))),
}
WORKER = "fixture:1"


def _config(model: str, seed: int, lr: float, dropout: float, epochs: int = 2) -> JobConfig:
    family, group = MODELS[model]
    return job_config(NAME, "classification", seed, model={"family": family, "group": group, "dropout": dropout},
                      train={"lr": lr, "epochs": epochs})


def _job(config: JobConfig, label: str) -> tuple[str, str, dict[str, Any]]:
    return job_key(config), label, config.to_dict()


def _finals(auc: float, valid: float) -> dict[str, float]:
    return {"test_auc": auc, "test_accuracy": auc - 0.1, "test_nll": 1.2 - auc, "test_f1": auc - 0.05,
            "valid_auc": valid, "train_seconds": 10.0}


def _run(db: Database, experiment_id: int, key: str, curve: tuple[float, ...], status: str,
         final: dict[str, float] | None) -> None:
    """Take the job through the real worker calls: claim, per-epoch metrics, then done or a pruning decision."""
    job = db.claim(experiment_id, [key], WORKER)
    db.record_epochs(job.job_id, WORKER, [(epoch, {"valid_auc": value}) for epoch, value in enumerate(curve)])
    if status == "pruned":
        db.record_rungs(job.job_id, WORKER, "valid_auc", [(0, 1, curve[0], 0.80, 3, False)])
        db.mark(job.job_id, "pruned", WORKER, error=f"pruned at rung 0 (epoch 1): valid_auc {curve[0]} did not reach the "
                                            "cut 0.8 among 3 jobs")
        return
    db.record_rungs(job.job_id, WORKER, "valid_auc", [(0, 1, curve[0], 0.80, 3, True)])
    db.finish(job.job_id, WORKER, final, rotation=[], artifacts={}, params=1000)


def build_study_db(path: Path, with_final: bool = True) -> Path:
    """The study database at `path` (SQLite), without its final stage if not `with_final`; returns `path`."""
    db = Database(f"sqlite:///{path}")
    experiment_id, _ = db.sync_experiment(NAME, "classification", "specs/study.toml", SPEC_TOML, [])
    for index, model in enumerate(MODELS):
        stream = f"model[{index}] {model}"
        for number, (lr, dropout, curve, status) in enumerate(TRIALS[model]):
            config = _config(model, 0, lr, dropout)
            db.add_trial(experiment_id, NewTrial(stream, "search", number, {"train.lr": lr, "model.dropout": dropout},
                                                 {}, (_job(config, f"{model} #{number} s0"),)))
            final = _finals(TEST_AUC[model][0], curve[-1]) if number == BEST_TRIAL[model] else _finals(0.7, curve[-1])
            _run(db, experiment_id, job_key(config), curve, status, final)
    for model in MODELS if with_final else ():
        _final_stage(db, experiment_id, model)
    db.engine.dispose()
    return path


def _final_stage(db: Database, experiment_id: int, model: str) -> None:
    family, group = MODELS[model]
    lr, dropout, curve, _ = TRIALS[model][BEST_TRIAL[model]]
    epochs = 3 if model == "gcnn C4" else 2
    configs = [_config(model, seed, lr, dropout, epochs) for seed in FINAL_SEEDS]
    stream = f"final family={family} group={group} geometric=none"
    db.add_trial(experiment_id, NewTrial(stream, "final", 0, {"selected_job": job_key(_config(model, 0, lr, dropout))},
                                         {}, tuple(_job(c, f"{model} final s{c.seed}") for c in configs)))
    for config in configs:
        aucs = TEST_AUC[model]
        if config.seed < len(aucs) and not (config.seed == 0 and epochs == 2):  # seed 0 is the search job, done
            _run(db, experiment_id, job_key(config), curve, "done", _finals(aucs[config.seed], curve[-1]))


# ---- a final stage with every statistic of a fair comparison -------------------------------------------------
# Four models, five final seeds each, only a final stage. Hand-chosen test AUCs (differences to the cnn per seed):
# - cnn +d4 beats cnn by ~+0.010 and, with D4 test-time averaging, by ~+0.016 (the strongest plain model);
# - gcnn D4 beats cnn by ~+0.031 and cnn +d4 +TTA by ~+0.015 on every seed, at 4x the training time;
# - gcnn C4 differs from cnn by +0.012, -0.010, +0.008, -0.006, +0.004: no evidence either way.
# TTA metrics for every model but the D4 one (its group holds all eight rot90/flips); calibration bins and a
# test-patch AUC interval for every job.
FAIR_NAME = "fair"
FAIR_SEEDS = (0, 1, 2, 3, 4)
FAIR_BASE = (0.80, 0.82, 0.79, 0.81, 0.83)
# model: (family, group, geometric, delta per seed, TTA delta per seed or None, train s, eval img/s, params)
FAIR_MODELS = {
    "cnn": ("cnn", "trivial", "none", (0.0,) * 5, (0.004, 0.006, 0.003, 0.005, 0.002), 10.0, 1000.0, 1000),
    "cnn +d4": ("cnn", "trivial", "d4", (0.010, 0.012, 0.008, 0.011, 0.009),
                (0.016, 0.018, 0.015, 0.017, 0.014), 10.5, 1000.0, 1000),
    "gcnn C4": ("gcnn", "C4", "none", (0.012, -0.010, 0.008, -0.006, 0.004),
                (0.018, -0.002, 0.014, 0.000, 0.010), 30.0, 250.0, 980),
    "gcnn D4": ("gcnn", "D4", "none", (0.030, 0.034, 0.027, 0.031, 0.033), None, 41.0, 150.0, 980),
}
# Per model: calibration bins (index, count, mean P(tumour), observed tumour fraction) and ECE, the same per seed.
FAIR_BINS = {"cnn": ((1, 40, 0.15, 0.30), (8, 60, 0.85, 0.70)),
             "cnn +d4": ((1, 50, 0.15, 0.25), (8, 50, 0.85, 0.75)),
             "gcnn C4": ((2, 50, 0.25, 0.30), (7, 50, 0.75, 0.70)), "gcnn D4": ((1, 50, 0.12, 0.15), (8, 50, 0.88, 0.85))}


def fair_ece(model: str) -> float:
    return sum(n * abs(p - y) for _, n, p, y in FAIR_BINS[model]) / sum(n for _, n, _, _ in FAIR_BINS[model])


def fair_auc(model: str, tta: bool = False) -> tuple[float, ...]:
    deltas = FAIR_MODELS[model][4 if tta else 3]
    return tuple(round(base + delta, 6) for base, delta in zip(FAIR_BASE, deltas))


def _fair_finals(model: str, seed: int) -> dict[str, float]:
    _, _, _, _, tta, train_seconds, eval_speed, _ = FAIR_MODELS[model]
    auc = fair_auc(model)[seed]
    out = {**_finals(auc, auc + 0.02), "train_seconds": train_seconds, "eval_images_per_s": eval_speed,
           "test_ece": fair_ece(model), "test_auc_low": auc - 0.02, "test_auc_high": auc + 0.02}
    for b, n, p, y in FAIR_BINS[model]:
        out.update({f"calib_bin{b}_n": n, f"calib_bin{b}_p": p, f"calib_bin{b}_y": y})
    if tta is not None:
        tta_auc = fair_auc(model, tta=True)[seed]
        out.update({"test_tta_auc": tta_auc, "test_tta_accuracy": tta_auc - 0.1, "test_tta_nll": 1.2 - tta_auc,
                    "test_tta_f1": tta_auc - 0.05, "test_tta_ece": fair_ece(model) / 2,
                    "tta_eval_images_per_s": eval_speed / 8})
    return out


def build_fair_study_db(path: Path) -> Path:
    """The fair-comparison database at `path` (SQLite): a final stage of the four FAIR_MODELS; returns `path`."""
    db = Database(f"sqlite:///{path}")
    experiment_id, _ = db.sync_experiment(FAIR_NAME, "classification", "specs/fair.toml",
                                          SPEC_TOML.replace('name = "study"', f'name = "{FAIR_NAME}"'), [])
    for model, (family, group, geometric, _, _, _, _, params) in FAIR_MODELS.items():
        configs = [job_config(FAIR_NAME, "classification", seed, model={"family": family, "group": group},
                              augment={"geometric": geometric}) for seed in FAIR_SEEDS]
        stream = f"final family={family} group={group} geometric={geometric}"
        db.add_trial(experiment_id, NewTrial(stream, "final", 0, {}, {},
                                             tuple(_job(c, f"{model} final s{c.seed}") for c in configs)))
        for config in configs:
            job = db.claim(experiment_id, [job_key(config)], WORKER)
            db.record_epochs(job.job_id, WORKER, [(0, {"valid_auc": 0.8})])
            db.finish(job.job_id, WORKER, _fair_finals(model, config.seed), rotation=[], artifacts={}, params=params)
    db.engine.dispose()
    return path

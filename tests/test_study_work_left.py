"""What is left of a study, on a real SQLite database and a real study spec: the rule a Slurm task requeues by
after the warning signal, and that `--wait` and the end-of-run summary report.

The submission of a fresh study knows no job (trials are sampled as it runs), and a study whose search is finished
still has its final stage to queue: in both, the jobs known so far are all finished or absent, yet work is left.
"""
from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from sqlalchemy import update

from runner import search
from runner.executors.slurm import _work_left
from runner.executors.work import work
from runner.executors.worker import WorkerOptions
from runner.exit_codes import EXIT_INTERRUPTED, EXIT_OK
from runner.run import RunRequest, summarise
from runner.spec import read_spec
from runner.spec.identity import expand
from runner.store import Database, JobModel
from tests.study_fixtures import NAME, SPEC_TOML, WORKER, build_study_db

TRIALS, MODELS = 9, 3  # the fixture's spec: 3 models x 3 trials, one final evaluation per model


def study(tmp_path: Path, **build) -> tuple[Database, int, RunRequest]:
    """The fixture's study database (or an empty one with `fresh=True`) and the request that runs its spec."""
    path, spec_file = tmp_path / "study.db", tmp_path / "study.toml"
    spec_file.write_text(SPEC_TOML)
    spec = read_spec(spec_file)
    if build.pop("fresh", False):
        Database(f"sqlite:///{path}").sync_experiment(NAME, spec.task, str(spec_file), SPEC_TOML, [])
    else:
        build_study_db(path, **build)
    db = Database(f"sqlite:///{path}")
    experiment_id = db.experiments()[0].experiment_id
    request = RunRequest(spec=spec, jobs=tuple(expand(spec)), root=tmp_path, db_url=db.url)
    return db, experiment_id, request


def task_options(db: Database, experiment_id: int, request: RunRequest, keys: tuple[str, ...]) -> WorkerOptions:
    """What a Slurm task of this study gets: the keys known when it was submitted."""
    return WorkerOptions(db_url=db.url, root=request.root, experiment_id=experiment_id, keys=keys, spec=request.spec)


def fail(db: Database, job_id: int) -> None:
    """A done search job turned failed, as if its run had crashed after its epochs."""
    with db.session() as s:
        s.execute(update(JobModel).where(JobModel.job_id == job_id).values(status="failed", error="boom"))


def summary(db: Database, experiment_id: int, request: RunRequest) -> tuple[int, str]:
    out = io.StringIO()
    code = summarise(db, experiment_id, request, {}, Console(file=out, width=200))
    return code, out.getvalue()


def test_a_fresh_study_has_all_its_trials_and_finals_left_though_no_job_exists(tmp_path):
    db, experiment_id, request = study(tmp_path, fresh=True)
    now = work(db, experiment_id, request.spec, ())
    assert now.keys == () and now.to_add == TRIALS + MODELS and now.left and not now.finished
    assert _work_left(task_options(db, experiment_id, request, ()))  # a warned task requeues
    code, out = summary(db, experiment_id, request)
    assert code == EXIT_INTERRUPTED and "All jobs done" not in out and "12 still to add (trials, final evaluations)" in out


def test_a_finished_search_still_has_its_final_stage_to_queue(tmp_path):
    db, experiment_id, request = study(tmp_path, with_final=False)
    submitted = tuple(job.key for job in db.jobs(experiment_id))  # all done or pruned
    now = work(db, experiment_id, request.spec, submitted)
    assert len(now.keys) == TRIALS and now.count("done", "pruned") == TRIALS
    assert now.to_add == MODELS and now.left and not now.finished
    assert _work_left(task_options(db, experiment_id, request, submitted))
    code, out = summary(db, experiment_id, request)
    assert code == EXIT_INTERRUPTED and "All jobs done" not in out and "cnn #0 s0" in out
    # the rule agrees with the planner: asking it adds exactly the final trials counted as left
    assert search.plan(db, request.spec, experiment_id).added == MODELS
    assert work(db, experiment_id, request.spec, submitted).to_add == 0


def test_a_model_with_nothing_to_select_adds_no_final_and_is_not_left(tmp_path):
    db, experiment_id, request = study(tmp_path, with_final=False)
    for job in db.jobs(experiment_id):
        if job.label.startswith("gcnn C4") and job.status == "done":
            fail(db, job.job_id)
    assert work(db, experiment_id, request.spec, ()).to_add == MODELS - 1
    planned = search.plan(db, request.spec, experiment_id)
    assert planned.added == MODELS - 1 and any("gcnn" in note and "C4" in note for note in planned.notes)
    assert work(db, experiment_id, request.spec, ()).to_add == 0


def test_the_study_is_finished_only_when_its_last_final_job_is(tmp_path):
    db, experiment_id, request = study(tmp_path)  # every final job done but the C4's seed 5
    now = work(db, experiment_id, request.spec, ())
    assert now.to_add == 0 and now.count("queued") == 1 and now.left and not now.finished
    last = db.claim(experiment_id, list(now.keys), WORKER)
    assert last.label == "gcnn C4 final s5"
    db.finish(last.job_id, WORKER, {"test_auc": 0.8}, rotation=[], artifacts={}, params=1000)
    now = work(db, experiment_id, request.spec, ())
    assert now.finished and not now.left
    assert not _work_left(task_options(db, experiment_id, request, ()))
    code, out = summary(db, experiment_id, request)
    assert code == EXIT_OK and "All jobs done" in out

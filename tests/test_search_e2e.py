"""A study end to end through `python -m runner`: reproducible trials and metrics, SIGKILL mid-search, reuse."""
from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from runner import cli
from tests.test_e2e import query, runner_process, wait_for, write

STUDY = """
[experiment]
name = "study"
seeds = [0]
[data]
train_size = 64
valid_size = 32
test_size = 32
[train]
epochs = 3
batch_size = 16
[eval]
rotation_angles = [0, 90]
rotation_samples = 16
[search]
sampler = "tpe"
trials = 4
startup_trials = 2
prune = "asha"
min_epochs = 1
reduction_factor = 2
[search.space]
"train.lr" = { log = [1e-3, 3e-2] }
"model.width" = { int = [4, 8], step = 2 }
[final]
seeds = [0, 1]
[[model]]
family = "cnn"
depth = 2
"""


def outcome(root: Path) -> dict[str, object]:
    """What must not depend on how often the run was killed: trials, statuses, decisions and metrics."""
    return {
        "trials": query(root, "select stream, role, number, params_json from trials order by role, stream, number"),
        "jobs": query(root, "select key, status from jobs order by key"),
        "rungs": query(root, "select j.key, r.rung, r.epoch, r.value, r.cut, r.competitors, r.promoted "
                             "from rungs r join jobs j using (job_id) order by j.key, r.rung"),
        "metrics": query(root, "select j.key, f.name, f.value from final_metrics f join jobs j using (job_id) "
                               "where f.name like 'test_%' or f.name like 'valid_%' order by j.key, f.name"),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("study")
    assert cli.main([str(write(tmp, STUDY)), "--root", str(tmp / "runs")]) == 0
    return {**outcome(tmp / "runs"), "root": tmp / "runs"}


def reference_root(reference: dict[str, object]) -> Path:
    return reference["root"]


def test_study_runs_search_prunes_and_final_in_one_command(reference, tmp_path, capsys):
    trials = reference["trials"]
    assert [(role, n) for _, role, n, _ in trials] == [("final", 0)] + [("search", n) for n in range(4)]
    statuses = dict(reference["jobs"])
    assert set(statuses.values()) <= {"done", "pruned"} and len(statuses) == 5  # 4 trials + 1 new final seed
    assert reference["rungs"] and all(epoch in (1, 2) for _, _, epoch, *_ in reference["rungs"])
    pruned = [key for key, status in statuses.items() if status == "pruned"]
    decided = {key for key, _, _, _, _, _, promoted in reference["rungs"] if not promoted}
    assert set(pruned) == decided  # every pruned job has the decision that stopped it, and only those
    assert cli.main(["show", pruned[0], "--root", str(reference_root(reference))]) == 0
    shown = capsys.readouterr().out
    assert "pruned" in shown and "pruning decisions" in shown and "did not reach the cut" in shown
    # rerunning the finished study trains nothing and adds nothing
    spec = write(tmp_path, STUDY)
    root = tmp_path / "again"
    assert cli.main([str(spec), "--root", str(root)]) == 0
    capsys.readouterr()
    assert cli.main([str(spec), "--root", str(root)]) == 0
    assert "5 of 5 jobs already done" in capsys.readouterr().out
    assert query(root, "select max(attempts) from jobs") == [(1,)]
    # the same spec on a fresh database: the same trials in the same order, identical metrics (CPU)
    assert outcome(root) == {k: v for k, v in reference.items() if k != "root"}


def test_final_stage_reuses_the_selected_search_job(reference):
    rows = [r for r in reference["trials"] if r[1] == "final"]
    assert rows[0][0] == "final family=cnn group=trivial geometric=none"
    chosen = rows[0][3]
    statuses = dict(reference["jobs"])
    assert statuses[json.loads(chosen)["selected_job"]] == "done"


def test_sigkill_mid_search_then_rerun_continues_the_same_sequence(tmp_path, reference):
    spec, root = write(tmp_path, STUDY), tmp_path / "runs"
    proc = runner_process(spec, root)

    def two_trials() -> bool:
        try:
            return query(root, "select count(*) from trials")[0][0] >= 2
        except sqlite3.OperationalError:
            return False
    wait_for(two_trials, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cli.main([str(spec), "--root", str(root)]) == 0  # a plain rerun: the dead runner's job is taken over
    assert outcome(root) == {k: v for k, v in reference.items() if k != "root"}


def test_two_workers_share_a_study_without_duplicates(tmp_path):
    spec, root = write(tmp_path, STUDY), tmp_path / "runs"
    assert cli.main([str(spec), "--root", str(root), "--workers", "2"]) == 0
    numbers = query(root, "select role, number from trials order by role, number")
    assert numbers == [("final", 0)] + [("search", n) for n in range(4)]
    assert query(root, "select max(attempts), count(*) from jobs where status in ('done', 'pruned')")[0][0] == 1
    assert query(root, "select count(*) from jobs where status not in ('done', 'pruned')") == [(0,)]
    assert query(root, "select count(*) from (select job_id, rung from rungs group by job_id, rung having count(*) > 1)"
                 ) == [(0,)]

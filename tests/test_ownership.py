"""A worker presumed dead but alive (a stalled node) stops training the job it lost, at once, and writes nothing.

The database tests (tests/test_db.py, also run on PostgreSQL) check each owner-checked write; this one drives a real
job through the worker and training loop while another worker takes the job over between two batches.
"""
from __future__ import annotations

from pathlib import Path

import torch
from sqlalchemy import update

from runner.executors import worker
from runner.store import Database, JobModel
from runner.executors.display import PlainDisplay
from runner.spec.identity import expand
from runner.spec import read_spec
from tests.test_db import db_url  # noqa: F401  the fixture; tests/test_db_postgres.py runs this test on PostgreSQL

SPEC = """
[experiment]
name = "owned"
seeds = [0]
[data]
train_size = 64
valid_size = 16
test_size = 16
[train]
epochs = 2
batch_size = 8
[eval]
invariance = false
rotation_angles = [0]
rotation_samples = 8
[[model]]
family = "cnn"
width = 4
depth = 1
"""


class TakeoverDisplay(PlainDisplay):
    """After the third batch, another worker takes the job over, as a reclaim of a stale job and a claim would."""

    def __init__(self, db: Database, job_id: int):
        super().__init__(1)
        self.db, self.job_id, self.batches = db, job_id, 0

    def batch(self, label, info) -> None:
        self.batches += 1
        if self.batches == 3:
            with self.db.session() as s:
                s.execute(update(JobModel).where(JobModel.job_id == self.job_id).values(worker="other:1::0"))


def test_a_worker_that_lost_its_job_stops_training_it_and_writes_nothing(tmp_path: Path, db_url, capsys):
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SPEC)
    (job,) = expand(read_spec(str(spec_path), []))
    db = Database(db_url)
    experiment_id, _ = db.sync_experiment("owned", "classification", str(spec_path), SPEC,
                                          [(job.key, job.label, job.config.to_dict())])
    options = worker.WorkerOptions(db_url=db.url, root=tmp_path, experiment_id=experiment_id, keys=(job.key,),
                                    heartbeat_every=0.0)
    name = worker.worker_name(0)
    claimed = db.claim(experiment_id, [job.key], name)
    display = TakeoverDisplay(db, claimed.job_id)
    status = worker.run_one(db, claimed, name, torch.device("cpu"), options, worker.StopFlag(), display)
    assert status == "lost"
    assert display.batches == 3  # the next heartbeat, right after the takeover, stopped it
    row = db.jobs(experiment_id)[0]
    assert (row.status, row.worker) == ("running", "other:1::0")
    assert db.metrics_of(row.job_id) == ([], [])
    assert not list(tmp_path.glob("checkpoints/**/state.pt"))  # no checkpoint written for the lost job
    assert "no longer held by" in capsys.readouterr().out

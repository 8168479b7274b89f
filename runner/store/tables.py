"""The results database's tables, read like a schema: one <Thing>Model class per table, plural table names,
<table>_id keys; then the plain rows a study reads and writes (NewTrial, StudySnapshot).

A change here is a new SCHEMA_VERSION and a step in runner/store/migrations.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 3
JOB_STATUSES = ("queued", "running", "done", "failed", "interrupted", "pruned")
FINISHED = ("done", "failed", "pruned")  # final: a rerun does not resume these (--retry-failed / --force do)


class BaseModel(DeclarativeBase):
    pass


class SchemaVersionModel(BaseModel):
    __tablename__ = "schema_versions"
    schema_version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)


class ExperimentModel(BaseModel):
    __tablename__ = "experiments"
    experiment_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    task: Mapped[str] = mapped_column(String(32), nullable=False)
    spec_path: Mapped[str] = mapped_column(Text, nullable=False)
    spec_toml: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class JobModel(BaseModel):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("experiment_id", "key"),)
    job_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.experiment_id"), nullable=False, index=True)
    key: Mapped[str] = mapped_column(String(64), nullable=False)  # hash of the canonical resolved config
    label: Mapped[str] = mapped_column(String(255), nullable=False)  # short human name for tables
    config_json: Mapped[str] = mapped_column(Text, nullable=False)
    family: Mapped[str] = mapped_column(String(32), nullable=False)
    group_name: Mapped[str] = mapped_column(String(32), nullable=False)
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))  # hostname:pid of the claiming process
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)  # the database's clock, not the worker's
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    packages_json: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(64))
    hostname: Mapped[str | None] = mapped_column(String(255))
    params: Mapped[int | None] = mapped_column(Integer)
    # Where a Slurm array task ran it (NULL outside Slurm); added in schema version 2.
    slurm_job_id: Mapped[str | None] = mapped_column(String(64))
    slurm_array_task_id: Mapped[int | None] = mapped_column(Integer)
    slurm_node: Mapped[str | None] = mapped_column(String(255))


class EpochMetricModel(BaseModel):
    """One metric of one epoch, e.g. (job, 3, 'valid_auc', 0.91). Long format: tasks have different metrics."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch", "name"),)
    epoch_metric_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False, index=True)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[float | None] = mapped_column(Float)


class FinalMetricModel(BaseModel):
    """A job's end result, e.g. (job, 'test_auc', 0.93), written once when the job is done."""

    __tablename__ = "final_metrics"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    final_metric_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[float | None] = mapped_column(Float)


class RotationMetricModel(BaseModel):
    """Test metric on inputs rotated by `angle` degrees: what equivariance buys."""

    __tablename__ = "rotation_metrics"
    __table_args__ = (UniqueConstraint("job_id", "angle", "name"),)
    rotation_metric_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False, index=True)
    angle: Mapped[float] = mapped_column(Float, nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[float | None] = mapped_column(Float)


class ArtifactModel(BaseModel):
    """A small binary result of a job, e.g. 'samples.npz': a few test inputs with labels and predictions."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    artifact_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    media_type: Mapped[str] = mapped_column(String(64), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class TrialModel(BaseModel):
    """One configuration of a study: a sampled search trial or a final-evaluation pick. Its jobs (one per seed) are
    linked in trial_jobs; two trials with the same resolved config share the same jobs (same key)."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("experiment_id", "stream", "role", "number"),)
    trial_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.experiment_id"), nullable=False, index=True)
    stream: Mapped[str] = mapped_column(String(255), nullable=False)  # one search, or one model of the final stage
    role: Mapped[str] = mapped_column(String(16), nullable=False)  # search | final
    number: Mapped[int] = mapped_column(Integer, nullable=False)  # trial number within the stream, from 0
    params_json: Mapped[str] = mapped_column(Text, nullable=False)  # sampled values by dotted key
    system_attrs_json: Mapped[str] = mapped_column(Text, nullable=False)  # the sampler's bookkeeping, for rebuilds
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class TrialJobModel(BaseModel):
    __tablename__ = "trial_jobs"
    __table_args__ = (UniqueConstraint("trial_id", "job_id"),)
    trial_job_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.trial_id", ondelete="CASCADE"), nullable=False,
                                          index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False, index=True)


class RungModel(BaseModel):
    """A pruning decision: job reached `epoch` (rung `rung`) with `value`; it went on iff `promoted`. `cut` is the
    value it had to reach and `competitors` how many jobs (itself included) the decision compared."""

    __tablename__ = "rungs"
    __table_args__ = (UniqueConstraint("job_id", "rung"),)
    rung_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False, index=True)
    rung: Mapped[int] = mapped_column(Integer, nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)  # 1-based: epochs completed
    metric: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[float | None] = mapped_column(Float)
    cut: Mapped[float | None] = mapped_column(Float)
    competitors: Mapped[int] = mapped_column(Integer, nullable=False)
    promoted: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


@dataclass(frozen=True)
class NewTrial:
    stream: str
    role: str  # search | final
    number: int
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    jobs: tuple[tuple[str, str, dict[str, Any]], ...]  # (key, label, config) per seed


@dataclass(frozen=True)
class StudySnapshot:
    """Plain rows: jobs (job_id, key, status, config_json), trials (trial_id, stream, role, number, params_json,
    system_attrs_json), links (trial_id, job_id), epochs (job_id, epoch, name, value), rungs (job_id, rung, epoch,
    value, promoted)."""

    jobs: tuple[tuple, ...]
    trials: tuple[tuple, ...]
    links: tuple[tuple, ...]
    epochs: tuple[tuple, ...]
    rungs: tuple[tuple, ...]

"""The results database: table definitions first, then one session helper and small queries.

SQLite (WAL, busy timeout) at `<root>/results.db` by default; any SQLAlchemy URL works.
"""
from __future__ import annotations

from datetime import datetime

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

SCHEMA_VERSION = 1
JOB_STATUSES = ("queued", "running", "done", "failed", "interrupted")


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

"""The results database: tables (the schema), migrations, the engine, the Database (one session helper, small
owner-checked queries, retries of transient errors) and its errors, each with the next step."""
from runner.store.database import Database
from runner.store.errors import DatabaseError, DatabaseUnavailable, LostJob
from runner.store.tables import (
    FINISHED,
    JOB_STATUSES,
    SCHEMA_VERSION,
    ArtifactModel,
    BaseModel,
    EpochMetricModel,
    ExperimentModel,
    FinalMetricModel,
    JobModel,
    NewTrial,
    RotationMetricModel,
    RungModel,
    SchemaVersionModel,
    StudySnapshot,
    TrialJobModel,
    TrialModel,
)

__all__ = ["FINISHED", "JOB_STATUSES", "SCHEMA_VERSION", "ArtifactModel", "BaseModel", "Database", "DatabaseError",
           "DatabaseUnavailable", "EpochMetricModel", "ExperimentModel", "FinalMetricModel", "JobModel", "LostJob",
           "NewTrial", "RotationMetricModel", "RungModel", "SchemaVersionModel", "StudySnapshot", "TrialJobModel",
           "TrialModel"]

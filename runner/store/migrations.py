"""In-place migrations: MIGRATIONS[v] brings a version-v database to version v + 1.

Each step adds only what is missing, so two runners migrating the same database at once are harmless.
"""
from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from runner.store.tables import BaseModel


def _add_missing_columns(engine, table: str, columns: dict[str, str]) -> None:
    for name, sql_type in columns.items():
        if name in {c["name"] for c in inspect(engine).get_columns(table)}:
            continue
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
        except DBAPIError:
            # Another runner added it a moment ago; anything else would still be missing, so raise then.
            if name not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise


def _migrate_slurm_provenance(engine) -> None:
    """Version 1 -> 2: the Slurm job id, array task id and node that ran each job."""
    _add_missing_columns(engine, "jobs", {"slurm_job_id": "VARCHAR(64)", "slurm_array_task_id": "INTEGER",
                                          "slurm_node": "VARCHAR(255)"})


def _migrate_study_tables(engine) -> None:
    """Version 2 -> 3: the study tables (trials, trial_jobs, rungs); the status 'pruned' needs no change."""
    BaseModel.metadata.create_all(engine)  # creates only the tables that are missing


MIGRATIONS = {1: _migrate_slurm_provenance, 2: _migrate_study_tables}

"""The running jobs as people need to see them: who holds each, where, its last heartbeat, and whether that
runner is known to be alive. Shared by `status` and by a run that ends with jobs still held by others."""
from __future__ import annotations

from runner.executors import liveness
from runner.store import Database, JobModel


def running_rows(db: Database, experiment_id: int | None = None,
                 stale_after: float = liveness.STALE_AFTER_SECONDS) -> list[tuple[str, ...]]:
    now = db.now()
    return [_row(name, job, now, stale_after) for name, job in db.running(experiment_id)]


def _row(experiment: str, job: JobModel, now, stale_after: float) -> tuple[str, ...]:
    worker = liveness.parse_worker(job.worker)
    age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
    heartbeat = f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S} ({age:.0f} s ago)" if age is not None else "never"
    host = worker.host if worker else "?"
    if job.slurm_job_id:
        host += f" (Slurm job {job.slurm_job_id}_{job.slurm_array_task_id})"
    return (experiment, str(job.job_id), job.label, job.worker or "?", host, heartbeat,
            liveness.describe(job.worker, age, stale_after))


def running_lines(rows: list[tuple[str, ...]]) -> str:
    """One line per running job (not a table: worker names and verdicts are long, and logs must keep them whole)."""
    return "\n".join(f"  {experiment} job {job} '{label}': worker {worker} on {host}, last heartbeat {heartbeat}; "
                     f"{alive}" for experiment, job, label, worker, host, heartbeat, alive in rows)

"""Reports from the results database alone: `load` for notebooks, `render` for tables, figures and HTML.

    import reports
    jobs = reports.load("runs/results.db")                 # one row per job, config flattened, final metrics
    trials = reports.load_trials("runs/results.db")        # a study's trials: stream, role, number, params, job_id
    confusions = reports.load_confusions("runs/results.db", jobs.job_id)  # {job_id: classes, matrix, split_note}
    report = reports.render("runs/results.db", Path("runs/report"))
    print(report.summary)
"""
from __future__ import annotations

from reports.load import (
    ReportError,
    load,
    load_confusions,
    load_epochs,
    load_experiments,
    load_rotations,
    load_rungs,
    load_samples,
    load_trials,
)
from reports.render import Report, render

__all__ = ["Report", "ReportError", "load", "load_confusions", "load_epochs", "load_experiments", "load_rotations",
           "load_rungs", "load_samples", "load_trials", "render"]

"""The report entry point: database → per-experiment tables and figures → one HTML page and a text summary.

Layout under `out_dir`: `report.html` (self-contained), `report.md` (the summary), and per experiment
`<experiment>/table.{md,csv,tex}` and `<experiment>/<figure>.{png,pdf}`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from reports import figures, html, study_report, tables
from reports.load import (
    Source,
    connect,
    describe,
    experiment_ids,
    load,
    load_epochs,
    load_confusions,
    load_experiments,
    load_rotations,
    load_samples,
)

STATUS_ORDER = ("done", "pruned", "running", "queued", "interrupted", "failed")
CAPTIONS = {
    "learning_curves": "Validation metric per epoch for each selected model (mean ± std over seeds).",
    "rotation": "Test metric against test-time rotation of the inputs: flat is invariant.",
    "params": "Test metric against parameter count; faint dots are all hyperparameter sets.",
    "groups": "Test metric by symmetry group.",
    "data_efficiency": "Test metric against the share of training data used.",
    "sensitivity": ("Validation metric against each swept hyperparameter, per family: the line is the best "
                    "configuration at each value, the band the range over the other settings."),
    "samples": "Test patches with the model's predictions.",
    "confusion": ("Test confusion matrix per model (rows the true class, columns the predicted one), counts summed "
                  "over the model's seeds and shown as the mean per seed; colour is the share of the true class."),
    **study_report.CAPTIONS,
}


@dataclass(frozen=True)
class Report:
    """What `render` wrote: every file path, and the summary the CLI prints (status, notes, markdown tables)."""

    paths: tuple[Path, ...]
    summary: str
    skipped: tuple[str, ...]  # "<experiment>/<figure>: <reason>"


def render(db: Source, out_dir: Path, experiment: str | None = None) -> Report:
    """Write tables, figures and `report.html` for one experiment (or all) under `out_dir`.

    Raises ReportError for a missing database or an unknown experiment (the message lists the known names).
    An empty or partly finished database still renders, and the page and summary say what is missing.
    """
    engine = connect(db)
    out_dir = Path(out_dir)
    wanted = set(experiment_ids(engine, experiment))
    experiments = load_experiments(engine)
    experiments = experiments[experiments["experiment_id"].isin(wanted)]
    written: list[Path] = []
    sections = [_render_experiment(engine, row.experiment, row.task, out_dir, written)
                for row in experiments.itertuples()]
    title = f"Experiment report: {experiment}" if experiment else "Experiment report"
    intro = _intro(describe(db), sections)
    written.append(_write(out_dir / "report.html", html.page(title, sections, intro).encode()))
    summary = _summary(title, intro, sections, out_dir)
    written.append(_write(out_dir / "report.md", summary.encode()))
    skipped = tuple(f"{s.experiment}/{name}: {reason}" for s in sections for name, reason in s.skipped)
    return Report(paths=tuple(written), summary=summary, skipped=skipped)


def _intro(url: str, sections: list[html.Section]) -> str:
    if not sections:
        return f"The database {url} holds no experiments yet: run `python -m runner run SPEC` first."
    return f"{len(sections)} experiment(s) from {url}. Model selection on validation; tests are mean ± std over seeds."


def _render_experiment(engine: Source, name: str, task: str, out_dir: Path, written: list[Path]) -> html.Section:
    jobs = load(engine, name)
    folder = out_dir / _slug(name)
    done_ids = jobs.loc[jobs["status"] == "done", "job_id"] if task == "classification" else []
    confusions = load_confusions(engine, done_ids)
    scoring = tables.scoring_of(jobs, task, _classes(confusions))
    selected = tables.select_models(jobs, task, scoring)
    study = study_report.view(engine, name, task, jobs, scoring)  # None for a plain grid
    table, formatted, caption, latex_caption = _headline(name, task, selected, study, scoring)
    files = {"table.md": tables.to_markdown(formatted), "table.csv": tables.to_csv(table),
             "table.tex": tables.to_latex(formatted, latex_caption, f"tab:{_slug(name)}")}
    if study is not None:
        files.update({"search.md": tables.to_markdown(study.counts), "search.csv": tables.to_csv(study.counts)})
    written += [_write(folder / file, text.encode()) for file, text in files.items()]
    # +TTA rows re-use their model's jobs: the per-model figures draw each model once.
    models = table[~table["tta"]] if "tta" in table.columns else table
    lines = figures.pick_lines(models, task, scoring=scoring) if not models.empty else models
    drawn, skipped = _figures(engine, jobs, selected, models, lines, scoring, folder, written, study, confusions)
    notes = (_notes(jobs, scoring, len(models), len(lines)) + _data_notes(confusions, scoring)
             + (study.notes if study is not None else ()))
    extras = (("Search: trials per model, pruned and complete", study.counts),) if study is not None else ()
    return html.Section(experiment=name, task=task, status_counts=_status_counts(jobs), notes=notes,
                        table=formatted, figures=drawn, skipped=skipped,
                        links=tuple((f, f"{folder.name}/{f}") for f in files), caption=caption,
                        findings=study.findings if study is not None else (), extras=extras,
                        answer=study.answer if study is not None else "")


def _classes(confusions: dict[int, dict]) -> tuple[str, ...]:
    """The class names the experiment's jobs stored with their confusion matrices (the first job's)."""
    return tuple(str(c) for c in confusions[min(confusions)]["classes"]) if confusions else ()


def _headline(name: str, task: str, selected: pd.DataFrame, study: study_report.StudyView | None,
              scoring: tables.Scoring) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """(numeric table, display table, caption, LaTeX caption): a study's final evaluation once it has a done job,
    else the best configuration per model on validation."""
    if study is not None and not study.final.empty:
        return study.final, study.formatted, study_report.FINAL_CAPTION, f"{name}: {study_report.FINAL_CAPTION}"
    table = tables.comparison_table(selected, task, scoring)
    formatted = tables.format_table(table, task, scoring) if not table.empty else pd.DataFrame()
    latex = f"{name}: best configuration per model on validation; test metrics mean ± std over seeds"
    return table, formatted, html.TABLE_CAPTION, latex


Drawn = tuple[tuple[html.Figure, ...], tuple[tuple[str, str], ...]]  # (figures, (name, reason skipped))


def _figures(engine: Source, jobs: pd.DataFrame, selected: pd.DataFrame, table: pd.DataFrame, lines: pd.DataFrame,
             scoring: tables.Scoring, folder: Path, written: list[Path], study: study_report.StudyView | None,
             confusions: dict[int, dict]) -> Drawn:
    builders = _builders(engine, jobs, selected, table, lines, scoring)
    if confusions:  # only jobs that stored one: older databases keep exactly their figures and notes
        builders["confusion"] = lambda: figures.confusion_matrices(lines, confusions)
    if study is not None:
        builders.update(study_report.figure_builders(study, scoring.task, scoring))
    drawn, skipped = [], []
    for name, build in builders.items():
        try:
            figure = build()
        except figures.Skipped as reason:
            skipped.append((name, str(reason)))
            for suffix in ("png", "pdf"):  # a figure from an earlier render would now be stale
                (folder / f"{name}.{suffix}").unlink(missing_ok=True)
            continue
        encoded = figures.encode(figure)
        written += [_write(folder / f"{name}.{suffix}", data) for suffix, data in encoded.items()]
        drawn.append(html.Figure(name=name, caption=CAPTIONS[name], png=encoded["png"]))
    return tuple(drawn), tuple(skipped)


def _builders(engine: Source, jobs: pd.DataFrame, selected: pd.DataFrame, table: pd.DataFrame,
              lines: pd.DataFrame, scoring: tables.Scoring) -> dict[str, Callable[[], Figure]]:
    """Each figure as a thunk, so its data is only read when it is drawn; the order is the page's order."""
    task = scoring.task
    done = tables.done_jobs(jobs, task, scoring)
    job_ids = [j for ids in lines.get("job_ids", []) for j in ids]
    first_jobs = [ids[0] for ids in lines.get("job_ids", [])]
    return {
        "learning_curves": lambda: figures.learning_curves(
            lines, load_epochs(engine, job_ids, [scoring.valid]), task, scoring),
        "rotation": lambda: figures.rotation_curves(
            lines, load_rotations(engine, job_ids, [figures.ROTATION_METRIC[task]]), task),
        "params": lambda: figures.metric_vs_params(_config_means(done, scoring), lines, task, scoring),
        "groups": lambda: figures.metric_vs_group(table, task, scoring),
        "data_efficiency": lambda: figures.data_efficiency(selected, task, scoring),
        "sensitivity": lambda: figures.sensitivity(done, task, scoring),
        "samples": lambda: figures.sample_grid(lines, load_samples(engine, first_jobs), task),
    }


def _config_means(done: pd.DataFrame, scoring: tables.Scoring) -> pd.DataFrame:
    headline = scoring.test
    if done.empty or headline not in done.columns:
        return pd.DataFrame(columns=["family", "params", headline])
    return done.groupby("config_key").agg(family=("family", "first"), params=("params", "mean"),
                                          **{headline: (headline, "mean")})


def _status_counts(jobs: pd.DataFrame) -> tuple[tuple[str, int], ...]:
    counts = jobs["status"].value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts.index) - set(STATUS_ORDER))
    return tuple((status, int(counts[status])) for status in order)


def _notes(jobs: pd.DataFrame, scoring: tables.Scoring, n_rows: int, n_lines: int) -> tuple[str, ...]:
    """Plain-words account of what is missing, so a partial report is never mistaken for a complete one."""
    metric = scoring.valid
    notes = []
    if jobs.empty:
        return ("The experiment has no jobs yet.",)
    unfinished = jobs[jobs["status"] != "done"]
    if not unfinished.empty:
        notes.append(f"{len(unfinished)} of {len(jobs)} jobs are not done ("
                     + ", ".join(f"{s} {c}" for s, c in _status_counts(unfinished))
                     + "); the table and figures use the done jobs only.")
    done = jobs[jobs["status"] == "done"]
    lacking = done[done[metric].isna()] if metric in done.columns else done
    if not lacking.empty:
        notes.append(f"{len(lacking)} done job(s) have no final metrics ({metric} missing), left out: job id(s) "
                     + ", ".join(map(str, lacking["job_id"].head(10))) + (" …" if len(lacking) > 10 else ""))
    for row in jobs[jobs["status"] == "failed"].head(5).itertuples():
        notes.append(f"Failed: job {row.job_id} ({row.label}): {_error_line(row.error)}")
    if n_rows > n_lines:
        notes.append(f"Figures show {n_lines} of the {n_rows} models in the table (the best on validation, "
                     "always including the best plain model).")
    return tuple(notes)


def _data_notes(confusions: dict[int, dict], scoring: tables.Scoring) -> tuple[str, ...]:
    """What the models were trained and tested on, from the jobs' confusion artifacts: the data, the class names
    in label order, how the splits were made, and which metric judges them."""
    if not confusions:
        return ()
    facts = list(dict.fromkeys((str(c.get("data", "")), str(c.get("split_note", "")))
                               for _, c in sorted(confusions.items())))
    notes = [f"Data: {data or 'not described'}; split: {note or 'the source’s own (predefined) splits'}."
             for data, note in facts[:3]]
    notes.append(f"Classes (label order): {', '.join(_classes(confusions))}; models are selected on validation "
                 f"{scoring.word} ({'lower' if not scoring.maximize else 'higher'} is better).")
    return tuple(notes)


def _error_line(error: object) -> str:
    text = str(error).strip() if isinstance(error, str) and error.strip() else "no error message recorded"
    return text.splitlines()[-1][:200]


def _summary(title: str, intro: str, sections: list[html.Section], out_dir: Path) -> str:
    parts = [f"# {title}", "", intro]
    for section in sections:
        counts = ", ".join(f"{s} {c}" for s, c in section.status_counts) or "none"
        parts += ["", f"## {section.experiment} ({section.task})", ""]
        parts += [f"**{section.answer}**", ""] if section.answer else []
        parts += [f"Jobs: {counts}."]
        parts += [f"- {note}" for note in section.notes]
        parts += ["", tables.to_markdown(section.table).rstrip()]
        parts += [""] * bool(section.findings) + [f"- {finding}" for finding in section.findings]
        for title, extra in section.extras:
            parts += ["", f"{title}:", "", tables.to_markdown(extra).rstrip()]
        if section.skipped:
            parts += ["", "Figures skipped: " + "; ".join(f"{n} ({r})" for n, r in section.skipped) + "."]
    parts += ["", f"Open {out_dir / 'report.html'} for the figures."]
    return "\n".join(parts) + "\n"


def _slug(name: str) -> str:
    """A file-system-safe folder name for an experiment."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def _write(path: Path, data: bytes) -> Path:
    """Write to a temporary sibling and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
    return path

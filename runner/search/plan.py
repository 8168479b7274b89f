"""What a study does next, computed from the spec and the database alone.

A worker that finds nothing to claim asks `plan`: it adds the next search trial (to the stream with the fewest
trials, ties to the first stream), or, once every search job of a model is finished, that model's final
evaluation. With one worker this makes the sequence of trials a function of the spec: trial n is asked only after
trials 0..n-1 are finished, and a killed run continues exactly where it stopped. With several workers, each idle
worker adds a trial while others run, so trial n sees fewer finished trials than it would with one worker (see
README). A job that reaches a rung asks `prune_check`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from runner.search.final import final_jobs, model_name, model_of, select
from runner.search.history import History, JobHistory
from runner.search.prune import decide
from runner.search.sampler import ask
from runner.search.streams import Stream, streams, trial_jobs
from runner.spec import Spec
from runner.spec.identity import expand
from runner.spec.search import DEFAULT_METRIC
from runner.store import FINISHED, Database, NewTrial

ATTEMPTS = 8  # re-plans after losing a race with another runner for the same trial number


@dataclass(frozen=True)
class Plan:
    keys: tuple[str, ...]  # every job of this spec now in the database
    added: int  # trials added by this call
    open: int  # jobs of the spec not finished (queued, running, interrupted)
    notes: tuple[str, ...] = ()  # models the final stage cannot select for, and why
    to_add: int = 0  # `current` only: trials still to ask and final evaluations still to queue


def metrics(spec: Spec) -> tuple[str, ...]:
    names = {b.search.metric for b in spec.blocks if b.search is not None}
    names.add(spec.final.select if spec.final else DEFAULT_METRIC[spec.task])
    return tuple(sorted(names))


def plan(db: Database, spec: Spec, experiment_id: int) -> Plan:
    grid_keys = [job.key for job in expand(spec)]
    all_streams = streams(spec)
    for _ in range(ATTEMPTS):
        snapshot = db.study_snapshot(experiment_id, metrics(spec))
        histories = {m: History(snapshot, m) for m in metrics(spec)}
        added = _next_trial(db, spec, experiment_id, all_streams, histories)
        notes: list[str] = []
        if added == 0 and spec.final is not None:
            added = _final_trials(db, spec, experiment_id, all_streams, histories, grid_keys, notes)
        if added is None:
            continue  # lost a race: another runner added the same trial; look again
        if added:
            snapshot = db.study_snapshot(experiment_id, ())
        return _summary(snapshot, grid_keys, added, notes)
    raise RuntimeError("could not add a trial after several attempts: other runners keep adding the same ones; "
                       "rerun the command")


def final_models(spec: Spec) -> int:
    """How many models the final stage will evaluate (for progress): distinct `per` values of streams and grid jobs."""
    if spec.final is None:
        return 0
    models = {model_of(s.config, spec.final.per) for s in streams(spec)}
    models |= {model_of(job.config.to_dict(), spec.final.per) for job in expand(spec)}
    return len(models)


def current(db: Database, spec: Spec, experiment_id: int) -> Plan:
    """The spec's jobs now in the database and what `plan` will still add to them, adding nothing."""
    grid_keys = [job.key for job in expand(spec)]
    snapshot = db.study_snapshot(experiment_id, (spec.final.select,) if spec.final else ())
    history = History(snapshot, spec.final.select if spec.final else DEFAULT_METRIC[spec.task])
    all_streams = streams(spec)
    to_add = _trials_to_ask(all_streams, history) + _finals_to_queue(spec, all_streams, history, grid_keys)
    return replace(_summary(snapshot, grid_keys, 0, []), to_add=to_add)


def _trials_to_ask(all_streams: list[Stream], history: History) -> int:
    return sum(max(0, s.search.trials - len(history.of_stream(s.key))) for s in all_streams)


def _finals_to_queue(spec: Spec, all_streams: list[Stream], history: History, grid_keys: list[str]) -> int:
    """Models whose final trial is not in the database yet, except those `plan` can never select for (every
    search job finished and none done: the note it gives instead)."""
    if spec.final is None:
        return 0
    final = spec.final
    done = {t.stream for t in history.trials if t.role == "final"}
    models = {s.key: model_of(s.config, final.per) for s in all_streams}
    waiting = 0
    for model, jobs in _search_jobs_by_model(spec, all_streams, models, history, grid_keys).items():
        if model_name(model, final.per) in done:
            continue
        if _finished(all_streams, models, history, model, jobs) and select(jobs, final.direction) is None:
            continue
        waiting += 1
    return waiting


def _summary(snapshot, grid_keys: list[str], added: int, notes: list[str]) -> Plan:
    linked = {job_id for _, job_id in snapshot.links}
    status = {key: s for _, key, s, _ in snapshot.jobs}
    keys = list(dict.fromkeys([*grid_keys, *(key for job_id, key, _, _ in snapshot.jobs if job_id in linked)]))
    open_jobs = sum(1 for key in keys if status.get(key, "queued") not in FINISHED)
    return Plan(keys=tuple(keys), added=added, open=open_jobs, notes=tuple(notes))


def _next_trial(db: Database, spec: Spec, experiment_id: int, all_streams: list[Stream],
                histories: dict[str, History]) -> int | None:
    """Add one search trial; 0 when every stream has its trials; None when another runner won the race."""
    counts = {s.key: len(histories[s.search.metric].of_stream(s.key)) for s in all_streams}
    waiting = [s for s in all_streams if counts[s.key] < s.search.trials]
    if not waiting:
        return 0
    stream = min(waiting, key=lambda s: (counts[s.key], s.index))
    number = counts[stream.key]
    params, attrs = ask(stream.search, stream.key, number, histories[stream.search.metric].of_stream(stream.key))
    trial = NewTrial(stream.key, "search", number, params, attrs, trial_jobs(spec, stream, number, params))
    return 1 if db.add_trial(experiment_id, trial) else None


def _final_trials(db, spec: Spec, experiment_id: int, all_streams: list[Stream], histories, grid_keys: list[str],
                  notes: list[str]) -> int | None:
    final = spec.final
    history = histories[final.select]
    done = {t.stream for t in history.trials if t.role == "final"}
    models = {s.key: model_of(s.config, final.per) for s in all_streams}
    added = 0
    for model, jobs in _search_jobs_by_model(spec, all_streams, models, history, grid_keys).items():
        name = model_name(model, final.per)
        if name in done or not _finished(all_streams, models, history, model, jobs):
            continue
        choice = select(jobs, final.direction)
        if choice is None:
            notes.append(f"{name}: no search job is done, so there is nothing to select")
            continue
        trial = NewTrial(name, "final", 0, {"selected_job": choice.key},
                         {"value": choice.value, "candidates": choice.candidates},
                         final_jobs(spec, final, choice.config))
        if not db.add_trial(experiment_id, trial):
            return None
        added += 1
    return added


def _search_jobs_by_model(spec: Spec, all_streams: list[Stream], models: dict[str, tuple], history: History,
                          grid_keys: list[str]) -> dict[tuple, list[JobHistory]]:
    """Each model's search jobs: the jobs of its streams' trials and its grid jobs, in job order."""
    per = spec.final.per
    by_key = {job.key: job for job in history.jobs.values()}
    out: dict[tuple, dict[int, JobHistory]] = {}
    for stream in all_streams:
        bucket = out.setdefault(models[stream.key], {})
        for trial in history.of_stream(stream.key):
            bucket.update({job.job_id: job for job in trial.jobs})
    for key in grid_keys:
        job = by_key.get(key)
        if job is not None:
            out.setdefault(model_of(job.config, per), {})[job.job_id] = job
    return {model: [jobs[i] for i in sorted(jobs)] for model, jobs in out.items()}


def _finished(all_streams: list[Stream], models: dict[str, tuple], history: History, model: tuple,
              jobs: list[JobHistory]) -> bool:
    """Every search trial of the model's streams has been asked and every one of its jobs is finished."""
    for stream in all_streams:
        if models[stream.key] == model and len(history.of_stream(stream.key)) < stream.search.trials:
            return False
    return all(job.status in FINISHED for job in jobs)


def prune_check(db: Database, spec: Spec, experiment_id: int, job_id: int, worker: str, step: int) -> str | None:
    """The reason to stop job `job_id` after `step` epochs, or None to go on. Records the decision (as `worker`, which
    must still hold the job)."""
    by_key = {s.key: s for s in streams(spec)}
    snapshot = db.study_snapshot(experiment_id, metrics(spec))
    trials = History(snapshot, metrics(spec)[0]).trials_of_job(job_id)
    if any(t.role == "final" for t in trials):
        return None  # final jobs always train to the end
    stream = next((by_key[t.stream] for t in trials if t.stream in by_key), None)
    if stream is None or stream.search.prune == "none":
        return None
    history = History(snapshot, stream.search.metric)
    others = {j.job_id: j for t in history.of_stream(stream.key) for j in t.jobs if j.job_id != job_id}
    decision = decide(stream.search, history.jobs[job_id], step, [others[i] for i in sorted(others)])
    if decision.rungs:
        db.record_rungs(job_id, worker, stream.search.metric, list(decision.rungs))
    return decision.reason(stream.search.metric, step) if decision.prune else None

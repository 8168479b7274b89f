"""Sub-commands and exit codes. `python -m runner SPEC [key=value ...]` runs a spec; the rest inspect results.

Exit codes (runner/exit_codes.py): 0 done, 1 some job failed, 2 bad input (spec, data, database), 3 jobs remain
with live runners, 4 the database stayed away, 5 a disk is full, 130 interrupted (rerun to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runner.cli import data as data_command
from runner.cli.options import db_url, default_root
from runner.executors.cluster import ClusterError, ClusterProfile, read_profile
from runner.executors.liveness import STALE_AFTER_SECONDS
from runner.executors.running_view import running_lines, running_rows
from runner.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_DATABASE_AWAY,
    EXIT_DISK_FULL,
    EXIT_OK,
)
from runner.faults import DatabaseAway, DiskFull
from runner.spec import SpecError, read_spec
from runner.store import JOB_STATUSES, Database, DatabaseError
from runner.training import DEVICES

COMMANDS = ("run", "report", "status", "show", "schema", "export", "predict", "serve", "bench", "data")
# markup off: messages name spec tables such as [search] and [final], which rich would swallow as style tags.
console = Console(highlight=False, soft_wrap=True, markup=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=str(default_root()),
                        help="run-state folder: results.db, checkpoints/, data/, report/ (env RUNNER_ROOT; default runs)")
    common.add_argument("--db", default=None, help="SQLAlchemy URL of the results database (default: ROOT/results.db)")
    top = argparse.ArgumentParser(prog="python -m runner", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run a spec (the default: python -m runner SPEC)")
    run.add_argument("spec", help="a TOML spec, e.g. specs/d4_grid.toml")
    run.add_argument("overrides", nargs="*", help="dotted KEY=VALUE applied before expansion, e.g. train.epochs=3")
    run.add_argument("--dry-run", action="store_true",
                     help="print the jobs, the images each model will train and (with measured rates) the expected "
                          "device-hours; write nothing")
    run.add_argument("--calibrate", action="store_true",
                     help="with --dry-run (implied): measure each model on this device for the estimate, a few "
                          "seconds each; kept in ROOT/calibration.json (the data is prepared in ROOT/cache)")
    run.add_argument("--workers", type=int, default=None,
                     help="jobs run in parallel (one per GPU where there are several); with Slurm: array size")
    run.add_argument("--device", choices=DEVICES, default="auto",
                     help="where jobs train (default auto: CUDA, then MPS, then CPU); not part of a job's identity")
    run.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    run.add_argument("--force", action="store_true", help="run every job again from scratch")
    run.add_argument("--stale-after", type=float, default=STALE_AFTER_SECONDS,
                     help="seconds without a heartbeat after which a job running on another host is taken over "
                          f"(default {STALE_AFTER_SECONDS:g}); a dead runner on this host loses its job at once")
    run.add_argument("--db-retry-seconds", type=float, default=float(os.environ.get("RUNNER_DB_RETRY_SECONDS", 600)),
                     help="how long a database outage (server restart, dropped connection, lock) is waited out, with "
                          "backoff, before the runner stops with exit 4 (env RUNNER_DB_RETRY_SECONDS; default 600)")
    add_cluster_options(run)
    report = sub.add_parser("report", parents=[common], help="tables and figures from the database")
    report.add_argument("--experiment", default=None)
    report.add_argument("--out", default=None, help="output folder (default: ROOT/report)")
    status = sub.add_parser("status", parents=[common], help="jobs by status per experiment; who runs what")
    status.add_argument("--stale-after", type=float, default=STALE_AFTER_SECONDS,
                        help="seconds without a heartbeat after which a runner on another host is presumed dead")
    show = sub.add_parser("show", parents=[common], help="one job: config, metrics, error")
    show.add_argument("job", help="job id or (a prefix of) its key")
    sub.add_parser("schema", help="print the spec's JSON Schema (for editors)")
    from runner.cli.infer import add_parsers

    add_parsers(sub, common)
    bench = sub.add_parser("bench", help="performance ratios side by side, with targets (runner.bench)")
    bench.add_argument("--quick", action="store_true", help="smaller batches, fewer groups and rounds (minutes)")
    bench.add_argument("--out", default="runs/bench/latest.json", help="JSON results (default runs/bench/latest.json)")
    data_command.add_parser(sub)
    return top


def add_cluster_options(run: argparse.ArgumentParser) -> None:
    slurm = run.add_argument_group("Slurm (override the --cluster profile; not part of a job's identity)")
    slurm.add_argument("--executor", choices=("local", "slurm"), default=None,
                       help="local (default): run here; slurm: submit one job array and return")
    slurm.add_argument("--cluster", default=None, help="cluster profile TOML with a [slurm] table (implies slurm)")
    slurm.add_argument("--wait", action="store_true", help="follow the array until it ends; usual exit codes")
    for flag, kind, what in (("--partition", str, "sbatch partition"), ("--gpus-per-task", int, "GPUs per task"),
                             ("--cpus-per-task", int, "CPUs per task"), ("--mem-gb", float, "memory per task"),
                             ("--time-min", int, "time limit per task, minutes"),
                             ("--signal-delay-s", int, "USR2 warning this many seconds before the limit")):
        slurm.add_argument(flag, type=kind, default=None, help=what)
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="extra #SBATCH option, e.g. --sbatch=--account=lab (repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="shell line run before the worker, e.g. 'module load cuda' (repeatable)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    top = parser()
    # Overrides may come after options (`SPEC --root X train.epochs=3`), which argparse alone cannot interleave.
    args, extra = top.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command != "run"]
    if stray:
        top.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return COMMAND_FUNCTIONS[args.command](args)
    except (SpecError, DatabaseError, ClusterError) as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT
    except DatabaseAway as exc:
        errors.print(f"error: {exc}")
        return EXIT_DATABASE_AWAY
    except DiskFull as exc:
        errors.print(f"error: {exc}")
        return EXIT_DISK_FULL


def cmd_run(args) -> int:
    if args.workers is not None and args.workers < 1:
        errors.print("error: --workers must be >= 1")
        return EXIT_BAD_INPUT
    spec = read_spec(args.spec, args.overrides)  # before the heavy imports: a typo is reported at once
    cluster = cluster_profile(args)
    # escnn's solver cache lives with the rest of the run state, so deleting the root resets everything.
    os.environ.setdefault("EQUIV_CACHE_DIR", str(Path(args.root) / "cache" / "equiv"))
    from runner.data import DataError
    from runner.executors.slurm import SubmitError
    from runner.run import RunRequest, run_spec
    from runner.spec.identity import expand
    from runner.training.device import pick_device

    try:
        pick_device(0, args.device)  # an impossible --device is bad input, found before anything is written
    except RuntimeError as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT

    request = RunRequest(spec=spec, jobs=tuple(expand(spec)), root=Path(args.root), db_url=db_url(args),
                         workers=args.workers or 1, retry_failed=args.retry_failed, force=args.force,
                         stale_after=args.stale_after, dry_run=args.dry_run or args.calibrate,
                         calibrate=args.calibrate, device=args.device,
                         db_retry_seconds=args.db_retry_seconds,
                         cluster=cluster, wait=args.wait)
    try:
        return run_spec(request, console)
    except DataError as exc:
        errors.print(f"error: {exc}\nNothing was run or written.")
        return EXIT_BAD_INPUT
    except SubmitError as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT


def cluster_profile(args) -> ClusterProfile | None:
    """The Slurm settings (profile file, then options), checked before anything is written; None: run here."""
    if args.executor == "local" or (args.executor is None and args.cluster is None):
        return None
    from runner.executors.slurm import check_ready

    options = {"partition": args.partition, "gpus_per_task": args.gpus_per_task, "cpus_per_task": args.cpus_per_task,
               "mem_gb": args.mem_gb, "time_min": args.time_min, "signal_delay_s": args.signal_delay_s,
               "workers": args.workers, "sbatch": args.sbatch, "setup": args.setup}
    profile = read_profile(args.cluster, options)
    if not args.dry_run:
        check_ready(profile, db_url(args), args.cluster or "command line")
    return profile


def cmd_report(args) -> int:
    import reports

    out = Path(args.out) if args.out else Path(args.root) / "report"
    try:
        result = reports.render(db_url(args), out, experiment=args.experiment)
    except reports.ReportError as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT
    console.print(result.summary)
    return EXIT_OK


def cmd_status(args) -> int:
    db = Database(db_url(args), create=False)
    table = Table(title=f"jobs in {db.url}")
    for column in ("experiment", *JOB_STATUSES):
        table.add_column(column)
    for experiment, counts in db.status_counts():
        table.add_row(experiment, *(str(counts.get(s, 0)) for s in JOB_STATUSES))
    console.print(table)
    if rows := running_rows(db, stale_after=args.stale_after):
        console.print("running jobs:\n" + running_lines(rows))
    return EXIT_OK


def cmd_show(args) -> int:
    db = Database(db_url(args), create=False)
    job = db.find_job(args.job)
    epochs, final = db.metrics_of(job.job_id)
    console.print(f"job {job.job_id} {job.key} '{job.label}': {job.status} (attempts {job.attempts}, "
                  f"device {job.device}, commit {job.git_commit}{' dirty' if job.git_dirty else ''})")
    if job.slurm_job_id:
        console.print(f"slurm: job {job.slurm_job_id}, array task {job.slurm_array_task_id}, node {job.slurm_node}")
    console.print_json(job.config_json)
    confusion = _confusion(db, job.job_id) if final else {}
    for line in final_lines({m.name: m.value for m in final}, tuple(confusion.get("classes", ()))):
        console.print(line)
    if confusion.get("matrix") and len(confusion.get("classes", ())) > 2:
        console.print("test confusion (rows true, columns predicted): "
                      + "; ".join(f"{c}: {' '.join(str(v) for v in row)}"
                                  for c, row in zip(confusion["classes"], confusion["matrix"])))
    if epochs:
        console.print(_epoch_table(epochs))
    rungs = db.rungs_of(job.job_id)
    if rungs:
        console.print(_rung_table(rungs))
    if job.error:
        console.print(f"error: {job.error}\n{job.traceback or ''}")
    return EXIT_OK


# How `show` groups a job's final metrics: the first prefix a name starts with (in this order) names its line.
_FINAL_GROUPS = (("test_tta_", "test with TTA"), ("test_", "test"), ("valid_", "valid (best epoch)"))
_SYMMETRY = ("invariance_error", "equivariance_error", "grid_error", "offgrid_error", "rot45_error")
_CALIBRATION = re.compile(r"calib_bin(\d+)_([npy])$")


def _confusion(db: Database, job_id: int) -> dict:
    """The job's confusion.json (classes, matrix), {} when it has none (segmentation, older jobs)."""
    from reports.load import load_confusions

    return load_confusions(db.engine, [job_id]).get(job_id, {})


def final_lines(final: dict[str, float | None], classes: tuple[str, ...] = ()) -> list[str]:
    """A job's final metrics, a line per kind (test, TTA, validation, symmetry, cost), the ten calibration bins on
    one line of their own rather than thirty names; per-class recall by class name where the job names them."""
    groups: dict[str, list[str]] = {}
    bins: dict[int, dict[str, float | None]] = {}
    for name, value in sorted(final.items()):
        if match := _CALIBRATION.match(name):
            bins.setdefault(int(match.group(1)), {})[match.group(2)] = value
            continue
        title = next((t for prefix, t in _FINAL_GROUPS if name.startswith(prefix)),
                     "symmetry" if name in _SYMMETRY else "run")
        short = name.removeprefix("test_tta_").removeprefix("test_").removeprefix("valid_") if title != "run" else name
        if (recall := re.fullmatch(r"recall_(\d+)", short)) and int(recall.group(1)) < len(classes):
            short = f"recall[{classes[int(recall.group(1))]}]"
        groups.setdefault(title, []).append(f"{short}={_number(value)}")
    lines = [f"{title}: {', '.join(groups[title])}" for title in ("test", "test with TTA", "valid (best epoch)",
                                                                  "symmetry", "run") if title in groups]
    filled = [f"{i}: n {_number(b.get('n'))}, p {_number(b.get('p'))}, observed {_number(b.get('y'))}"
              for i, b in sorted(bins.items()) if b.get("n")]
    if filled:
        lines.append("calibration bins (non-empty): " + "; ".join(filled))
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _epoch_table(epochs) -> Table:
    names = sorted({m.name for m in epochs})
    table = Table("epoch", *names)
    by_epoch: dict[int, dict[str, float | None]] = {}
    for m in epochs:
        by_epoch.setdefault(m.epoch, {})[m.name] = m.value
    for epoch, values in sorted(by_epoch.items()):
        table.add_row(str(epoch + 1), *(_cell(values.get(n)) for n in names))
    return table


def _rung_table(rungs) -> Table:
    table = Table("rung", "epoch", "metric", "value", "cut", "competitors", "decision", title="pruning decisions")
    for r in rungs:
        table.add_row(str(r.rung), str(r.epoch), r.metric, _cell(r.value), _cell(r.cut), str(r.competitors),
                      "promoted" if r.promoted else "pruned")
    return table


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def cmd_schema(_args) -> int:
    from runner.spec.json_schema import json_schema

    console.print_json(json.dumps(json_schema()))
    return EXIT_OK


def cmd_inference(args) -> int:
    from runner.cli import infer

    return infer.run(args, console, errors)


def cmd_bench(args) -> int:
    from runner import bench

    results = bench.run(args.quick, Path(args.out), progress=console.print)
    console.print(results["table"])
    console.print(f"written to {args.out}")
    return EXIT_OK


COMMAND_FUNCTIONS = {"run": cmd_run, "report": cmd_report, "status": cmd_status, "show": cmd_show,
                     "schema": cmd_schema, "export": cmd_inference, "predict": cmd_inference, "serve": cmd_inference,
                     "bench": cmd_bench, "data": data_command.cmd_data}

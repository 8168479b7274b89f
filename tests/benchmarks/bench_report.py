"""Report at scale: a database of 10,000 jobs x 100 epochs (6 metrics each: 6 M epoch rows), load and render time.

    uv run python tests/benchmarks/bench_report.py [--jobs 10000] [--epochs 100] [--keep DIR]

Target: render (load + tables + figures + HTML) within 10 s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.report_fixtures

import reports  # noqa: E402
from tests.report_fixtures import build_bulk_db  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--keep", type=Path, default=None, help="write the database and report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        db = root / "bench_results.db"
        db.unlink(missing_ok=True)
        start = time.perf_counter()
        build_bulk_db(db, args.jobs, args.epochs)
        built = time.perf_counter() - start
        print(f"built {args.jobs} jobs x {args.epochs} epochs in {built:.1f} s "
              f"({db.stat().st_size / 1e6:.0f} MB)")
        start = time.perf_counter()
        jobs = reports.load(db)
        loaded = time.perf_counter() - start
        print(f"reports.load: {loaded:.2f} s for {len(jobs)} rows x {jobs.shape[1]} columns")
        start, cpu = time.perf_counter(), time.process_time()
        report = reports.render(db, root / "report")
        rendered = time.perf_counter() - start
        cpu = time.process_time() - cpu
        print(f"reports.render: {rendered:.2f} s wall, {cpu:.2f} s CPU, {len(report.paths)} files "
              f"({'within' if rendered <= 10 else 'OVER'} the 10 s target)")


if __name__ == "__main__":
    main()

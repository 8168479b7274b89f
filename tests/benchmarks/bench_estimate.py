"""The dry run's cost estimate against the real run it predicts, side by side in one run.

    uv run python tests/benchmarks/bench_estimate.py [--spec specs/search_demo.toml] [--keep DIR]

In a fresh run root: `python -m runner SPEC --dry-run --calibrate` (its expected device time), then
`python -m runner SPEC` (timed from the command to its exit). Target: the estimate within 30 % of the measured time.
The run starts after the calibration, so both see the same prepared data and solver cache; the machine should be
otherwise idle (the two halves are minutes apart).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.30


def runner(*args: str) -> tuple[str, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return done.stdout, time.monotonic() - start


def expected_seconds(out: str) -> float:
    match = re.search(r"Expected device time: ([0-9.]+) device-hours", out)
    if match is None:
        raise SystemExit(f"no estimate in the dry run's output:\n{out}")
    return float(match.group(1)) * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/search_demo.toml")
    parser.add_argument("--keep", help="run root to keep (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        dry, calibration = runner(args.spec, "--dry-run", "--calibrate", "--root", str(root))
        estimate = expected_seconds(dry)
        _, measured = runner(args.spec, "--root", str(root))
    ratio = estimate / measured
    print(f"{args.spec}: estimate {estimate:.0f} s (calibration took {calibration:.0f} s), measured {measured:.0f} s: "
          f"{ratio:.2f}x; target within {TARGET:.0%} -> {'met' if abs(ratio - 1) <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()

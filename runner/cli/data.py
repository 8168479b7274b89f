"""`python -m runner data pcam [--root DIR] [--check] [--mirror URL]`: get PatchCamelyon, or verify a copy.

In runner/cli/, not runner/data/, on purpose: the parser is built for every command, and importing anything in runner.data loads
torch and h5py (its __init__ does); this module uses the standard library until the command runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from runner.exit_codes import EXIT_BAD_INPUT, EXIT_DISK_FULL, EXIT_INTERRUPTED, EXIT_OK

MIRROR_ENV = "RUNNER_PCAM_MIRROR"
HELP = """Download PatchCamelyon (six .h5.gz files, 8.0 GB, and the slide tables) from Zenodo record 2546921,
verify every file against its published md5, decompress each once (9.1 GB of .h5; 17 GB free needed), and check
counts, shapes and labels. An interrupted download resumes where it stopped. The folder is the one a spec's
data.root names; when a spec has no data.root, the runner reads the default folder: $RUNNER_DATA_DIR/pcam, else
~/.cache/equivariant-pathology-runner/pcam. Exit 2 names a missing, wrong or swapped file; exit 5: not enough
free space."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="download and verify a dataset: data pcam [--root DIR] [--check]",
                          description=HELP)
    data.add_argument("dataset", choices=("pcam",), help="the dataset (PatchCamelyon)")
    data.add_argument("--root", default=None,
                      help="the dataset folder, as in data.root (default $RUNNER_DATA_DIR/pcam, else "
                           "~/.cache/equivariant-pathology-runner/pcam)")
    data.add_argument("--check", action="store_true",
                      help="verify the files already in the folder (.h5 or .h5.gz) and download nothing")
    data.add_argument("--mirror", default=os.environ.get(MIRROR_ENV) or None,
                      help=f"base URL of a folder holding the published file names (env {MIRROR_ENV}); "
                           "default: Zenodo")
    data.add_argument("--retries", type=int, default=3,
                      help="times a dropped connection is resumed before giving up (default 3)")


def cmd_data(args: argparse.Namespace, registry: object = None) -> int:
    """Run `data pcam`; `registry` replaces the published checksums and counts (tests serve their own files)."""
    from runner.data import pcam
    from runner.data.fetch import PCAM, Fetch, FetchError, check_folder, fetch_pcam
    from runner.faults import DiskFull

    folder = Path(args.root).expanduser() if args.root else pcam.default_root()
    job = Fetch(folder, registry or PCAM, args.mirror, args.retries)
    try:
        if args.check:
            for line in check_folder(folder, job.registry):
                print(line)
            print(f"{folder}: every PatchCamelyon file matches its published checksum")
        else:
            fetch_pcam(job)
            print(f"PatchCamelyon is ready in {folder}" + ("" if args.root else " (the default: no data.root needed)"))
    except (FetchError, pcam.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DiskFull as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DISK_FULL
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the download", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK

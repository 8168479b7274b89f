"""escnn, loaded once per process, with its expensive solver results cached in memory and on disk.

A cold G-CNN build spends nearly all its time in escnn's Clebsch-Gordan and irrep-restriction solvers (seconds per
group). escnn memoises them with joblib inside its own site-packages folder, which is empty in every fresh
virtualenv, possibly read-only, and slow even when warm: every call hashes its arguments and reads a file
(hundreds of calls per layer). `load_escnn` replaces those functions with `DiskMemo`: a dict in memory, saved as
one pickle per function under `EQUIV_CACHE_DIR` (default `~/.cache/equiv`). A rebuild, in this process or a new
one, then skips the solvers and costs a few per cent of a cold build.
"""
from __future__ import annotations

import atexit
import copy
import os
import pickle
import sys
import tempfile
import types
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

CACHE_ENV = "EQUIV_CACHE_DIR"

# (module, function) pairs escnn memoises with joblib and that planar groups reach.
_MEMOISED = (
    ("escnn.group._clebsh_gordan", "_clebsh_gordan_tensor"),
    ("escnn.group._clebsh_gordan", "_find_tensor_decomposition"),
    ("escnn.group.irrep", "_restrict_irrep"),
)


def cache_dir() -> Path:
    """Where equiv persists expensive results: $EQUIV_CACHE_DIR, else ~/.cache/equiv."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "equiv").expanduser()


class DiskMemo:
    """Memoise a function of hashable arguments in a dict, persisted to one pickle file by `save()`.

    Results are deep-copied on the way out because escnn's joblib cache handed out fresh objects.
    Saving merges with what other processes saved meanwhile and replaces the file atomically.
    """

    def __init__(self, function: Callable[..., Any], path: Path) -> None:
        self.function = function
        self.path = path
        self.results: dict[Any, Any] = _read(path)
        self.unsaved = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        try:
            hash(key)
        except TypeError:
            return self.function(*args, **kwargs)
        if key not in self.results:
            self.results[key] = self.function(*args, **kwargs)
            self.unsaved += 1
        return copy.deepcopy(self.results[key])

    def save(self) -> None:
        if not self.unsaved:
            return
        merged = {**_read(self.path), **self.results}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                pickle.dump(merged, file, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.results, self.unsaved = merged, 0


def _read(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as file:
            return pickle.load(file)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
        # Missing or unreadable (e.g. written by another escnn version): recompute.
        return {}


@lru_cache(maxsize=None)
def load_escnn() -> types.ModuleType:
    """Import escnn (quietly), make its solvers deterministic and memoise them under `cache_dir()`.

    Returns the `escnn` package; `escnn.nn`, `escnn.gspaces` and `escnn.group` are imported.
    """
    # py3nj is only needed for SO(3); escnn warns at import when it is absent.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import escnn
        import escnn.group
        import escnn.gspaces
        import escnn.nn
    _use_exact_svd()
    _install_memos(cache_dir() / f"escnn-{escnn.__version__}")
    return escnn


def save_escnn_cache() -> None:
    """Write new solver results to disk (also done at exit); a no-op when nothing is new."""
    for memo in _memos():
        memo.save()


def _use_exact_svd() -> None:
    # escnn 1.0.11 hands an np.matrix to scikit-learn's randomized_svd, which scikit-learn >= 1.6 rejects, so D_N
    # and O2 bases fail to build. Without it escnn falls back to scipy's exact SVD, which is also deterministic.
    numerical = sys.modules["escnn.group._numerical"]
    numerical.randomized_svd = None


def _install_memos(location: Path) -> None:
    for module_name, function_name in _MEMOISED:
        module = sys.modules[module_name]
        joblib_memoised = getattr(module, function_name)
        original = getattr(joblib_memoised, "func", joblib_memoised)
        setattr(module, function_name, DiskMemo(original, location / f"{function_name}.pkl"))
    atexit.register(save_escnn_cache)


def _memos() -> list[DiskMemo]:
    found = (getattr(sys.modules.get(m), f, None) for m, f in _MEMOISED)
    return [memo for memo in found if isinstance(memo, DiskMemo)]

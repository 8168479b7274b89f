"""Shared test settings: hypothesis profiles and the py3nj warning filter.

Profiles: `ci` (default; few examples so `nox -s tests` stays fast on 2 cores), `dev`, `thorough` (`nox -s heavy`).
Pick one with HYPOTHESIS_PROFILE.
"""
from __future__ import annotations

import os
import tempfile
import warnings

from hypothesis import HealthCheck, settings

warnings.filterwarnings("ignore", message=".*py3nj.*")

# escnn's solver memo is process-wide and finds its folder when escnn first loads, while `python -m runner` run
# in-process sets EQUIV_CACHE_DIR to its root (setdefault): pin the folder once, so test order cannot split them.
from equiv.build_cache import cache_dir  # noqa: E402

os.environ.setdefault("EQUIV_CACHE_DIR", str(cache_dir()))

# Runners on one host divide its cores through a registry of live workers (runner/executors/registry.py), and a
# job's thread count shapes its arithmetic: give this test session a registry of its own, so another session's
# runners on the same host cannot change the metrics the resume tests compare bit for bit.
os.environ.setdefault("RUNNER_REGISTRY_DIR", tempfile.mkdtemp(prefix="runner-registry-"))

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=6, deadline=None, suppress_health_check=_SLOW_OK, derandomize=True)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("thorough", max_examples=100, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

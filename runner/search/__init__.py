"""Studies: hyperparameter search (Optuna samplers rebuilt from the database), pruning and the final evaluation.

A search is not a second scheduler: it turns the spec and the database's results into ordinary jobs (new trials,
final-evaluation jobs) and statuses (`pruned`). `plan` and `prune_check` are all the worker calls.
"""
from runner.search.plan import Plan, current, plan, prune_check

__all__ = ["Plan", "current", "plan", "prune_check"]

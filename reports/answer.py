"""The answer first: one paragraph, generated from the final table, that answers the experiment's question in words.

Does building the symmetry in beat learning it? The paragraph names the best model (highest mean headline test
metric), its difference to the plain CNN with the interval and the Holm-adjusted p, whether it also beats the
strongest plain competitor (the best of plain, augmented and augmented + TTA CNNs), and what it costs. Where the
evidence is weak (not significant after Holm, or fewer than MIN_SEEDS seeds) it says so, and how many paired seeds
would settle it.
"""
from __future__ import annotations

import math

import pandas as pd

from reports import stats
from reports.final import cost_words, p_words
from reports.tables import PLAIN_FAMILIES, Scoring, _missing, default_scoring

MIN_SEEDS = 5  # below this a seed-to-seed spread is itself too uncertain to lean on


def answer(table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> str:
    """The paragraph, or '' when there is no final evaluation yet. The best model has the highest mean headline
    metric (the lowest for nll)."""
    if table.empty:
        return ""
    scoring = scoring or default_scoring(task)
    headline = scoring.test
    base = table["baseline"].iloc[0]
    if base is None:
        return ("No plain model (family cnn or unet) among the final models, so this experiment cannot say whether "
                "building the symmetry in beats a plain CNN.")
    means = table[f"{headline}_mean"]
    if means.isna().all():
        return ""
    best = table.loc[scoring.best_of(means)]
    opening = f"Answer: {best['name']} has the best mean test {scoring.word}, {best[f'{headline}_mean']:.3f}"
    if best["family"] in PLAIN_FAMILIES:
        return _plain_wins(table, best, opening, scoring)
    parts = [opening + _versus_baseline(best, base, headline), _versus_strongest(table, best, scoring),
             _cost(best, base), _weak(table, best, headline)]
    return " ".join(part for part in parts if part)


def _untested(ci_low: float) -> str:
    """Why a difference has no p-value: one paired seed, or the same difference on every seed (no spread)."""
    if _missing(ci_low):
        return "too few paired seeds to test"
    return "the same difference on every paired seed: no spread to test"


def _versus_baseline(best: pd.Series, base: str, headline: str) -> str:
    if int(best["n_pairs"]) < 2:
        return f"; against {base} it is {best[f'delta_{headline}']:+.3f} on too few paired seeds to test."
    if _missing(best["p_holm"]):
        return f"; against {base} it is {best[f'delta_{headline}']:+.3f}, {_untested(best['delta_ci_low'])}."
    verdict = ("which survives Holm's correction" if best["p_holm"] < stats.ALPHA
               else "which does not survive Holm's correction")
    return (f": {best[f'delta_{headline}']:+.3f} over {base} (95 % CI [{best['delta_ci_low']:+.3f}, "
            f"{best['delta_ci_high']:+.3f}], {p_words('p_Holm', best['p_holm'])} over the {int(best['holm_m'])} "
            f"comparisons with {base}, {int(best['n_pairs'])} paired seeds), {verdict}.")


def _versus_strongest(table: pd.DataFrame, best: pd.Series, scoring: Scoring) -> str:
    strongest, base, task = best["strongest"], best["baseline"], scoring.task
    if strongest is None:
        return ""
    tta_note = "" if table["tta"].any() or task != "classification" else (
        " No TTA baseline was recorded (jobs from before TTA was measured), so the strongest plain model may be "
        "missing.")
    if strongest == base:
        return f"No augmented or TTA plain model scores higher than {base}.{tta_note}"
    strong = table.loc[table["name"] == strongest].iloc[0]
    head = (f"Against the strongest plain competitor, {strongest} ({strong[f'{scoring.test}_mean']:.3f}), "
            f"it is {best['delta_vs_strongest']:+.3f}")
    if _missing(best["p_holm_vs_strongest"]):
        return f"{head} ({_untested(best['strongest_ci_low'])}).{tta_note}"
    gain = best["delta_vs_strongest"] if scoring.maximize else -best["delta_vs_strongest"]
    survives = ("it still wins" if best["p_holm_vs_strongest"] < stats.ALPHA and gain > 0
                else "no evidence that it beats it")
    return (f"{head} (95 % CI [{best['strongest_ci_low']:+.3f}, {best['strongest_ci_high']:+.3f}], "
            f"{p_words('p_Holm', best['p_holm_vs_strongest'])}): {survives}.{tta_note}")


def _cost(best: pd.Series, base: str) -> str:
    words = cost_words(best, base).removeprefix(", ")
    return f"It costs {words.removeprefix('at ')}." if words else ""


def _weak(table: pd.DataFrame, best: pd.Series, headline: str) -> str:
    """Say so when the headline claim rests on weak evidence, with the seeds that would settle it."""
    reasons = []
    if not best["p_holm"] < stats.ALPHA:
        reasons.append("the difference to the plain model is not significant after correction")
    if int(best["n_seeds"]) < MIN_SEEDS:
        reasons.append(f"only {int(best['n_seeds'])} seeds")
    if not reasons:
        return ""
    text = f"The evidence is weak: {' and '.join(reasons)}"
    seeds = best["seeds_for_power"]
    if not _missing(seeds) and math.isfinite(seeds):
        text += (f"; at the observed spread about {int(seeds)} paired seeds would detect a true difference of "
                 f"{best[f'delta_{headline}']:+.3f} at 80 % power")
    return text + "."


def _plain_wins(table: pd.DataFrame, best: pd.Series, opening: str, scoring: Scoring) -> str:
    """A plain model is best: say by how much it leads the best equivariant model, against which it was compared."""
    equivariant = table[~table["family"].isin(PLAIN_FAMILIES)]
    means = equivariant[f"{scoring.test}_mean"].dropna()
    if means.empty:
        return f"{opening}; there is no equivariant model to compare it with."
    rival = equivariant.loc[scoring.best_of(means)]
    text = f"{opening}: no equivariant model beats the plain models here. The best one, {rival['name']}, is"
    if _missing(rival["p_holm_vs_strongest"]):
        return f"{text} {rival['delta_vs_strongest']:+.3f} against it ({_untested(rival['strongest_ci_low'])})."
    return (f"{text} {rival['delta_vs_strongest']:+.3f} against it (95 % CI [{rival['strongest_ci_low']:+.3f}, "
            f"{rival['strongest_ci_high']:+.3f}], {p_words('p_Holm', rival['p_holm_vs_strongest'])})"
            f"{cost_words(rival, rival['baseline'])}.")

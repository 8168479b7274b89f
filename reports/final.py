"""The final evaluation table: each model's best searched configuration re-run with the final seeds, with statistics.

A model is one final trial (its stream, e.g. "final family=gcnn group=D4 geometric=none"); its rows are the done jobs
linked to that trial. A model whose jobs recorded D4 test-time augmentation (runner/extra_metrics.py: every model
not already invariant to the eight rot90/flips) gets a second row, "<name> +TTA", with the TTA test metrics and
evaluation cost of the same jobs: the strongest cheap competitor to a G-CNN is a plain CNN averaged over D4.

Per model: test metrics as mean ± std and the 95 % t interval over seeds; the mean ECE; against the plain baseline
the headline metric's paired difference with its 95 % t interval, the paired t-test's p-value and that p-value
Holm-adjusted over the family "every other row against the baseline" (see reports.stats); the cost ratios to the
baseline. Against the strongest plain row (highest mean headline metric among the plain family's rows, with or
without augmentation and TTA), each equivariant row's paired difference, Holm-adjusted over the equivariant rows.
The baseline is the plain CNN (family cnn or unet, group trivial, no geometric augmentation, no TTA), else the first
plain-family model; without one the differences are NaN and the words say why.
The headline metric is the experiment's (reports.tables.Scoring: eval.metric, AUC by default); for nll lower is
better, so "strongest" and "best" mean lowest there, and a negative difference is a gain.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reports import stats
from reports.tables import (
    COST_METRICS,
    ERROR_METRICS,
    PLAIN_FAMILIES,
    ROW_KEYS,
    Scoring,
    _HEADERS,
    _count,
    _describe,
    _missing,
    _order_key,
    default_scoring,
    display_name,
)

TTA_SUFFIX = " +TTA"
CALIBRATION_BINS = 10
EQUAL_PARAMS = 0.05  # parameter counts within 5 % are "equal" in the words (G-CNNs are matched within 10 %)
_PATCH_CI = ("test_auc", "test_auc_low", "test_auc_high")


def final_table(jobs: pd.DataFrame, trials: pd.DataFrame, task: str, fields: list[str],
                scoring: Scoring | None = None) -> pd.DataFrame:
    """One row per final model, plus a +TTA row per model with TTA metrics (numeric; what the CSV holds).
    `fields`: the searched config keys to describe.

    Columns: name, family, group, augment.geometric, tta, stream, hyperparameters, n_seeds, seeds, params,
    `<valid>_mean`, per test metric `_mean`, `_std`, `_ci_low`, `_ci_high`; test_ece_mean; baseline, n_pairs,
    `delta_<headline>`, delta_ci_low, delta_ci_high, delta_std, p_value, p_holm, holm_m (the family's size),
    seeds_for_power; train_time_ratio, eval_time_ratio, params_ratio (to the baseline); strongest,
    delta_vs_strongest, strongest_ci_low, strongest_ci_high, p_vs_strongest, p_holm_vs_strongest; the mean of each
    error and cost metric; patch_ci_seed, test_auc_patch, test_auc_patch_low, test_auc_patch_high; job_ids.
    `scoring`: default_scoring(task) if not given.
    """
    scoring = scoring or default_scoring(task)
    headline = scoring.test
    if headline not in jobs.columns:
        return pd.DataFrame()
    done = jobs[(jobs["status"] == "done") & jobs[headline].notna()]
    # The job's own `stream` is its search stream; here a row's stream is the final trial it belongs to.
    finals = trials[trials["role"] == "final"][["stream", "job_id"]].merge(
        done.drop(columns=["stream"], errors="ignore"), on="job_id")
    if finals.empty:
        return pd.DataFrame()
    finals = with_tta_rows(finals, scoring)
    rows = [_model_row(stream, part, scoring) for stream, part in finals.groupby("stream", sort=False)]
    table = pd.DataFrame(rows)
    table["hyperparameters"] = _describe(finals, [f for f in fields if f in finals.columns], "{:.3g}").reindex(
        table.pop("config_key")).values
    table = table.sort_values([*ROW_KEYS, "stream"], key=_order_key, kind="mergesort").reset_index(drop=True)
    table["name"] = _unique_names(table)
    return _with_differences(table, finals, scoring)


def with_tta_rows(finals: pd.DataFrame, scoring: Scoring) -> pd.DataFrame:
    """`finals` plus a copy of every job that recorded TTA metrics, in its own stream '<stream> +TTA', its test
    metrics and evaluation speed replaced by the TTA ones; measures of the single prediction are blanked."""
    task = scoring.task
    finals = finals.assign(tta=False)
    if task != "classification" or "test_tta_auc" not in finals.columns:
        return finals
    copies = finals[finals["test_tta_auc"].notna()].copy()
    if copies.empty:
        return finals
    for metric in (*scoring.test_metrics, "test_ece"):
        copies[metric] = copies.get(metric.replace("test_", "test_tta_", 1), math.nan)
    copies["eval_images_per_s"] = copies.get("tta_eval_images_per_s", math.nan)
    blank = [c for c in copies.columns if c.startswith("calib_bin") or c in (*ERROR_METRICS[task], *_PATCH_CI[1:])]
    copies[blank] = math.nan
    copies["stream"] = copies["stream"] + TTA_SUFFIX
    copies["tta"] = True
    return pd.concat([finals, copies], ignore_index=True)


def _model_row(stream: str, part: pd.DataFrame, scoring: Scoring) -> dict:
    task = scoring.task
    part = part.reindex(columns=list(dict.fromkeys([*part.columns, *scoring.test_metrics, *ERROR_METRICS[task],
                                                    *COST_METRICS, scoring.valid, "test_ece", *_PATCH_CI])))
    first = part.iloc[0]
    row = {"stream": stream, **{key: first[key] for key in ROW_KEYS}, "tta": bool(first["tta"]),
           "config_key": first["config_key"], "n_seeds": part["seed"].nunique(),
           "seeds": " ".join(map(str, sorted(part["seed"].astype(int)))),
           "params": part["params"].astype(float).mean(),
           f"{scoring.valid}_mean": part[scoring.valid].mean()}
    for metric in scoring.test_metrics:
        summary = stats.summarize(part[metric].to_numpy(dtype=float))
        row.update({f"{metric}_mean": summary.mean, f"{metric}_std": summary.std, f"{metric}_ci_low": summary.low,
                    f"{metric}_ci_high": summary.high})
    row["test_ece_mean"] = part["test_ece"].astype(float).mean()
    row.update({metric: part[metric].mean() for metric in (*ERROR_METRICS[task], *COST_METRICS)})
    row.update(_patch_interval(part))
    row["job_ids"] = tuple(sorted(part["job_id"].astype(int)))
    return row


def _patch_interval(part: pd.DataFrame) -> dict:
    """Test AUC of the model's lowest-seed job with its bootstrap interval over test patches (test-set noise for one
    trained model, not seed noise)."""
    first = part.sort_values("seed").iloc[0]
    groups = first.get("test_auc_groups", float("nan"))  # set when whole slides were resampled
    return {"patch_ci_seed": int(first["seed"]), "test_auc_patch": first["test_auc"],
            "test_auc_patch_low": first["test_auc_low"], "test_auc_patch_high": first["test_auc_high"],
            "test_auc_patch_groups": groups}


def _unique_names(table: pd.DataFrame) -> list[str]:
    """'gcnn D4', 'cnn +d4 +TTA'; the final trial's own name where [final].per makes two models share a short name."""
    names = [display_name(f, g, a) + (TTA_SUFFIX if tta else "")
             for f, g, a, tta in zip(table["family"], table["group"], table["augment.geometric"], table["tta"])]
    if len(set(names)) == len(names):
        return names
    return [stream.removeprefix("final ") for stream in table["stream"]]


def baseline_index(table: pd.DataFrame) -> int | None:
    """The row of the plain CNN (or U-Net) without augmentation or TTA, else the first plain-family row, else None."""
    plain = table[table["family"].isin(PLAIN_FAMILIES) & ~table.get("tta", pd.Series(False, table.index))]
    exact = plain[(plain["group"] == "trivial") & (plain["augment.geometric"].isin(["none", "", None]))]
    for candidates in (exact, plain):
        if not candidates.empty:
            return int(candidates.index[0])
    return None


def strongest_index(table: pd.DataFrame, scoring: Scoring) -> int | None:
    """The plain-family row (with or without augmentation and TTA) with the best mean headline metric."""
    plain = table[table["family"].isin(PLAIN_FAMILIES)][f"{scoring.test}_mean"].dropna()
    return int(scoring.best_of(plain)) if not plain.empty else None


def _compare(table: pd.DataFrame, by_seed: dict, reference: int | None,
             members: pd.Series) -> tuple[list[stats.Difference], np.ndarray]:
    """Each row's paired difference to row `reference`, and Holm over the family of `members` rows (the others
    get NaN): one function for both families, so they are computed the same way."""
    if reference is None:
        return [stats.NO_DIFFERENCE] * len(table), np.full(len(table), np.nan)
    base = by_seed[table.at[reference, "stream"]]
    differences = [stats.paired(by_seed[s], base) if member and i != reference else stats.NO_DIFFERENCE
                   for i, (s, member) in enumerate(zip(table["stream"], members))]
    return differences, stats.holm([d.p_value for d in differences])


def _with_differences(table: pd.DataFrame, finals: pd.DataFrame, scoring: Scoring) -> pd.DataFrame:
    headline = scoring.test
    by_seed = {stream: part.groupby("seed")[headline].mean() for stream, part in finals.groupby("stream")}
    base = baseline_index(table)
    differences, holm = _compare(table, by_seed, base, pd.Series(True, table.index))
    table["baseline"] = table.at[base, "name"] if base is not None else None
    table["n_pairs"] = [d.n_pairs for d in differences]
    table[f"delta_{headline}"] = [d.mean for d in differences]
    table["delta_ci_low"] = [d.low for d in differences]
    table["delta_ci_high"] = [d.high for d in differences]
    table["delta_std"] = [d.std for d in differences]
    table["p_value"] = [d.p_value for d in differences]
    # One family: every row against the one baseline. Its size is the number of comparisons with a p-value.
    table["p_holm"] = holm
    table["holm_m"] = int(np.isfinite(holm).sum())
    table["seeds_for_power"] = [stats.seeds_for_power(d.mean, d.std) if not p < stats.ALPHA else math.nan
                                for d, p in zip(differences, holm)]
    table = _with_cost_ratios(table, base)
    strongest = strongest_index(table, scoring)
    against, holm_against = _compare(table, by_seed, strongest, ~table["family"].isin(PLAIN_FAMILIES))
    table["strongest"] = table.at[strongest, "name"] if strongest is not None else None
    table["delta_vs_strongest"] = [d.mean for d in against]
    table["strongest_ci_low"] = [d.low for d in against]
    table["strongest_ci_high"] = [d.high for d in against]
    table["p_vs_strongest"] = [d.p_value for d in against]
    table["p_holm_vs_strongest"] = holm_against
    return table[_columns(scoring)]


def _with_cost_ratios(table: pd.DataFrame, base: int | None) -> pd.DataFrame:
    """Training time, evaluation time (1 / images per second) and parameters as multiples of the baseline's."""
    if base is None:
        return table.assign(train_time_ratio=math.nan, eval_time_ratio=math.nan, params_ratio=math.nan)
    return table.assign(train_time_ratio=table["train_seconds"] / table.at[base, "train_seconds"],
                        eval_time_ratio=table.at[base, "eval_images_per_s"] / table["eval_images_per_s"],
                        params_ratio=table["params"] / table.at[base, "params"])


def _columns(scoring: Scoring) -> list[str]:
    headline, task = scoring.test, scoring.task
    columns = ["name", *ROW_KEYS, "tta", "stream", "hyperparameters", "n_seeds", "seeds", "params",
               f"{scoring.valid}_mean"]
    for metric in scoring.test_metrics:
        columns += [f"{metric}_{part}" for part in ("mean", "std", "ci_low", "ci_high")]
    return columns + ["test_ece_mean", "baseline", "n_pairs", f"delta_{headline}", "delta_ci_low", "delta_ci_high",
                      "delta_std", "p_value", "p_holm", "holm_m", "seeds_for_power", "train_time_ratio",
                      "eval_time_ratio", "params_ratio", "strongest", "delta_vs_strongest", "strongest_ci_low",
                      "strongest_ci_high", "p_vs_strongest", "p_holm_vs_strongest", *ERROR_METRICS[task],
                      *COST_METRICS, "patch_ci_seed", "test_auc_patch", "test_auc_patch_low",
                      "test_auc_patch_high", "test_auc_patch_groups", "job_ids"]


def reliability(table: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """Per model (not TTA rows) and calibration bin, pooled over its seeds: n, mean P(tumour) and observed tumour
    fraction; columns name, bin, n, p, y, ece (the model's mean ECE). Empty when no job recorded the bins."""
    if table.empty or not any(str(c).startswith("calib_bin") for c in jobs.columns):
        return pd.DataFrame(columns=["name", "bin", "n", "p", "y", "ece"])
    by_id = jobs.set_index("job_id")
    rows = []
    for _, row in table[~table["tta"]].iterrows():
        part = by_id.reindex(list(row["job_ids"]))
        for b in range(CALIBRATION_BINS):
            n = part.get(f"calib_bin{b}_n", pd.Series(dtype=float)).fillna(0).to_numpy(dtype=float)
            if n.sum() > 0:
                p = part[f"calib_bin{b}_p"].fillna(0).to_numpy(dtype=float)
                y = part[f"calib_bin{b}_y"].fillna(0).to_numpy(dtype=float)
                rows.append({"name": row["name"], "bin": b, "n": n.sum(), "p": float(n @ p / n.sum()),
                             "y": float(n @ y / n.sum()), "ece": row["test_ece_mean"]})
    return pd.DataFrame(rows, columns=["name", "bin", "n", "p", "y", "ece"])


# ---- display -------------------------------------------------------------------------------------------------

def format_final(table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> pd.DataFrame:
    """Display strings: 'mean ± std [low, high]' per test metric, ECE, the differences with their intervals, raw and
    Holm p (the header names the family), the cost against the baseline, errors and costs."""
    scoring = scoring or default_scoring(task)
    headline = scoring.test
    base = table["baseline"].iloc[0]
    out = pd.DataFrame({"Model": table["name"], "Hyperparameters": table["hyperparameters"].replace("", "–"),
                        "Seeds": table["n_seeds"].map(str), "Params": table["params"].map(_count)})
    for metric in scoring.test_metrics:
        out[f"{scoring.header(metric)} (95 % CI)"] = [
            _with_interval(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_ci_low"],
                           row[f"{metric}_ci_high"]) for _, row in table.iterrows()]
    if table["test_ece_mean"].notna().any():
        out["ECE"] = table["test_ece_mean"].map(lambda v: _missing(v) or f"{v:.3f}")
    word = scoring.word
    out[f"Δ {word} vs {base or 'plain'} (95 % CI)"] = [
        _delta_text(row[f"delta_{headline}"], row["delta_ci_low"], row["delta_ci_high"]) for _, row in table.iterrows()]
    out["p"] = [_p_text(p) for p in table["p_value"]]
    out[f"p Holm ({table['holm_m'].iloc[0]} vs {base})" if base is not None else "p Holm"] = [
        _p_text(p) for p in table["p_holm"]]
    strongest = table["strongest"].iloc[0]
    if strongest is not None and strongest != base:
        family = int(np.isfinite(table["p_holm_vs_strongest"]).sum())
        out[f"Δ {word} vs {strongest} (95 % CI)"] = [
            _delta_text(row["delta_vs_strongest"], row["strongest_ci_low"], row["strongest_ci_high"])
            for _, row in table.iterrows()]
        out[f"p Holm ({family} vs {strongest})"] = [_p_text(p) for p in table["p_holm_vs_strongest"]]
    if base is not None:
        out[f"Cost vs {base} (train, eval)"] = [_cost_text(t, e) for t, e in
                                                zip(table["train_time_ratio"], table["eval_time_ratio"])]
    for metric in (*ERROR_METRICS[task], *COST_METRICS):
        digits = "{:.2g}" if metric in ERROR_METRICS[task] else "{:,.0f}"
        out[_HEADERS[metric]] = table[metric].map(lambda v, d=digits: _missing(v) or d.format(v))
    return out


def _with_interval(mean: float, std: float, low: float, high: float) -> str:
    if _missing(mean):
        return "–"
    if _missing(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f} [{low:.3f}, {high:.3f}]"


def _delta_text(delta: float, low: float, high: float) -> str:
    if _missing(delta):
        return "–"
    return f"{delta:+.3f}" if _missing(low) else f"{delta:+.3f} [{low:+.3f}, {high:+.3f}]"


def _cost_text(train: float, evaluation: float) -> str:
    if _missing(train) and _missing(evaluation):
        return "–"
    return f"{_times(train)}, {_times(evaluation)}"


def _times(ratio: float) -> str:
    return "–" if _missing(ratio) else f"{ratio:.1f}x"


def _p_text(p: float) -> str:
    if _missing(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


# ---- the table in words --------------------------------------------------------------------------------------

def findings(table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> tuple[str, ...]:
    """One sentence per model against the baseline: difference, interval, raw and Holm p, cost; in words when the
    evidence is weak, with the paired seeds that would detect the observed difference at 80 % power."""
    if table.empty:
        return ()
    base = table["baseline"].iloc[0]
    if base is None:
        return ("No plain model (family cnn or unet) among the final models: no differences to report.",)
    scoring = scoring or default_scoring(task)
    return tuple(_sentence(row, base, scoring) for _, row in table.iterrows() if row["name"] != base)


def _sentence(row: pd.Series, base: str, scoring: Scoring) -> str:
    headline = scoring.test
    word, n = scoring.word, int(row["n_pairs"])
    if n == 0:
        return f"{row['name']}: no final seed in common with {base}, so no paired comparison."
    head = f"{row['name']}: {row[f'delta_{headline}']:+.3f} {word} vs {base}"
    if n == 1:
        return f"{head} on 1 paired seed: too few for an interval or a p-value."
    p, holm = row["p_value"], row["p_holm"]
    interval = f"95 % CI [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}]"
    cost = cost_words(row, base)
    if _missing(p):
        return (f"{head}, {interval} over {n} paired seeds{cost}; p undefined (the paired differences are all "
                "equal).")
    sentence = f"{head}, {interval}, {p_words('p', p)}, {p_words('p_Holm', holm)} over {n} paired seeds{cost}"
    if p >= stats.ALPHA:
        sentence += "; the interval includes zero: no evidence of a difference at this sample size"
    elif holm >= stats.ALPHA:
        # The t interval excludes zero exactly when p < 0.05; the family's correction is what can still undo it.
        sentence += (f"; significant alone but not after Holm's correction over the {int(row['holm_m'])} "
                     f"comparisons with {base}: weak evidence")
    return sentence + power_words(row, headline) + "."


def p_words(name: str, p: float) -> str:
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.2g}"


def cost_words(row: pd.Series, base: str) -> str:
    """', at 4.1x the training time and 6.7x the evaluation time of cnn, equal parameters' ('' without costs)."""
    parts = []
    if not _missing(row["train_time_ratio"]):
        parts.append(f"{row['train_time_ratio']:.1f}x the training time")
    if not _missing(row["eval_time_ratio"]):
        parts.append(f"{row['eval_time_ratio']:.1f}x the evaluation time")
    text = f", at {' and '.join(parts)} of {base}" if parts else ""
    ratio = row["params_ratio"]
    if not _missing(ratio):
        text += ", equal parameters" if abs(ratio - 1) <= EQUAL_PARAMS else f", {ratio:.2g}x the parameters"
    return text


def power_words(row: pd.Series, headline: str) -> str:
    """How many paired seeds would detect the observed difference at 80 % power, given the observed spread."""
    seeds = row["seeds_for_power"]
    if _missing(seeds):
        return ""
    spread = f"from the seed-to-seed spread of the differences (sd {row['delta_std']:.3f})"
    if math.isinf(seeds):
        return f"; {spread} no feasible number of seeds (> {stats.MAX_SEEDS:,}) would detect a difference this small"
    return (f"; {spread} about {int(seeds)} paired seeds would detect a true difference of "
            f"{row[f'delta_{headline}']:+.3f} at 80 % power")

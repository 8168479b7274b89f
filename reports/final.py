"""The final evaluation table: each model's best searched configuration re-run with the final seeds, with statistics.

A model is one final trial (its stream, e.g. "final family=gcnn group=D4 geometric=none"); its rows are the done jobs
linked to that trial. Per model: test metrics as mean ± std and the 95 % t interval over seeds; against the plain
baseline, the headline metric's paired difference with its 95 % t interval, the paired t-test's p-value and that
p-value Holm-adjusted over the family "every other model against the baseline" (see reports.stats). The baseline is
the plain CNN (family cnn or unet, group trivial, no geometric augmentation), else the first plain-family model;
without one the differences are NaN and the words say why.
"""
from __future__ import annotations

import math

import pandas as pd

from reports import stats
from reports.tables import (
    COST_METRICS,
    ERROR_METRICS,
    HEADLINE_METRIC,
    PLAIN_FAMILIES,
    ROW_KEYS,
    TEST_METRICS,
    VALIDATION_METRIC,
    _HEADERS,
    _count,
    _describe,
    _missing,
    _order_key,
    display_name,
)

_METRIC_WORD = {"test_auc": "AUC", "test_dice": "Dice"}


def final_table(jobs: pd.DataFrame, trials: pd.DataFrame, task: str, fields: list[str]) -> pd.DataFrame:
    """One row per final model (numeric; what the CSV holds). `fields`: the searched config keys to describe.

    Columns: name, family, group, augment.geometric, stream, hyperparameters, n_seeds, seeds, params,
    `<valid>_mean`, per test metric `_mean`, `_std`, `_ci_low`, `_ci_high`; baseline, n_pairs, `delta_<headline>`,
    delta_ci_low, delta_ci_high, p_value, p_holm, holm_m (the family's size); the mean of each error and cost metric; job_ids.
    """
    headline = HEADLINE_METRIC[task]
    if headline not in jobs.columns:
        return pd.DataFrame()
    done = jobs[(jobs["status"] == "done") & jobs[headline].notna()]
    # The job's own `stream` is its search stream; here a row's stream is the final trial it belongs to.
    finals = trials[trials["role"] == "final"][["stream", "job_id"]].merge(
        done.drop(columns=["stream"], errors="ignore"), on="job_id")
    if finals.empty:
        return pd.DataFrame()
    rows = [_model_row(stream, part, task) for stream, part in finals.groupby("stream", sort=False)]
    table = pd.DataFrame(rows)
    table["hyperparameters"] = _describe(finals, [f for f in fields if f in finals.columns], "{:.3g}").reindex(
        table.pop("config_key")).values
    table = table.sort_values([*ROW_KEYS, "stream"], key=_order_key, kind="mergesort").reset_index(drop=True)
    table["name"] = _unique_names(table)
    return _with_differences(table, finals, task)


def _model_row(stream: str, part: pd.DataFrame, task: str) -> dict:
    part = part.reindex(columns=list(dict.fromkeys([*part.columns, *TEST_METRICS[task], *ERROR_METRICS[task],
                                                    *COST_METRICS, VALIDATION_METRIC[task]])))
    first = part.iloc[0]
    row = {"stream": stream, **{key: first[key] for key in ROW_KEYS}, "config_key": first["config_key"],
           "n_seeds": part["seed"].nunique(),
           "seeds": " ".join(map(str, sorted(part["seed"].astype(int)))),
           "params": part["params"].astype(float).mean(),
           f"{VALIDATION_METRIC[task]}_mean": part[VALIDATION_METRIC[task]].mean()}
    for metric in TEST_METRICS[task]:
        summary = stats.summarize(part[metric].to_numpy(dtype=float))
        row.update({f"{metric}_mean": summary.mean, f"{metric}_std": summary.std, f"{metric}_ci_low": summary.low,
                    f"{metric}_ci_high": summary.high})
    row.update({metric: part[metric].mean() for metric in (*ERROR_METRICS[task], *COST_METRICS)})
    row["job_ids"] = tuple(sorted(part["job_id"].astype(int)))
    return row


def _unique_names(table: pd.DataFrame) -> list[str]:
    """'gcnn D4'; the final trial's own name where [final].per makes two models share a short name."""
    names = [display_name(f, g, a) for f, g, a in zip(table["family"], table["group"], table["augment.geometric"])]
    if len(set(names)) == len(names):
        return names
    return [stream.removeprefix("final ") for stream in table["stream"]]


def baseline_index(table: pd.DataFrame) -> int | None:
    """The row of the plain CNN (or U-Net) without augmentation, else the first plain-family row, else None."""
    plain = table[table["family"].isin(PLAIN_FAMILIES)]
    exact = plain[(plain["group"] == "trivial") & (plain["augment.geometric"].isin(["none", "", None]))]
    for candidates in (exact, plain):
        if not candidates.empty:
            return int(candidates.index[0])
    return None


def _with_differences(table: pd.DataFrame, finals: pd.DataFrame, task: str) -> pd.DataFrame:
    headline = HEADLINE_METRIC[task]
    base = baseline_index(table)
    by_seed = {stream: part.groupby("seed")[headline].mean() for stream, part in finals.groupby("stream")}
    differences = [stats.paired(by_seed[stream], by_seed[table.at[base, "stream"]]) if base is not None
                   else stats.NO_DIFFERENCE for stream in table["stream"]]
    table["baseline"] = table.at[base, "name"] if base is not None else None
    table["n_pairs"] = [d.n_pairs for d in differences]
    table[f"delta_{headline}"] = [d.mean for d in differences]
    table["delta_ci_low"] = [d.low for d in differences]
    table["delta_ci_high"] = [d.high for d in differences]
    table["p_value"] = [d.p_value for d in differences]
    # One family: every model against the one baseline. Its size is the number of comparisons with a p-value.
    table["p_holm"] = stats.holm(table["p_value"])
    table["holm_m"] = int(table["p_holm"].notna().sum())
    columns = ["name", *ROW_KEYS, "stream", "hyperparameters", "n_seeds", "seeds", "params",
               f"{VALIDATION_METRIC[task]}_mean"]
    for metric in TEST_METRICS[task]:
        columns += [f"{metric}_{part}" for part in ("mean", "std", "ci_low", "ci_high")]
    columns += ["baseline", "n_pairs", f"delta_{headline}", "delta_ci_low", "delta_ci_high", "p_value",
                "p_holm", "holm_m", *ERROR_METRICS[task], *COST_METRICS, "job_ids"]
    return table[columns]


def format_final(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """Display strings: 'mean ± std [low, high]' per test metric, the difference with its interval, p, costs."""
    headline = HEADLINE_METRIC[task]
    base = table["baseline"].iloc[0]
    out = pd.DataFrame({"Model": table["name"], "Hyperparameters": table["hyperparameters"].replace("", "–"),
                        "Seeds": table["n_seeds"].map(str), "Params": table["params"].map(_count)})
    for metric in TEST_METRICS[task]:
        out[f"{_HEADERS[metric]} (95 % CI)"] = [
            _with_interval(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_ci_low"],
                           row[f"{metric}_ci_high"]) for _, row in table.iterrows()]
    word = _METRIC_WORD[headline]
    out[f"Δ {word} vs {base or 'plain'} (95 % CI)"] = [
        "–" if base is not None and name == base else _delta_text(row, headline)
        for name, (_, row) in zip(table["name"], table.iterrows())]
    out["p"] = [_p_text(p) for p in table["p_value"]]
    out[f"p Holm ({table['holm_m'].iloc[0]} vs {base})" if base is not None else "p Holm"] = [
        _p_text(p) for p in table["p_holm"]]
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


def _delta_text(row: pd.Series, headline: str) -> str:
    delta = row[f"delta_{headline}"]
    if _missing(delta):
        return "–"
    if _missing(row["delta_ci_low"]):
        return f"{delta:+.3f}"
    return f"{delta:+.3f} [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}]"


def _p_text(p: float) -> str:
    if _missing(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def findings(table: pd.DataFrame, task: str) -> tuple[str, ...]:
    """One sentence per model against the baseline, saying in words when the interval includes zero."""
    if table.empty:
        return ()
    base = table["baseline"].iloc[0]
    if base is None:
        return ("No plain model (family cnn or unet) among the final models: no differences to report.",)
    return tuple(_sentence(row, base, task) for _, row in table.iterrows() if row["name"] != base)


def _sentence(row: pd.Series, base: str, task: str) -> str:
    headline = HEADLINE_METRIC[task]
    word, n = _METRIC_WORD[headline], int(row["n_pairs"])
    if n == 0:
        return f"{row['name']}: no final seed in common with {base}, so no paired comparison."
    head = f"{row['name']}: {row[f'delta_{headline}']:+.3f} {word} vs {base}"
    if n == 1:
        return f"{head} on 1 paired seed: too few for an interval or a p-value."
    p, holm = row["p_value"], row["p_holm"]
    if _missing(p):
        return (f"{head}, 95 % CI [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}] over {n} paired seeds; "
                "p undefined (the paired differences are all equal).")
    sentence = (f"{head}, 95 % CI [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}], {_p_words('p', p)}, "
                f"{_p_words('p_Holm', holm)} over {n} paired seeds")
    if p >= stats.ALPHA:
        sentence += "; the interval includes zero: no evidence of a difference at this sample size"
    elif holm >= stats.ALPHA:
        # The t interval excludes zero exactly when p < 0.05; the family's correction is what can still undo it.
        sentence += (f"; significant alone but not after Holm's correction over the {int(row['holm_m'])} "
                     f"comparisons with {base}: weak evidence")
    return sentence + "."


def _p_words(name: str, p: float) -> str:
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.2g}"

"""Drift: does the traffic the served model sees still look like its test split? Each figure
comes with scipy's test and p-value (chi-square for the class mix, Kolmogorov-Smirnov for
image sizes, Mann-Whitney and Fisher for top-1 probabilities when a reference is recorded),
plus the accuracy on the requests people labelled."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.01  # a p-value below this is reported as drift


@dataclass(frozen=True)
class Reference:
    """What the traffic is compared with: the class mix (counts per class: the test split's
    predicted or true mix), the test crops' sizes and, if recorded, test top-1 probabilities."""

    class_counts: dict[str, float]
    widths: list[int]
    heights: list[int]
    top_probabilities: list[float] = field(default_factory=list)
    top_mean: float | None = None  # exact, when top_probabilities are bin midpoints
    top_bins: int = 0  # top_probabilities are the midpoints of this many bins; 0: exact


def expand(counts: dict[str, int] | list[int], values: list[float] | None = None
           ) -> list[float]:
    """A sample from counts: {value: count} (the keys as numbers), or a list of counts of
    values."""
    if isinstance(counts, dict):
        return [float(v) for v, n in counts.items() for _ in range(int(n))]
    return [float(v) for v, n in zip(values or [], counts, strict=True) for _ in range(int(n))]


def recorded(summary: dict | None) -> dict:
    """The Reference fields a model's drift_reference gives (model/evaluate.py
    drift_reference): top-1 probabilities as bin midpoints with their exact mean, widths and
    heights; {} when none was recorded."""
    if not summary:
        return {}
    counts = (summary.get("top_probability") or {}).get("counts") or []
    middles = [(i + 0.5) / len(counts) for i in range(len(counts))]
    found = {"widths": [int(v) for v in expand(summary.get("width") or {})],
             "heights": [int(v) for v in expand(summary.get("height") or {})]}
    if counts:
        found.update(top_probabilities=expand(counts, middles), top_bins=len(counts),
                     top_mean=summary["top_probability"].get("mean"))
    return {k: v for k, v in found.items() if v}


def binned(values: np.ndarray, bins: int) -> np.ndarray:
    """values in [0, 1] as the midpoints of their bins (bins of 1/bins, the last closed),
    as drift_reference records the reference."""
    index = np.minimum(np.floor(np.round(values * bins, 6)), bins - 1)
    return (index + 0.5) / bins


def since(log: pd.DataFrame, start: datetime | None, model: str | None = None) -> pd.DataFrame:
    """The log rows from start on (all when None), of model when given."""
    rows = log if start is None else log[log.time >= pd.Timestamp(start)]
    return rows[rows.model == model] if model else rows


def plain(value: object) -> object:
    """value with numpy numbers as Python ones (printed and stored as plain numbers)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _row(name: str, traffic: object, reference: object, statistic: float | None,
         p: float | None, test: str) -> dict:
    p = None if p is None or np.isnan(p) else float(p)
    return {"name": name, "traffic": plain(traffic), "reference": plain(reference),
            "test": test,
            "statistic": None if statistic is None else round(float(statistic), 4),
            "p_value": p, "drift": p is not None and p < ALPHA}


def class_mix(labels: pd.Series, reference: dict[str, float]) -> dict:
    """Chi-square goodness of fit of the predicted labels against the reference mix (half a
    count added to each reference class, so a class absent from it cannot divide by zero)."""
    names = sorted(reference)
    observed = labels.value_counts().reindex(names, fill_value=0).to_numpy(dtype=float)
    ref = np.array([reference[n] for n in names], dtype=float) + 0.5
    share = {n: round(float(v), 4) for n, v in zip(names, ref / ref.sum(), strict=True)}
    seen = {n: round(float(v / max(observed.sum(), 1)), 4)
            for n, v in zip(names, observed, strict=True)}
    if observed.sum() == 0 or len(names) < 2:
        return _row("class mix", seen, share, None, None, "chi-square")
    result = stats.chisquare(observed, ref / ref.sum() * observed.sum())
    return _row("class mix", seen, share, result.statistic, result.pvalue, "chi-square")


def _ks(name: str, traffic: pd.Series, reference: list[int]) -> dict:
    if traffic.empty or not reference:
        return _row(name, float(traffic.median()) if len(traffic) else None,
                    float(np.median(reference)) if reference else None, None, None,
                    "Kolmogorov-Smirnov")
    result = stats.ks_2samp(traffic.to_numpy(dtype=float), np.asarray(reference, dtype=float))
    return _row(name, float(traffic.median()), float(np.median(reference)), result.statistic,
                result.pvalue, "Kolmogorov-Smirnov")


def confidence(top: pd.Series, reference: list[float], reference_mean: float | None = None,
               bins: int = 0) -> list[dict]:
    """Mean top-1 probability (Mann-Whitney U) and the share under 0.5 (Fisher's exact test)
    against the reference's, or the figures alone when either side has none. A reference
    recorded in bins (bins > 0) is tested against the traffic in the same bins: a traffic of
    0.998s against a reference bin of [0.99, 1) at its midpoint 0.995 is no drift."""
    mean = round(float(top.mean()), 4) if len(top) else None
    low = round(float((top < 0.5).mean()), 4) if len(top) else None
    ref = np.asarray(reference, dtype=float)
    ref_mean = None if not len(ref) else round(float(
        ref.mean() if reference_mean is None else reference_mean), 4)
    ref_low = round(float((ref < 0.5).mean()), 4) if len(ref) else None
    if top.empty or not len(ref):
        return [_row("mean top-1 probability", mean, ref_mean, None, None, "Mann-Whitney U"),
                _row("share under 0.5", low, ref_low, None, None, "Fisher exact")]
    traffic = top.to_numpy(dtype=float)
    u = stats.mannwhitneyu(binned(traffic, bins) if bins else traffic, ref)
    table = [[int((top < 0.5).sum()), int((top >= 0.5).sum())],
             [int((ref < 0.5).sum()), int((ref >= 0.5).sum())]]
    fisher = stats.fisher_exact(table)
    return [_row("mean top-1 probability", mean, ref_mean, u.statistic, u.pvalue,
                 "Mann-Whitney U"),
            _row("share under 0.5", low, ref_low, fisher.statistic, fisher.pvalue,
                 "Fisher exact")]


def feedback_accuracy(log: pd.DataFrame, feedback: pd.DataFrame) -> dict:
    """How often the served top label matched the label people gave (latest per request)."""
    latest = feedback.sort_values("time").drop_duplicates("request_id", keep="last")
    joined = latest.merge(log[["request_id", "top_label"]], on="request_id")
    right = (joined.top_label.str.lower() == joined.label.str.lower()).sum()
    return {"labelled": len(joined),
            "accuracy": round(float(right / len(joined)), 4) if len(joined) else None}


def unsure(top: pd.Series, min_confidence: float) -> dict:
    """How many answers said "unsure" (top probability under the service's threshold)."""
    count = int((top < min_confidence).sum())
    return {"threshold": min_confidence, "count": count,
            "share": round(count / len(top), 4) if len(top) else None}


def drift(log: pd.DataFrame, feedback: pd.DataFrame, reference: Reference,
          min_confidence: float = 0.6) -> dict:
    """Every drift figure of the log rows against the reference, the feedback accuracy, and
    the unsure answers."""
    tests = [class_mix(log.top_label, reference.class_counts),
             *confidence(log.top_probability, reference.top_probabilities,
                         reference.top_mean, reference.top_bins),
             _ks("image width", log.width, reference.widths),
             _ks("image height", log.height, reference.heights)]
    return {"requests": len(log), "tests": tests, "drifted": [t["name"] for t in tests
                                                              if t["drift"]],
            "feedback": feedback_accuracy(log, feedback),
            "unsure": unsure(log.top_probability, min_confidence)}


def shown(value: object) -> str:
    """A figure as printed: plain numbers, a mix as (Car 0.5, Hamburger 0.5), none as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {shown(v)}" for k, v in value.items()) + ")"
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(plain(value))


def lines(summary: dict) -> list[str]:
    """The summary as plain text lines, one per test."""
    head = (f"{summary['requests']} requests to {summary.get('model') or 'any model'} since "
            f"{summary.get('since') or 'the log began'}")
    out = [head]
    for t in summary["tests"]:
        if t["p_value"] is not None:
            p = f"{t['p_value']:.3g}"
        elif t["reference"] is None:
            p = "n/a (no reference)"
        else:
            p = "n/a (no requests)" if not summary["requests"] else "n/a"
        flag = "  DRIFT" if t["drift"] else ""
        out.append(f"{t['name']}: traffic {shown(t['traffic'])}, reference "
                   f"{shown(t['reference'])}, {t['test']} p={p}{flag}")
    fb = summary["feedback"]
    out.append(f"feedback: {fb['labelled']} labelled requests, accuracy "
               f"{shown(fb['accuracy'])}")
    if summary.get("unsure"):
        found = summary["unsure"]
        out.append(f"unsure answers (top probability under {found['threshold']}): "
                   f"{found['count']} ({found['share']})")
    return out

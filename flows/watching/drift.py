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


def since(log: pd.DataFrame, start: datetime | None, model: str | None = None) -> pd.DataFrame:
    """The log rows from start on (all when None), of model when given."""
    rows = log if start is None else log[log.time >= pd.Timestamp(start)]
    return rows[rows.model == model] if model else rows


def _row(name: str, traffic: object, reference: object, statistic: float | None,
         p: float | None, test: str) -> dict:
    p = None if p is None or np.isnan(p) else float(p)
    return {"name": name, "traffic": traffic, "reference": reference, "test": test,
            "statistic": None if statistic is None else round(float(statistic), 4),
            "p_value": p, "drift": p is not None and p < ALPHA}


def class_mix(labels: pd.Series, reference: dict[str, float]) -> dict:
    """Chi-square goodness of fit of the predicted labels against the reference mix (half a
    count added to each reference class, so a class absent from it cannot divide by zero)."""
    names = sorted(reference)
    observed = labels.value_counts().reindex(names, fill_value=0).to_numpy(dtype=float)
    ref = np.array([reference[n] for n in names], dtype=float) + 0.5
    share = {n: round(float(v), 4) for n, v in zip(names, ref / ref.sum(), strict=True)}
    seen = {n: round(float(v) / max(observed.sum(), 1), 4)
            for n, v in zip(names, observed, strict=True)}
    if observed.sum() == 0 or len(names) < 2:
        return _row("class mix", seen, share, None, None, "chi-square")
    result = stats.chisquare(observed, ref / ref.sum() * observed.sum())
    return _row("class mix", seen, share, result.statistic, result.pvalue, "chi-square")


def _ks(name: str, traffic: pd.Series, reference: list[int]) -> dict:
    if traffic.empty or not reference:
        return _row(name, None, None, None, None, "Kolmogorov-Smirnov")
    result = stats.ks_2samp(traffic.to_numpy(dtype=float), np.asarray(reference, dtype=float))
    return _row(name, float(traffic.median()), float(np.median(reference)), result.statistic,
                result.pvalue, "Kolmogorov-Smirnov")


def confidence(top: pd.Series, reference: list[float]) -> list[dict]:
    """Mean top-1 probability (Mann-Whitney U) and the share under 0.5 (Fisher's exact test)
    against the reference's, or the traffic's figures alone when none is recorded."""
    mean = round(float(top.mean()), 4) if len(top) else None
    low = round(float((top < 0.5).mean()), 4) if len(top) else None
    if top.empty or not reference:
        return [_row("mean top-1 probability", mean, None, None, None, "Mann-Whitney U"),
                _row("share under 0.5", low, None, None, None, "Fisher exact")]
    ref = np.asarray(reference, dtype=float)
    u = stats.mannwhitneyu(top.to_numpy(dtype=float), ref)
    table = [[int((top < 0.5).sum()), int((top >= 0.5).sum())],
             [int((ref < 0.5).sum()), int((ref >= 0.5).sum())]]
    fisher = stats.fisher_exact(table)
    return [_row("mean top-1 probability", mean, round(float(ref.mean()), 4), u.statistic,
                 u.pvalue, "Mann-Whitney U"),
            _row("share under 0.5", low, round(float((ref < 0.5).mean()), 4),
                 fisher.statistic, fisher.pvalue, "Fisher exact")]


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
             *confidence(log.top_probability, reference.top_probabilities),
             _ks("image width", log.width, reference.widths),
             _ks("image height", log.height, reference.heights)]
    return {"requests": len(log), "tests": tests, "drifted": [t["name"] for t in tests
                                                              if t["drift"]],
            "feedback": feedback_accuracy(log, feedback),
            "unsure": unsure(log.top_probability, min_confidence)}


def lines(summary: dict) -> list[str]:
    """The summary as plain text lines, one per test."""
    head = (f"{summary['requests']} requests to {summary.get('model') or 'any model'} since "
            f"{summary.get('since') or 'the log began'}")
    out = [head]
    for t in summary["tests"]:
        p = "n/a (no reference)" if t["p_value"] is None else f"{t['p_value']:.3g}"
        flag = "  DRIFT" if t["drift"] else ""
        out.append(f"{t['name']}: traffic {t['traffic']}, reference {t['reference']}, "
                   f"{t['test']} p={p}{flag}")
    fb = summary["feedback"]
    out.append(f"feedback: {fb['labelled']} labelled requests, accuracy {fb['accuracy']}")
    if summary.get("unsure"):
        found = summary["unsure"]
        out.append(f"unsure answers (top probability under {found['threshold']}): "
                   f"{found['count']} ({found['share']})")
    return out

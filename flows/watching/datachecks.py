"""Data checks before training: compare a new dataset's profile with the promoted model's and
stop the run on an anomaly, as TFX's ExampleValidator does. Plain pandas: the checks compare
two small summaries, not table schemas."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from model.atomic import write_json

log = logging.getLogger(__name__)
PROFILE = "profile.json"  # beside crops.parquet, and in every trained model's metadata
REPORT = "datachecks.json"  # in <workspace>/summaries


class DataAnomaly(Exception):
    """The new dataset failed a data check; the report names every check."""


@dataclass(frozen=True)
class Thresholds:
    """How far a new dataset may move before the run stops (see Settings check_*)."""

    class_drop: float = 0.5
    download_failures: float = 0.2
    skip_rate: float = 0.2
    size_change: float = 0.5


@dataclass(frozen=True)
class Check:
    """One check: its old and new value, the threshold, and whether it passed."""

    name: str
    old: object
    new: object
    threshold: str
    ok: bool


def profile(table: pd.DataFrame, manifest: pd.DataFrame, skipped: dict[str, int]) -> dict:
    """The figures a later dataset is compared with: classes, crops per class, failure and
    skip rates, crop sizes and split leakage. Feedback rows are left out (they vary by week)."""
    if "Source" in table:
        table = table[table.Source != "feedback"]
    images = len(manifest)
    boxes = len(table) + sum(skipped.values())
    splits_per_image = table.groupby("ImageID").Split.nunique()
    return {
        "classes": sorted(table.Class.unique().tolist()),
        "crops": len(table),
        "crops_per_class": {str(k): int(v) for k, v in table.Class.value_counts().items()},
        "download_failure_rate": round(float((manifest.Status != "ok").sum() / images), 4)
        if images else 0.0,
        "crop_skip_rate": round(sum(skipped.values()) / boxes, 4) if boxes else 0.0,
        "median_crop_width": float(table.Width.median()) if len(table) else None,
        "median_crop_height": float(table.Height.median()) if len(table) else None,
        "leaked_images": int((splits_per_image > 1).sum()),
    }


def _relative(old: float | None, new: float | None) -> float | None:
    return None if not old or new is None else abs(new / old - 1)


def compare(new: dict, old: dict | None, requested: list[str],
            limits: Thresholds = Thresholds()) -> list[Check]:
    """Every check of new against old (None: only the absolute checks) and the requested
    class names."""
    have = {c.lower() for c in new["classes"]}
    wanted = sorted(set(requested) | set(old["classes"] if old else []), key=str.lower)
    missing = [c for c in wanted if c.lower() not in have]
    checks = [Check("classes present", old and old["classes"], new["classes"],
                    "every requested and previous class", not missing)]
    floor = 1 - limits.class_drop
    for name in sorted(set(new["crops_per_class"]) | set(old["crops_per_class"] if old else [])):
        before = old["crops_per_class"].get(name) if old else None
        now = new["crops_per_class"].get(name, 0)
        ok = now > 0 and (before is None or now >= floor * before)
        checks.append(Check(f"crops of {name}", before, now,
                            f"> 0 and >= {floor:g} x old" if old else "> 0", ok))
    for key, limit in (("download_failure_rate", limits.download_failures),
                       ("crop_skip_rate", limits.skip_rate)):
        checks.append(Check(key.replace("_", " "), old and old.get(key), new[key],
                            f"<= {limit:g}", new[key] <= limit))
    for key in ("median_crop_width", "median_crop_height"):
        change = _relative(old and old.get(key), new[key])
        checks.append(Check(key.replace("_", " "), old and old.get(key), new[key],
                            f"relative change <= {limits.size_change:g}",
                            change is None or change <= limits.size_change))
    checks.append(Check("images in two splits", old and old.get("leaked_images"),
                        new["leaked_images"], "== 0", new["leaked_images"] == 0))
    return checks


def outcome(checks: list[Check], old_model: str | None, accepted: bool) -> dict:
    """The report of a set of checks, as written to JSON and shown in Prefect."""
    failed = [c.name for c in checks if not c.ok]
    return {"passed": not failed, "failed": failed, "accepted": bool(failed) and accepted,
            "compared_with": old_model, "checks": [asdict(c) for c in checks]}


def markdown(report: dict) -> str:
    """The report as a markdown section (a table of checks)."""
    against = f"the dataset of `{report['compared_with']}`" if report["compared_with"] else \
        "nothing (no previous dataset recorded: absolute checks only)"
    if report["passed"]:
        verdict = "all checks passed"
    elif report["accepted"]:
        verdict = f"**anomalies accepted**: {', '.join(report['failed'])}"
    else:
        verdict = f"**run stopped before training**: {', '.join(report['failed'])}"
    lines = ["## Data checks", "", f"Compared with {against}: {verdict}.", "",
             "| check | old | new | threshold | ok |", "|---|---|---|---|---|"]
    for c in report["checks"]:
        old = json.dumps(c["old"]) if isinstance(c["old"], list) else c["old"]
        new = json.dumps(c["new"]) if isinstance(c["new"], list) else c["new"]
        lines.append(f"| {c['name']} | {old} | {new} | {c['threshold']} | "
                     f"{'yes' if c['ok'] else '**NO**'} |")
    return "\n".join([*lines, ""])


def verdict(report: dict, path: Path) -> None:
    """Raise DataAnomaly for a failed, unaccepted report, pointing at its file."""
    if not report["passed"] and not report["accepted"]:
        raise DataAnomaly(f"data checks failed ({', '.join(report['failed'])}): run stopped "
                          f"before training; see {path}")


def write_report(report: dict, path: Path) -> Path:
    """Leave the report in the workspace (atomically) and return its path."""
    write_json(path, report)
    return path

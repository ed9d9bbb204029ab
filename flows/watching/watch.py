"""Watching the data and the served model: the new dataset against the promoted model's
(data checks before training), and the served traffic against the test split (drift)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd

from flows.openimages.dataset import CROPS_TABLE
from flows.pipeline.stages import summary_path
from flows.settings import Settings
from flows.watching.datachecks import PROFILE, Thresholds, compare, outcome, write_report
from model.atomic import write_json


def drift_summary(settings: Settings, chart: Path | None = None) -> dict:
    """Traffic since the last promotion (the prediction log) against the test split: the
    promoted model's predicted class mix on its own test split, the test crops' sizes; left
    in the workspace, and drawn to chart if given."""
    from flows.promotion.bentoml_store import promoted
    from flows.watching.drift import Reference, drift, since  # scipy loads only here
    from model.predictions import read_feedback, read_log

    record = promoted(settings.model_name) or {}
    tag, metadata = record.get("tag"), _stored_metadata(record.get("tag"))
    test = pd.read_parquet(settings.dataset_dir / CROPS_TABLE,
                           columns=["Class", "Split", "Width", "Height"]).query("Split == 'test'")
    metrics = metadata.get("metrics", {})
    if metrics.get("confusion_matrix") and metadata.get("class_names"):
        predicted = [sum(column) for column in zip(*metrics["confusion_matrix"], strict=True)]
        counts = dict(zip(metadata["class_names"], predicted, strict=True))
        mix = "the promoted model's predictions on its test split"
    else:
        counts, mix = test.Class.value_counts().to_dict(), "the test split's classes"
    reference = Reference({str(k): float(v) for k, v in counts.items()}, test.Width.tolist(),
                          test.Height.tolist(), metrics.get("test_top_probabilities", []))
    start = record.get("promoted_at")
    folder = log_location(settings)
    rows = since(read_log(folder), datetime.fromisoformat(start) if start else None, tag)
    summary = {"model": tag, "since": start, "log_dir": str(folder), "class_mix_of": mix,
               **drift(rows, read_feedback(folder), reference, settings.min_confidence)}
    write_json(summary_path(settings, "drift"), summary)
    if chart is not None:
        from model.report import drift_chart

        drift_chart(summary, chart)
    return summary


def log_location(settings: Settings) -> str | Path:
    """The prediction log's folder, or its s3:// prefix as it is (the parts of every replica
    of the service are read from there)."""
    location = settings.prediction_log_dir or ""
    return location if location.startswith("s3://") else settings.predictions_dir


def _stored_metadata(tag: str | None) -> dict:
    """A stored model's metadata, or {} when there is none."""
    if tag is None:
        return {}
    import bentoml

    try:
        return dict(bentoml.models.get(tag).info.metadata)
    except bentoml.exceptions.NotFound:
        return {}


def previous_profile(settings: Settings) -> tuple[str | None, dict | None]:
    """The promoted model's tag and the profile of the dataset it was trained on, as recorded
    with it; (tag or None, None) when nothing is promoted or nothing was recorded."""
    from flows.promotion.bentoml_store import promoted

    record = promoted(settings.model_name)
    if record is None:
        return None, None
    return record["tag"], _stored_metadata(record["tag"]).get("dataset_profile")


def check_dataset(settings: Settings) -> tuple[dict, Path]:
    """Check the built dataset against the promoted model's (absolute checks only when none
    is recorded); write the report to the workspace and return it with its path."""
    new = json.loads((settings.dataset_dir / PROFILE).read_text())
    tag, old = previous_profile(settings)
    limits = Thresholds(settings.check_max_class_drop, settings.check_max_download_failures,
                        settings.check_max_skip_rate, settings.check_max_size_change)
    checks = compare(new, old, settings.classes, limits)
    result = outcome(checks, tag if old else None, settings.accept_anomalies)
    path = write_report(result, summary_path(settings, "datachecks"))
    return result, path

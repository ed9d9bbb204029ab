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

SERVED_METADATA = "openimager-model.json"  # beside model.keras in a servable package folder


def drift_summary(settings: Settings, chart: Path | None = None,
                  model_path: Path | None = None) -> dict:
    """Traffic since the last promotion (the prediction log) against the promoted model's
    test split (its reference as recorded with it, else this workspace's test split); left
    in the workspace, and drawn to chart if given. With model_path (a published package's
    model/, as the service serves with OPENIMAGER_MODEL_PATH), that model's traffic against
    its own reference instead."""
    from flows.promotion.bentoml_store import promoted
    from flows.watching.drift import drift, since  # scipy loads only here
    from model.predictions import read_feedback, read_log

    record = promoted(settings.model_name) or {}
    tag, metadata = record.get("tag"), _stored_metadata(record.get("tag"))
    if model_path is not None:
        metadata = json.loads((model_path / SERVED_METADATA).read_text())
        if metadata.get("tag") != tag:  # served from the package, not promoted here
            record, tag = {}, metadata.get("tag")
    test = pd.read_parquet(settings.dataset_dir / CROPS_TABLE,
                           columns=["Class", "Split", "Width", "Height"]).query("Split == 'test'")
    reference, mix = reference_of(metadata, test)
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


def reference_of(metadata: dict, test: pd.DataFrame) -> tuple[object, str]:
    """The drift reference of a model from its metadata, as the BentoML store keeps it or as
    a published package's model/ carries it (openimager-model.json): its predictions on its
    test split (the confusion matrix), the test split's top-1 probabilities and crop sizes
    (drift_reference); what the model lacks comes from test, this workspace's test split.
    Returns the reference and what its class mix is."""
    from flows.watching.drift import Reference, recorded

    metrics = metadata.get("metrics") or {}
    if metrics.get("confusion_matrix") and metadata.get("class_names"):
        predicted = [sum(column) for column in zip(*metrics["confusion_matrix"], strict=True)]
        counts = dict(zip(metadata["class_names"], predicted, strict=True))
        mix = "the promoted model's predictions on its test split"
    else:
        counts, mix = test.Class.value_counts().to_dict(), "the test split's classes"
    found = {"widths": test.Width.tolist(), "heights": test.Height.tolist(),
             # models trained before drift_reference kept the whole list, if anything
             "top_probabilities": list(metrics.get("test_top_probabilities") or []),
             **recorded(metadata.get("drift_reference"))}
    return Reference({str(k): float(v) for k, v in counts.items()}, **found), mix


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

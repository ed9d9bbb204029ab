"""Each pipeline stage as a plain function of the settings; the Prefect flows only wire these."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from flows.datachecks import PROFILE, Thresholds, compare, outcome, profile, write_report
from flows.openimages.card import write_card
from flows.openimages.crop import CropOptions
from flows.openimages.cropjobs import CropRunner, process_pool
from flows.openimages.dataset import CROPS_TABLE, build_dataset, class_weights, dataset_id
from flows.openimages.download import ChunkRunner, DownloadOptions, download_images
from flows.openimages.feedback import FEEDBACK, add_feedback, labelled_images, without_feedback
from flows.openimages.select import images_of, select_boxes, summary
from flows.publishing.bundle import Published, publish
from flows.publishing.lineage import PROJECT_ROOT, code_state
from flows.publishing.registries import opened
from flows.selection import filters, metadata, validate_classes
from flows.settings import Settings
from model.atomic import write_json, write_parquet

log = logging.getLogger(__name__)


def select(settings: Settings) -> pd.DataFrame:
    """Select the boxes of the requested classes and write the selection to the workspace.
    The class names are resolved first, from the two small class files: a misspelt name
    fails before the box and image files (gigabytes upstream) are fetched."""
    validate_classes(settings)
    store = metadata(settings)
    boxes = select_boxes(store, store.ontology(), settings.classes, filters(settings))
    write_parquet(settings.workspace / "selection.parquet", boxes)
    return boxes


def download_options(settings: Settings) -> DownloadOptions:
    """The download options of the settings."""
    return DownloadOptions(
        sources=tuple(dict.fromkeys([settings.image_source, *settings.image_fallback_sources])),
        bucket=settings.image_bucket, endpoint_url=settings.image_endpoint_url,
        workers=settings.download_workers, per_host=settings.download_per_host,
        retries=settings.download_retries, connect_timeout=settings.download_timeout,
        read_timeout=settings.download_timeout, deadline=settings.download_deadline,
        chunk_images=settings.download_chunk_images, verify=settings.download_verify,
        placeholder_md5s=tuple(settings.download_placeholder_md5s),
    )


def download(settings: Settings, boxes: pd.DataFrame | None = None,
             run_chunks: ChunkRunner | None = None) -> pd.DataFrame:
    """Download the images of the selection (the workspace's unless given) into the shared
    store; write and return their manifest rows."""
    if boxes is None:
        boxes = pd.read_parquet(settings.workspace / "selection.parquet")
    manifest = download_images(images_of(boxes), settings.image_dir, download_options(settings),
                               run_chunks)
    write_parquet(settings.workspace / "downloads.parquet", manifest)
    return manifest


def refresh(settings: Settings, run_chunks: ChunkRunner | None = None) -> dict:
    """Select the boxes of the requested classes and download their images (chunks run by
    run_chunks, or on a thread pool here)."""
    boxes = select(settings)
    manifest = download(settings, boxes, run_chunks)
    counts = summary(boxes).set_index("Class")
    return {
        "classes": {c: {"mid": row.ClassMID, "boxes": int(row.boxes), "images": int(row.images)}
                    for c, row in counts.iterrows()},
        "boxes": len(boxes),
        "images": int(boxes.ImageID.nunique()),
        "downloads": manifest.Status.value_counts().to_dict(),
    }


def build(settings: Settings, run_chunks: CropRunner | None = None) -> dict:
    """Crop the selected boxes (chunks run by run_chunks, or on a local process pool) and
    split them by source image."""
    boxes = pd.read_parquet(settings.workspace / "selection.parquet")
    manifest = pd.read_parquet(settings.workspace / "downloads.parquet")
    options = CropOptions(settings.crop_size, settings.min_box_pixels, settings.crop_padding,
                          settings.crop_quality, min_detail=settings.crop_min_detail)
    table, skipped = build_dataset(boxes, manifest, settings.dataset_dir, options,
                                   settings.split_seed, settings.validation_fraction,
                                   settings.test_fraction,
                                   max_crops_per_class=settings.max_crops_per_class,
                                   run_chunks=run_chunks or process_pool(settings.crop_workers),
                                   chunk_images=settings.crop_chunk_images)
    table = join_feedback(settings, table)
    weights = class_weights(table)
    write_json(settings.dataset_dir / "class_weights.json", weights)
    write_card(settings.dataset_dir, table, skipped, {
        "openimages_version": settings.openimages_version, "seed": settings.split_seed,
        "filters": asdict(filters(settings)), "class_weights": weights,
        "expansion": boxes.groupby("Class").LabelDisplayName.agg(
            lambda names: ", ".join(sorted(set(names)))).to_dict(),
        # The bundled sample's photos live under the reserved .invalid domain.
        "synthetic": bool(boxes.OriginalURL.fillna("").str.contains(r"\.invalid/").all()),
    })
    summary = {
        "dataset_id": dataset_id(table),
        "crops": len(table),
        "images": int(table.ImageID.nunique()),
        "crops_per_class": table.Class.value_counts().sort_index().to_dict(),
        "crops_per_split": table.Split.value_counts().sort_index().to_dict(),
        "crops_per_class_split": {c: g.Split.value_counts().sort_index().to_dict()
                                  for c, g in table.groupby("Class")},
        "skipped": skipped.Status.value_counts().to_dict(),
        "feedback_crops": int((table.Source == FEEDBACK).sum()),
    }
    write_json(settings.dataset_dir / PROFILE, profile(table, manifest, summary["skipped"]))
    write_json(summary_path(settings, "build"), summary)
    return summary


def join_feedback(settings: Settings, table: pd.DataFrame) -> pd.DataFrame:
    """With use_feedback, add the served images people labelled to the train split and
    rewrite the crops table; else mark every row's Source as Open Images."""
    from model.predictions import read_feedback, read_log

    images = pd.DataFrame()
    if settings.use_feedback:
        folder = settings.predictions_dir
        images = labelled_images(read_log(folder), read_feedback(folder), folder / "images",
                                 sorted(table.Class.unique()))
    table = add_feedback(table, images, settings.dataset_dir / "crops", settings.crop_size,
                         settings.crop_quality)
    write_parquet(settings.dataset_dir / CROPS_TABLE, table)
    return table


def drift_summary(settings: Settings, chart: Path | None = None) -> dict:
    """Traffic since the last promotion (the prediction log) against the test split: the
    promoted model's predicted class mix on its own test split, the test crops' sizes; left
    in the workspace, and drawn to chart if given."""
    from flows.drift import Reference, drift, since  # scipy loads only here
    from flows.model_store import promoted
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
    folder = settings.predictions_dir
    rows = since(read_log(folder), datetime.fromisoformat(start) if start else None, tag)
    summary = {"model": tag, "since": start, "log_dir": str(folder), "class_mix_of": mix,
               **drift(rows, read_feedback(folder), reference)}
    write_json(summary_path(settings, "drift"), summary)
    if chart is not None:
        from model.report import drift_chart

        drift_chart(summary, chart)
    return summary


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
    from flows.model_store import promoted

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


def train(settings: Settings, promote_now: bool = True) -> dict:
    """Train on the crops, score on the test split, register the model with BentoML, and pass
    the gate: promote it if it scores at least the promoted model on the same test split.

    With promote_now the promotion record is written here; without (the retrain flow) the gate
    only decides and marks the promotion pending, and record_promotion writes the record after
    the publish. "promoted" in the summary is the gate's verdict either way.

    A model already trained on the same dataset with the same configuration and code is reused
    (unless reuse_trained is off): a rerun after a failed publish does not train again.
    """
    from flows.model_store import find_trained, gate, register_model, restore_model
    from model.evaluate import evaluate_model
    from model.train import TrainConfig

    table = pd.read_parquet(settings.dataset_dir / CROPS_TABLE)
    crops = settings.dataset_dir / "crops"
    # Every training knob is a setting of the same name (OPENIMAGER_EPOCHS, _WEIGHTS, ...).
    config = TrainConfig(**{f.name: getattr(settings, f.name) for f in fields(TrainConfig)
                            if f.name in Settings.model_fields})
    code = code_state()  # the commit, and any changes the model is trained with
    key = hashlib.sha256(json.dumps([dataset_id(table), asdict(config), training_code(),
                                     settings.openimages_version]).encode()).hexdigest()[:16]
    found = find_trained(settings.model_name, "train", key) if settings.reuse_trained else None
    if found:
        tag, metadata = found
        restore_model(tag, settings.model_dir)
        log.info("%s was trained on this dataset with this config and code: reused", tag)
    else:
        metadata = _fit(settings, table, config, code)
        labels = {"dataset": metadata["dataset_id"], "commit": code["git_commit"][:12],
                  "architecture": config.architecture, "train": key}
        tag = register_model(settings.model_dir, settings.model_name, metadata, labels)

    test = table[table.Split == "test"]
    metric = settings.promotion_metric

    def score(model: object, theirs: dict) -> float | None:
        """The promoted model's metric on this run's test split, fed at its own input size."""
        return evaluate_model(model, list(theirs["class_names"]), test, crops,
                              int(theirs["image_size"]), settings.batch_size)[metric]

    decision = gate(tag, metadata["class_names"], metric, metadata["metrics"][metric], score,
                    settings.force_promote, promote_now=promote_now,
                    dataset_id=metadata["dataset_id"])
    summary = {"model_tag": tag, **metadata, "reused": bool(found),
               "promoted": decision.promote, "promotion_reason": decision.reason,
               "promotion": decision.as_dict()}
    write_json(summary_path(settings, "train"), summary)
    return summary


def training_code() -> str:
    """A hash of the training code as it is on disk (committed or not, in a checkout or in
    the worker image): a model is reused only if this code trained it."""
    digest = hashlib.sha256()
    for path in sorted((PROJECT_ROOT / "model").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def summary_path(settings: Settings, stage: str) -> Path:
    """Where a stage leaves its summary, for the stages after it in a later run."""
    return settings.workspace / "summaries" / f"{stage}.json"


def last_summary(settings: Settings, stage: str) -> dict:
    """The summary of the last run of a stage in this workspace, or a clear error."""
    path = summary_path(settings, stage)
    if not path.exists():
        raise FileNotFoundError(f"no {stage} summary in {settings.workspace}: run the {stage} "
                                "stage first")
    return json.loads(path.read_text())


def _fit(settings: Settings, table: pd.DataFrame, config: object, code: dict) -> dict:
    """Fit a model into the model folder; return its training summary."""
    from model.train import train as fit

    result = fit(table, settings.dataset_dir / "crops", settings.model_dir, config)
    mids = table.drop_duplicates("Class").set_index("Class").ClassMID.to_dict()
    profile_path = settings.dataset_dir / PROFILE  # what the next run's data checks compare
    return {
        "dataset_profile": json.loads(profile_path.read_text()) if profile_path.exists()
        else None,
        "class_names": result.class_names,
        "class_mids": [mids[c] for c in result.class_names],
        "image_size": settings.image_size,
        "architecture": config.architecture,
        "backbone": config.backbone if config.architecture == "transfer" else None,
        "weights": result.metrics["weights"],
        "dataset_id": dataset_id(table),
        "openimages_version": settings.openimages_version,
        **code,
        "metrics": {k: result.metrics[k] for k in
                    ("accuracy", "macro_f1", "roc_auc", "test_examples", "per_class",
                     "confusion_matrix")},
        "train_seconds": round(result.seconds, 2),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
    }


def publish_bundle(settings: Settings, trained: dict, built: dict) -> Published:
    """Push data, model, code and environment as one quilt3 package."""
    meta = {
        "package": settings.package_name,
        "registry": settings.registry,
        "classes": trained["class_names"],
        "class_mids": dict(zip(trained["class_names"], trained["class_mids"], strict=True)),
        "crops_per_class": built["crops_per_class"],
        "crops_per_split": built["crops_per_split"],
        "dataset_id": built["dataset_id"],
        "openimages_version": settings.openimages_version,
        "metrics": trained["metrics"],
        "git_commit": trained["git_commit"],
        # None: trained before this was recorded, or outside a git checkout.
        "dirty": trained.get("git_dirty"),
        "git_changes": trained.get("git_changes") or [],
        "model_tag": trained["model_tag"],
        "filters": asdict(filters(settings)),
        "train_config": trained.get("config"),
    }
    message = f"{trained['model_tag']}: accuracy {trained['metrics']['accuracy']}"
    if settings.registry == "embedded":  # it lives in this workspace: name it, absolute
        meta["workspace"] = str(Path(settings.workspace).resolve())
    with opened(settings.registry, settings.registry_dir) as registry, \
            tempfile.TemporaryDirectory(dir=settings.workspace, prefix=".publish-") as tmp:
        meta["registry"] = settings.registry
        data = settings.dataset_dir
        if not settings.publish_feedback and built.get("feedback_crops"):
            data = without_feedback(data, Path(tmp) / "dataset")
        return publish(data, settings.model_dir, meta, settings.package_name,
                       registry, message, allow_dirty=settings.publish_uncommitted,
                       image_dir=settings.image_dir if settings.publish_images else None)


def finish_pending_promotion(settings: Settings) -> dict | None:
    """Finish the promotion a stopped run decided and published but did not record (see
    model_store.finish_pending). Opens the registry only when a promotion is pending."""
    from flows.model_store import finish_pending, pending
    from flows.publishing.bundle import latest_meta

    if pending(settings.model_name) is None:
        return None
    with opened(settings.registry, settings.registry_dir) as registry:
        newest = latest_meta(settings.package_name, registry)
        return finish_pending(settings.model_name, newest, settings.package_name, registry)


def record_promotion(trained: dict, published: dict) -> dict | None:
    """After the publish: write the promotion record of a model that passed the gate, naming
    the package revision it was published in. Returns the record, or None when another model
    was promoted since the gate decided (by hand, say): that later decision stands."""
    from flows.model_store import promote, promoted

    tag, decision = trained["model_tag"], trained["promotion"]
    current = promoted(tag.split(":", 1)[0])
    if current is not None and current["tag"] not in (tag, decision.get("incumbent_tag")):
        log.warning("%s is not promoted: %s was promoted after the gate compared it with %s",
                    tag, current["tag"], decision.get("incumbent_tag"))
        return None
    publication = {"package": published["name"], "registry": published["registry"],
                   "top_hash": published["top_hash"]}
    if current is not None and current["tag"] == tag:  # keep why and when it was promoted
        return promote(tag, **publication)
    return promote(tag, metric=decision["metric"], score=decision["candidate_score"],
                   reason=decision["reason"], dataset_id=trained["dataset_id"], **publication)


def build_bento(tag: str) -> dict:
    """Build the Bento of the promoted model tag and note its tag in the promotion record.
    A failed build is logged and returned as the error: the promotion stands."""
    from flows.model_store import annotate_promotion
    from flows.model_store import build_bento as build

    started = time.monotonic()
    try:
        bento = build(tag, PROJECT_ROOT)
    except Exception as error:  # noqa: BLE001 - any failure leaves the promotion in place
        log.error("no Bento of %s: %s (the promotion stands)", tag, error)
        return {"tag": None, "error": str(error)}
    annotate_promotion(tag, bento=bento)
    return {"tag": bento, "error": None, "seconds": round(time.monotonic() - started, 1)}


def promote_published(settings: Settings, trained: dict, published: dict) -> dict:
    """Record the promotion of a published model that passed the gate, then build its Bento
    if build_bento is on; return (and leave in the workspace) what was recorded and built."""
    record = record_promotion(trained, published)
    bento = build_bento(record["tag"]) if record is not None and settings.build_bento else None
    if bento and bento["tag"]:
        record = {**record, "bento": bento["tag"]}
    summary = {"promotion": record, "bento": bento}
    write_json(summary_path(settings, "promote"), summary)
    return summary

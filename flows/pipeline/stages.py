"""Each pipeline stage as a plain function of the settings; the Prefect flows only wire these."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from flows.openimages.card import write_card
from flows.openimages.crop import CropOptions
from flows.openimages.cropjobs import CropRunner, process_pool, source_manifest
from flows.openimages.dataset import (
    CROPS_TABLE,
    build_dataset,
    class_weights,
    crops_root,
    dataset_id,
)
from flows.openimages.download import ChunkRunner, DownloadOptions, download_images
from flows.openimages.feedback import FEEDBACK, add_feedback, labelled_images
from flows.openimages.feedbackscreen import screen
from flows.openimages.select import images_of, select_boxes, summary
from flows.openimages.shards import SHARDS_DIR
from flows.openimages.sources import bucket_url
from flows.pipeline.selection import filters, metadata, validate_classes
from flows.publishing.lineage import PROJECT_ROOT, code_state
from flows.settings import Settings
from flows.watching.datachecks import PROFILE, profile
from model.atomic import write_json, write_parquet
from model.promotion import Decision, Incumbent, Rule

log = logging.getLogger(__name__)
FEEDBACK_REPORT = "feedback_screen.json"  # what feedback was kept out of training, and why


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
    run_chunks, or on a thread pool here). With crop_from_source (and the photos not
    published) nothing is downloaded: the croppers read each photo from the image source, so
    a cluster's workers need no image store shared with the flow."""
    boxes = select(settings)
    if settings.crop_from_source and not settings.publish_images:
        downloads = {"read from the source by the croppers": int(boxes.ImageID.nunique())}
    else:
        downloads = download(settings, boxes, run_chunks).Status.value_counts().to_dict()
    counts = summary(boxes).set_index("Class")
    return {
        "classes": {c: {"mid": row.ClassMID, "boxes": int(row.boxes), "images": int(row.images)}
                    for c, row in counts.iterrows()},
        "boxes": len(boxes),
        "images": int(boxes.ImageID.nunique()),
        "downloads": downloads,
    }


def build(settings: Settings, run_chunks: CropRunner | None = None) -> dict:
    """Crop the selected boxes into shards (chunks run by run_chunks, or on a local process
    pool) and split them by source image. With crop_from_source the croppers read the photos
    from the image source (no download stage, no shared disk) instead of the image store."""
    boxes = pd.read_parquet(settings.workspace / "selection.parquet")
    manifest = pd.read_parquet(settings.workspace / "downloads.parquet") \
        if not settings.crop_from_source else \
        source_manifest(boxes, bucket_url(settings.image_bucket, settings.image_endpoint_url))
    options = CropOptions(settings.crop_size, settings.min_box_pixels, settings.crop_padding,
                          settings.crop_quality, min_detail=settings.crop_min_detail)
    table, skipped = build_dataset(boxes, manifest, settings.dataset_dir, options,
                                   settings.split_seed, settings.validation_fraction,
                                   settings.test_fraction,
                                   max_crops_per_class=settings.max_crops_per_class,
                                   run_chunks=run_chunks or process_pool(settings.crop_workers),
                                   chunk_images=settings.crop_chunk_images,
                                   crop_files=settings.crop_files)
    table = join_feedback(settings, table)
    weights = class_weights(table)
    write_json(settings.dataset_dir / "class_weights.json", weights)
    # The bundled sample's photos live under the reserved .invalid domain.
    synthetic = bool(boxes.OriginalURL.fillna("").str.contains(r"\.invalid/").all())
    write_card(settings.dataset_dir, table, skipped, {
        "openimages_version": settings.openimages_version, "seed": settings.split_seed,
        "filters": asdict(filters(settings)),
        # Named as training weights only when training uses them (OPENIMAGER_CLASS_WEIGHTS).
        "class_weights": weights if settings.class_weights else None,
        "training": {"architecture": settings.architecture, "image_size": settings.image_size,
                     "weights": settings.weights, "crop_size": settings.crop_size,
                     "min_box_pixels": settings.min_box_pixels},
        "expansion": boxes.groupby("Class").LabelDisplayName.agg(
            lambda names: ", ".join(sorted(set(names)))).to_dict(),
        "synthetic": synthetic,
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
        "feedback_screen": screened_summary(settings),
        "synthetic": synthetic,
    }
    write_json(settings.dataset_dir / PROFILE, profile(table, manifest, summary["skipped"]))
    write_json(summary_path(settings, "build"), summary)
    return summary


def join_feedback(settings: Settings, table: pd.DataFrame) -> pd.DataFrame:
    """With use_feedback, add the served images people labelled to the train split and
    rewrite the crops table; else mark every row's Source as Open Images."""
    from flows.watching.watch import log_location
    from model.predictions import fetch_images, image_name, read_feedback, read_log

    images = pd.DataFrame()
    if settings.use_feedback:
        folder = log_location(settings)
        # Not named log: that is the module's logger, which warns below.
        served, feedback = read_log(folder), read_feedback(folder)
        if isinstance(folder, str):  # s3://: the labelled kept images come down first
            labelled = served[served.kept & served.request_id.isin(feedback.request_id)]
            names = [image_name(sha, fmt) for sha, fmt in zip(labelled.sha256,
                                                               labelled.format, strict=True)]
            images_dir = fetch_images(folder, names, settings.workspace / "feedback-images")
        else:
            images_dir = folder / "images"
        images = labelled_images(served, feedback, images_dir, sorted(table.Class.unique()))
    images, screened = screen(images, table, crops_root(settings.dataset_dir, table),
                              settings.feedback_max_share)
    if screened["near_duplicates"] or screened["over_cap"]:
        log.warning("feedback kept out of training: %d near-duplicates of validation or test "
                    "crops, over the cap per class %s", len(screened["near_duplicates"]),
                    screened["over_cap"])
    write_json(settings.dataset_dir / FEEDBACK_REPORT, screened)
    table = add_feedback(table, images, settings.dataset_dir / SHARDS_DIR, settings.crop_size,
                         settings.crop_quality)
    write_parquet(settings.dataset_dir / CROPS_TABLE, table)
    return table


def screened_summary(settings: Settings) -> dict | None:
    """How many feedback images the screen kept out (near-duplicates, over the cap)."""
    path = settings.dataset_dir / FEEDBACK_REPORT
    if not settings.use_feedback or not path.exists():
        return None
    found = json.loads(path.read_text())
    return {"near_duplicates": len(found["near_duplicates"]), "over_cap": found["over_cap"]}


def train(settings: Settings, promote_now: bool = True) -> dict:
    """Train on the crops, score on the test split, register the model with BentoML, and pass
    the paired gate: the candidate and the promoted model answer the same test photos (the
    holdout slice left out, gate_rows), and the candidate is promoted only if the whole
    interval of the difference, by a paired bootstrap over photos at the settings'
    confidence, lies above their margin (promotion_rule): a tie keeps the promoted model.

    With promote_now the promotion record is written here; without (the retrain flow) the gate
    only decides and marks the promotion pending, and record_promotion writes the record after
    the publish. "promoted" in the summary is the gate's verdict either way.

    A model already trained on the same dataset with the same configuration and code is reused
    (unless reuse_trained is off): a rerun after a failed publish does not train again.
    """
    import keras

    from flows.promotion.bentoml_store import find_trained, gate, register_model, restore_model
    from flows.promotion.registry import has_registry, registry_of
    from model.evaluate import outcome_of
    from model.train import TrainConfig

    table = pd.read_parquet(settings.dataset_dir / CROPS_TABLE)
    crops = crops_root(settings.dataset_dir, table)
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

    # the live table is in stored order (runs of shards); the holdout is never scored
    test = gate_rows(table, settings.holdout_share)
    metric = settings.promotion_metric

    def score(model: object, theirs: dict) -> object:
        """A model's answers on this run's test split, crop by crop with their photos, fed at
        its own input size: the promoted model's and the candidate's, compared photo by photo."""
        return outcome_of(model, list(theirs["class_names"]), test, crops,
                          int(theirs["image_size"]), settings.batch_size)

    # The trained model, as saved: scored on the test split, then replayed by shadow replay.
    model = keras.saving.load_model(settings.model_dir / "model.keras", compile=False)
    # The registry's promoted revision is the incumbent, whichever host trained it.
    opened = registry_of(settings) if has_registry(settings) else nullcontext(None)
    rule = promotion_rule(settings)
    with opened as registry:
        decision = gate(tag, metadata["class_names"], metric, metadata["metrics"][metric],
                        score, settings.force_promote, promote_now=promote_now,
                        registry=registry, cache=settings.workspace / "cache" / "promoted",
                        candidate=score(model, metadata), rule=rule,
                        shadow=shadow_check(settings, tag, metadata, model)
                        if settings.shadow_replay else None, dataset_id=metadata["dataset_id"])
    summary = {"model_tag": tag, **metadata, "reused": bool(found),
               "promoted": decision.promote, "promotion_reason": decision.reason,
               "promotion": decision.as_dict()}
    write_json(summary_path(settings, "train"), summary)
    return summary


def promotion_rule(settings: Settings) -> Rule:
    """The gate's rule of the settings: the margin and confidence a candidate must beat the
    promoted model by."""
    return Rule(settings.promotion_margin, settings.promotion_confidence)


def shadow_check(settings: Settings, tag: str, metadata: dict, model: object) -> Callable:
    """The gate's shadow replay: the candidate and the incumbent on the uploads the service
    kept since the incumbent's promotion. A refusal overrides the test split's verdict unless
    the promotion is forced; a replay that cannot run (the log unreachable) is reported and
    leaves the verdict as it was."""

    def check(decision: Decision, theirs: Incumbent) -> Decision:
        from flows.promotion.registry import input_size
        from flows.watching.shadow import Side, shadow_replay

        ours = Side(tag, model, tuple(metadata["class_names"]), int(metadata["image_size"]))
        incumbent = Side(theirs.tag, theirs.model, theirs.class_names,
                         int(theirs.image_size or input_size(theirs.model)))
        try:
            report = shadow_replay(settings, ours, incumbent, theirs.promoted_at)
        except Exception as error:  # noqa: BLE001 - the test split's verdict still stands
            log.warning("shadow replay not run: %s", error)
            return replace(decision, shadow={"error": str(error), "passes": None})
        decision = replace(decision, shadow=report)
        if not report["images"]:
            return decision
        if report["passes"] or settings.force_promote:
            return replace(decision, reason=f"{decision.reason}; {report['reason']}")
        return replace(decision, promote=False,
                       reason=f"{report['reason']}; the test split alone would promote it: "
                              f"{decision.reason}")

    return check


def gate_rows(table: pd.DataFrame, holdout_share: float) -> pd.DataFrame:
    """The test rows the gate scores: the test split without its holdout photos."""
    from model.intervals import holdout

    test = table[table.Split == "test"]
    return test[~holdout(list(test.ImageID), holdout_share)]


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
    from model.evaluate import drift_reference
    from model.train import train as fit

    test = table[table.Split == "test"]
    result = fit(table, crops_root(settings.dataset_dir, table), settings.model_dir, config)
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
                     "intervals", "holdout", "calibration", "confusion_matrix")
                    if k in result.metrics},
        # The test split as the drift report compares the served traffic with it.
        "drift_reference": drift_reference(result.metrics["test_top_probabilities"],
                                           test.Width.tolist(), test.Height.tolist()),
        "train_seconds": round(result.seconds, 2),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
    }

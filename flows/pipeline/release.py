"""The stages after training: publish the bundle, record the promotion after the push, build
the promoted model's Bento; and finishing a promotion a stopped run left pending."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from flows.openimages.feedback import without_feedback
from flows.pipeline.selection import filters
from flows.pipeline.stages import summary_path
from flows.publishing.bundle import Published, publish
from flows.publishing.lineage import PROJECT_ROOT
from flows.publishing.registries import opened
from flows.settings import Settings
from model.atomic import write_json

log = logging.getLogger(__name__)


def bundle_meta(settings: Settings, trained: dict, built: dict) -> dict:
    """The package metadata of a trained model: its lineage, scores and drift reference."""
    return {
        "package": settings.package_name,
        "registry": settings.registry,
        "classes": trained["class_names"],
        "class_mids": dict(zip(trained["class_names"], trained["class_mids"], strict=True)),
        "crops_per_class": built["crops_per_class"],
        "crops_per_split": built["crops_per_split"],
        "dataset_id": built["dataset_id"],
        "openimages_version": settings.openimages_version,
        "metrics": trained["metrics"],
        "drift_reference": trained.get("drift_reference"),
        "git_commit": trained["git_commit"],
        # None: trained before this was recorded, or outside a git checkout.
        "dirty": trained.get("git_dirty"),
        "git_changes": trained.get("git_changes") or [],
        "model_tag": trained["model_tag"],
        "filters": asdict(filters(settings)),
        "train_config": trained.get("config"),
        "synthetic": built.get("synthetic"),
    }


def publish_bundle(settings: Settings, trained: dict, built: dict) -> Published:
    """Push data, model, code and environment as one quilt3 package."""
    meta = bundle_meta(settings, trained, built)
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
    """Finish the promotions stopped runs decided and published but did not write: those the
    registry holds pending, from whichever host decided them (registry.finish_pending), then
    this host's own marker (bentoml_store.finish_pending), in the registry too. Returns the
    last promotion finished, or None. Without a registry and a marker, opens nothing."""
    from flows.promotion.bentoml_store import finish_pending, pending
    from flows.promotion.registry import finish_decided, has_registry, registry_of
    from flows.publishing.bundle import latest_meta

    finished = None
    if has_registry(settings):
        with registry_of(settings) as registry:
            finished = (finish_decided(registry) or [None])[-1]
    marker = pending(settings.model_name)
    if marker is None:
        return finished
    with opened(settings.registry, settings.registry_dir) as registry:
        newest = latest_meta(settings.package_name, registry)
        record = finish_pending(settings.model_name, newest, settings.package_name, registry)
        if record is None:
            return finished
        published = {"name": settings.package_name, "registry": registry,
                     "top_hash": record["top_hash"]}
        decision = {"incumbent_top_hash": marker.get("replaces_top_hash")}
        lost = promote_in_registry(settings, record["tag"], decision, published, record)
        return None if lost else record


def promote_in_registry(settings: Settings, tag: str, decision: dict, published: dict,
                        details: dict) -> dict | None:
    """Make the published revision the registry's promoted one, if the revision the gate
    compared with still is; return None when written, or the entry that won instead."""
    from flows.promotion.registry import gate_entry, registry_of
    from model import registry_state

    entry = gate_entry(tag, published["top_hash"], published["name"], details)
    with registry_of(settings) as registry:
        try:
            registry.update(registry_state.promote(
                entry, expected=decision.get("incumbent_top_hash")))
        except registry_state.Lost as lost:
            log.warning("%s", lost)
            registry.update(registry_state.note("lost", entry, to=lost.winner and {
                k: lost.winner.get(k) for k in ("tag", "top_hash", "by")}))
            return lost.winner or {"tag": None, "top_hash": None}
    return None


def record_promotion(trained: dict, published: dict, settings: Settings | None = None
                     ) -> dict | None:
    """After the publish: make the published model that passed the gate the promoted one, in
    the registry (with settings: compare-and-swap against the revision the gate compared
    with) and in this host's record, naming the package revision it was published in.
    Returns the record, or None when another model was promoted since the gate decided (by
    hand, or by another run): that later decision stands, and trained["lost_to"] names it."""
    from flows.promotion.bentoml_store import promote, promoted
    from model.promotion import figures
    from model.shadow import recorded

    tag, decision = trained["model_tag"], trained["promotion"]
    details = {"metric": decision["metric"], "score": decision["candidate_score"],
               "reason": decision["reason"], "dataset_id": trained["dataset_id"],
               **figures(decision)}
    if decision.get("shadow"):
        details["shadow"] = recorded(decision["shadow"])
    if settings is not None:
        winner = promote_in_registry(settings, tag, decision, published, details)
        if winner is not None:
            trained["lost_to"] = winner
            return None
    current = promoted(tag.split(":", 1)[0])
    if settings is None and current is not None \
            and current["tag"] not in (tag, decision.get("incumbent_tag")):
        log.warning("%s is not promoted: %s was promoted after the gate compared it with %s",
                    tag, current["tag"], decision.get("incumbent_tag"))
        return None
    publication = {"package": published["name"], "registry": published["registry"],
                   "top_hash": published["top_hash"]}
    if current is not None and current["tag"] == tag:  # keep why and when it was promoted
        return promote(tag, **publication)
    return promote(tag, **details, **publication)


def build_bento(tag: str) -> dict:
    """Build the Bento of the promoted model tag and note its tag in the promotion record.
    A failed build is logged and returned as the error: the promotion stands."""
    from flows.promotion.bentoml_store import annotate_promotion
    from flows.promotion.bentoml_store import build_bento as build

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
    record = record_promotion(trained, published, settings)
    bento = build_bento(record["tag"]) if record is not None and settings.build_bento else None
    if bento and bento["tag"]:
        record = {**record, "bento": bento["tag"]}
    summary = {"promotion": record, "bento": bento, "lost_to": trained.get("lost_to")}
    write_json(summary_path(settings, "promote"), summary)
    return summary

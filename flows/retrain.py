"""Prefect flow: the whole job, refresh to publish, for scheduled retraining.

Only a promoted model is published: the package's latest revision is always the model the
service should serve. A model that is not promoted stays in the BentoML store, and the run's
report says why; the data of that run is published with the next promoted model.
"""

from __future__ import annotations

from prefect import flow

from flows.artifacts import record
from flows.fanout import shared_cluster
from flows.params import Architecture, Runner, Version, report_images, settings_from
from flows.publish import publish_task
from flows.refresh import check_inputs, refresh_task
from flows.train import build_task, promotion_line, train_task


@flow(name="retrain", log_prints=True)
def retrain(
    classes: list[str] | None = None,
    exclude_classes: list[str] | None = None,
    openimages_version: Version | None = None,
    workspace: str | None = None,
    metadata_url: str | None = None,
    image_endpoint_url: str | None = None,
    max_images_per_class: int | None = None,
    max_crops_per_class: int | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    architecture: Architecture | None = None,
    registry: str | None = None,
    package_name: str | None = None,
    force_promote: bool | None = None,
    task_runner: Runner | None = None,
) -> dict:
    """Refresh, crop, train and register; publish the model with its data if it was promoted.
    Returns every stage's summary."""
    settings = settings_from(
        classes=classes, exclude_classes=exclude_classes,
        openimages_version=openimages_version, workspace=workspace, metadata_url=metadata_url,
        image_endpoint_url=image_endpoint_url, max_images_per_class=max_images_per_class,
        max_crops_per_class=max_crops_per_class, epochs=epochs, image_size=image_size,
        architecture=architecture, registry=registry, package_name=package_name,
        force_promote=force_promote, task_runner=task_runner,
    )
    check_inputs(settings, registry=True)
    with shared_cluster(settings) as fanned:
        refreshed = refresh_task(fanned)
        built = build_task(fanned)
    trained = train_task(settings)
    published = None
    if trained["promoted"]:
        published = publish_task(settings, trained, built)
        from flows.model_store import annotate_promotion  # the service shows its model's bundle

        annotate_promotion(trained["model_tag"], package=published["name"],
                           registry=published["registry"], top_hash=published["top_hash"])
    result = {"refresh": refreshed, "dataset": built, "train": trained, "publish": published}
    print(f"classes {list(refreshed['classes'])}: {refreshed['images']} images, "
          f"{built['crops']} crops; test accuracy {trained['metrics']['accuracy']}")
    print(promotion_line(trained))
    print(f"published {published['name']}@{published['top_hash'][:12]}" if published
          else "not published: the model was not promoted")
    record("retrain", result, report_images(settings))
    return result

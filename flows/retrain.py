"""Prefect flow: the whole job, refresh to publish, for scheduled retraining."""

from __future__ import annotations

from prefect import flow

from flows.params import settings_from
from flows.publish import publish_task
from flows.refresh import check_classes, refresh_task
from flows.train import build_task, promotion_line, train_task


@flow(name="retrain", log_prints=True)
def retrain(
    classes: list[str] | None = None,
    exclude_classes: list[str] | None = None,
    openimages_version: str | None = None,
    workspace: str | None = None,
    metadata_url: str | None = None,
    image_endpoint_url: str | None = None,
    max_images_per_class: int | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    registry: str | None = None,
    package_name: str | None = None,
    architecture: str | None = None,
    force_promote: bool | None = None,
) -> dict:
    """Refresh, crop, train, register and publish; return every stage's summary."""
    settings = settings_from(
        classes=classes, exclude_classes=exclude_classes,
        openimages_version=openimages_version, workspace=workspace, metadata_url=metadata_url,
        image_endpoint_url=image_endpoint_url, max_images_per_class=max_images_per_class,
        epochs=epochs, image_size=image_size, registry=registry, package_name=package_name,
        architecture=architecture, force_promote=force_promote,
    )
    check_classes(settings)
    refreshed = refresh_task(settings)
    built = build_task(settings)
    trained = train_task(settings)
    published = publish_task(settings, trained, built)
    if trained["promoted"]:  # the service shows which bundle its model came from
        from flows.registry import annotate_promotion

        annotate_promotion(trained["model_tag"], package=published["name"],
                           registry=published["registry"], top_hash=published["top_hash"])
    print(f"classes {list(refreshed['classes'])}: {refreshed['images']} images, "
          f"{built['crops']} crops; test accuracy {trained['metrics']['accuracy']}; "
          f"published {published['name']}@{published['top_hash'][:12]}")
    print(promotion_line(trained))
    return {"refresh": refreshed, "dataset": built, "train": trained, "publish": published}

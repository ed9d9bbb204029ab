"""Prefect flow: refresh the Open Images metadata and the images of a class selection."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import stages
from flows.download_flow import chunk_runner
from flows.params import settings_from
from flows.settings import Settings


@task(retries=3, retry_delay_seconds=[5, 30, 120], cache_policy=NO_CACHE)
def check_classes(settings: Settings) -> list[str]:
    """Fetch the ontology and resolve the requested names before any heavy work."""
    return stages.validate_classes(settings)


@task(retries=2, retry_delay_seconds=[30, 120], cache_policy=NO_CACHE)
def refresh_task(settings: Settings) -> dict:
    """Metadata, selection and image download (all network-bound); the download fans out as
    chunk tasks of a download-images subflow."""
    return stages.refresh(settings, run_chunks=chunk_runner(settings))


@flow(name="refresh", log_prints=True)
def refresh(classes: list[str] | None = None, exclude_classes: list[str] | None = None,
            openimages_version: str | None = None, workspace: str | None = None,
            max_images_per_class: int | None = None, balance_classes: bool | None = None) -> dict:
    """Select the boxes of the requested classes and download their images."""
    settings = settings_from(classes=classes, exclude_classes=exclude_classes,
                             openimages_version=openimages_version, workspace=workspace,
                             max_images_per_class=max_images_per_class,
                             balance_classes=balance_classes)
    check_classes(settings)
    summary = refresh_task(settings)
    print(f"selected {summary['boxes']} boxes on {summary['images']} images; "
          f"downloads {summary['downloads']}")
    return summary

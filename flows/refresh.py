"""Prefect flow: refresh the Open Images metadata and the images of a class selection."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import stages
from flows.artifacts import record
from flows.download_flow import chunk_runner
from flows.openimages.ontology import UnknownClassError
from flows.openimages.select import EmptySelection
from flows.params import Runner, Version, retry_unless, settings_from
from flows.publishing.registries import EMBEDDED, RegistryError, check_registry
from flows.settings import Settings


@task(retries=3, retry_delay_seconds=[5, 30, 120], retry_jitter_factor=0.5,
      retry_condition_fn=retry_unless(UnknownClassError, RegistryError), cache_policy=NO_CACHE)
def check_inputs(settings: Settings, registry: bool = False) -> list[str]:
    """Resolve the class names (fetching only the ontology) and, when the run publishes, check
    the registry: a typo or a missing bucket fails the run before any heavy work."""
    mids = stages.validate_classes(settings)
    if registry and settings.registry != EMBEDDED:
        check_registry(settings.registry)
    return mids


@task(retries=2, retry_delay_seconds=[30, 120], retry_jitter_factor=0.5,
      retry_condition_fn=retry_unless(EmptySelection), cache_policy=NO_CACHE)
def refresh_task(settings: Settings) -> dict:
    """Metadata, selection and image download (all network-bound, and resumable); the download
    fans out as chunk tasks of a download-images subflow."""
    return stages.refresh(settings, run_chunks=chunk_runner(settings))


@flow(name="refresh", log_prints=True)
def refresh(classes: list[str] | None = None, exclude_classes: list[str] | None = None,
            openimages_version: Version | None = None, workspace: str | None = None,
            metadata_url: str | None = None, image_endpoint_url: str | None = None,
            max_images_per_class: int | None = None, balance_classes: bool | None = None,
            task_runner: Runner | None = None) -> dict:
    """Select the boxes of the requested classes and download their images."""
    settings = settings_from(classes=classes, exclude_classes=exclude_classes,
                             openimages_version=openimages_version, workspace=workspace,
                             metadata_url=metadata_url, image_endpoint_url=image_endpoint_url,
                             max_images_per_class=max_images_per_class,
                             balance_classes=balance_classes, task_runner=task_runner)
    check_inputs(settings)
    summary = refresh_task(settings)
    print(f"selected {summary['boxes']} boxes on {summary['images']} images; "
          f"downloads {summary['downloads']}")
    record("refresh", {"refresh": summary}, {})
    return summary

"""Prefect flow: refresh the Open Images metadata and the images of a class selection."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from flows.download_flow import chunk_runner
from flows.openimages.fetch import transient
from flows.openimages.sources import Transient
from flows.pipeline import stages
from flows.pipeline.artifacts import record
from flows.publishing.registries import EMBEDDED, check_registry
from flows.run.params import Runner, Version, settings_from
from flows.settings import Settings


def upstream_failed(task: object, task_run: object, state: State) -> bool:
    """Retry only what another try can mend: the network or the upstream server (5xx, 429).
    A malformed or unverifiable file, an unknown class, bad settings, an empty selection or a
    registry problem fail at once."""
    error = state.result(raise_on_failure=False) if state.is_failed() else None
    return isinstance(error, Transient) or transient(error)


@task(retries=3, retry_delay_seconds=[5, 30, 120], retry_jitter_factor=0.5,
      retry_condition_fn=upstream_failed, cache_policy=NO_CACHE)
def check_inputs(settings: Settings, registry: bool = False) -> list[str]:
    """Resolve the class names (fetching only the ontology) and, when the run publishes, check
    the registry: a typo or a missing bucket fails the run before any heavy work."""
    mids = stages.validate_classes(settings)
    if registry and settings.registry != EMBEDDED:
        check_registry(settings.registry)
    return mids


@task(retries=2, retry_delay_seconds=[30, 120], retry_jitter_factor=0.5,
      retry_condition_fn=upstream_failed, cache_policy=NO_CACHE)
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

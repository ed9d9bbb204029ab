"""Prefect flow: publish the dataset, model, code and environment as a quilt3 package."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import stages
from flows.artifacts import record
from flows.params import retry_only, settings_from
from flows.publishing.bundle import PublishError
from flows.settings import Settings


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_only(PublishError),
      cache_policy=NO_CACHE)
def publish_task(settings: Settings, trained: dict, built: dict) -> dict:
    """Push the bundle (network-bound, so retried)."""
    return asdict(stages.publish_bundle(settings, trained, built))


@flow(name="publish", log_prints=True)
def publish(registry: str | None = None, package_name: str | None = None,
            workspace: str | None = None, trained: dict | None = None,
            built: dict | None = None) -> dict:
    """Publish the workspace's last trained model with its data (or the summaries given)."""
    settings = settings_from(registry=registry, package_name=package_name, workspace=workspace)
    trained = trained or stages.last_summary(settings, "train")
    built = built or stages.last_summary(settings, "build")
    published = publish_task(settings, trained, built)
    print(f"published {published['name']}@{published['top_hash']} to {published['registry']}")
    record("publish", {"publish": published, "train": trained}, {})
    return published

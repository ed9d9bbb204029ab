"""Prefect flow: publish the dataset, model, code and environment as a quilt3 package."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import release, stages
from flows.pipeline.artifacts import record
from flows.publishing.bundle import PublishError
from flows.run.params import retry_only, settings_from
from flows.settings import Settings


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_only(PublishError),
      cache_policy=NO_CACHE)
def publish_task(settings: Settings, trained: dict, built: dict) -> dict:
    """Push the bundle (network-bound, so retried)."""
    return asdict(release.publish_bundle(settings, trained, built))


@task(cache_policy=NO_CACHE)
def promote_task(settings: Settings, trained: dict, published: dict) -> dict:
    """Write the promotion record of the published model (what the service loads next), then
    build its Bento if build_bento is on (a failed build is reported, not raised)."""
    return release.promote_published(settings, trained, published)


def publish_line(published: dict) -> str:
    """What the publish did: pushed a new revision, or found the newest one identical."""
    where = f"{published['name']}@{published['top_hash']} to {published['registry']}"
    if published.get("pushed", True):
        return f"published {where}"
    return (f"unchanged: {published['top_hash']} ({published['name']} in "
            f"{published['registry']} already holds this bundle; nothing pushed)")


def promotion_lines(promoted: dict | None) -> list[str]:
    """What a run's promotion step recorded and built, in words."""
    if promoted is None:
        return []
    record, bento = promoted["promotion"], promoted["bento"]
    if record is None:
        winner = promoted.get("lost_to") or {}
        if winner.get("tag"):
            return [f"NOT promoted: lost to {winner['tag']} (revision "
                    f"{(winner.get('top_hash') or '?')[:12]}, {winner.get('by')}), promoted in "
                    "the registry after the gate compared with the revision before it"]
        return ["promotion not recorded: another model was promoted since the gate decided"]
    replaced = record.get("replaced") or "nothing"
    lines = [f"promotion recorded: {record['tag']} (replaced {replaced})"]
    if bento:
        lines.append(f"Bento {bento['tag']}" if bento["tag"] else
                     f"Bento NOT built (the promotion stands): {bento['error']}")
    return lines


@flow(name="publish", log_prints=True)
def publish(registry: str | None = None, package_name: str | None = None,
            workspace: str | None = None, trained: dict | None = None,
            built: dict | None = None) -> dict:
    """Publish the workspace's last trained model with its data (or the summaries given); if
    that model passed the promotion gate, record its promotion once it is published."""
    settings = settings_from(registry=registry, package_name=package_name, workspace=workspace)
    trained = trained or stages.last_summary(settings, "train")
    built = built or stages.last_summary(settings, "build")
    published = publish_task(settings, trained, built)
    print(publish_line(published))
    promoted = promote_task(settings, trained, published) if trained["promoted"] else None
    for line in promotion_lines(promoted):
        print(line)
    record("publish", {"publish": published, "train": trained,
                       **(promoted or {"promotion": None})}, {})
    return published

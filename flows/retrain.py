"""Prefect flow: the whole job, refresh to publish, for scheduled retraining.

Only a promoted model is published, and a model is promoted only once it is published: the
gate decides after training (and marks its decision pending beside the promotion record and
in the registry's state), the package is pushed, and only then is the promotion written
(what the service loads next), naming the package revision. A run stopped anywhere leaves the
record naming the newest revision's model, or the one before it while the new revision's
promotion is pending; the next run, on any host, finishes that pending promotion first. A
model that is not promoted stays in the BentoML store, and the run's report says why; the
data of that run is published with the next promoted model. With build_bento, the Bento of a
newly promoted model is built last.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import release, stages
from flows.pipeline.artifacts import record, record_checks
from flows.publish import promote_task, promotion_lines, publish_line, publish_task
from flows.publishing.lineage import refuse_uncommitted
from flows.refresh import check_inputs, refresh_task
from flows.run.fanout import shared_cluster
from flows.run.params import Architecture, Runner, Version, report_images, settings_from
from flows.run.preflight import require_weights
from flows.settings import Settings
from flows.train import build_task, promotion_line, train_task
from flows.watching import watch
from flows.watching.datachecks import verdict
from flows.watching.shadow import report_lines as shadow_lines
from model.atomic import atomic_path
from model.intervals import stated

KILL_AT = "OPENIMAGER_TEST_KILL_AT"  # test-only, see stop_here_for_tests
BARRIER = "OPENIMAGER_TEST_BARRIER"  # test-only, see wait_here_for_tests


def stop_here_for_tests(boundary: str) -> None:
    """Test-only (tests/test_promotion_loop.py): die by SIGKILL at this stage boundary, as a
    killed worker would, when OPENIMAGER_TEST_KILL_AT names it. Not a setting."""
    if os.environ.get(KILL_AT) == boundary:
        os.kill(os.getpid(), signal.SIGKILL)


def wait_here_for_tests(boundary: str) -> None:
    """Test-only (tests/test_registry_truth.py): at this boundary, when OPENIMAGER_TEST_BARRIER
    is "boundary:folder:n", leave a mark in folder and wait until n runs have, so that
    concurrent runs all pass the gate before any of them publishes. Not a setting."""
    wanted, _, rest = os.environ.get(BARRIER, "").partition(":")
    if wanted != boundary:
        return
    folder, _, count = rest.rpartition(":")
    (Path(folder) / str(os.getpid())).touch()
    deadline = time.monotonic() + 600
    while len(list(Path(folder).iterdir())) < int(count) and time.monotonic() < deadline:
        time.sleep(0.2)


@task(cache_policy=NO_CACHE)
def finish_pending_task(settings: Settings) -> dict | None:
    """Record the promotion a stopped run published but did not record, if any."""
    return release.finish_pending_promotion(settings)


@task(cache_policy=NO_CACHE)
def check_task(settings: Settings) -> dict:
    """Check the new dataset against the promoted model's; stop the run on an anomaly."""
    report, path = watch.check_dataset(settings)
    record_checks(report)
    verdict(report, path)
    return report


@task(cache_policy=NO_CACHE)
def drift_task(settings: Settings) -> dict | None:
    """Served traffic against the test split, for this run's report; a failure here is
    logged, never fatal: the report says it was not measured.

    It runs before training, as it depends only on the traffic and the promoted model: its
    chart, drawn into the model folder, is stored with a newly trained model and goes out in
    its bundle. A model reused from an earlier run brings back the chart drawn then, so a
    rerun (after a run stopped once it had published) finds the same bundle, not a new one."""
    chart = stages.summary_path(settings, "drift").with_suffix(".png")
    try:
        summary = watch.drift_summary(settings, chart)
    except Exception as error:  # noqa: BLE001 - drift only informs
        print(f"drift not measured: {error}")
        (settings.model_dir / "drift.png").unlink(missing_ok=True)  # not an older run's
        return None
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(settings.model_dir / "drift.png") as tmp:
        shutil.copyfile(chart, tmp)
    return summary


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
    build_bento: bool | None = None,
    accept_anomalies: bool | None = None,
) -> dict:
    """Refresh, crop, train and register; if the model passes the gate, publish it with its
    data, record its promotion, and build its Bento (build_bento). Returns every stage's
    summary. A transfer model's weights out of reach fail the run before any work; an anomaly
    in the new dataset (flows/watching/datachecks.py) stops it before training unless
    accept_anomalies."""
    settings = settings_from(
        classes=classes, exclude_classes=exclude_classes,
        openimages_version=openimages_version, workspace=workspace, metadata_url=metadata_url,
        image_endpoint_url=image_endpoint_url, max_images_per_class=max_images_per_class,
        max_crops_per_class=max_crops_per_class, epochs=epochs, image_size=image_size,
        architecture=architecture, registry=registry, package_name=package_name,
        force_promote=force_promote, task_runner=task_runner, build_bento=build_bento,
        accept_anomalies=accept_anomalies,
    )
    refuse_uncommitted(settings.publish_uncommitted)  # before any download or training
    require_weights(settings)  # a worker without internet fails here, not after the crop
    check_inputs(settings, registry=True)
    finished = finish_pending_task(settings)
    if finished:
        print(f"finished the promotion of {finished['tag']}, published by a stopped run")
    with shared_cluster(settings) as fanned:
        refreshed = refresh_task(fanned)
        stop_here_for_tests("refresh")
        built = build_task(fanned)
        stop_here_for_tests("build")
    checked = check_task(settings)
    drifted = drift_task(settings)
    trained = train_task(settings, promote_now=False)
    stop_here_for_tests("train")
    wait_here_for_tests("train")
    published = promoted = None
    if trained["promoted"]:
        published = publish_task(settings, trained, built)
        stop_here_for_tests("publish")
        promoted = promote_task(settings, trained, published)
    result = {"refresh": refreshed, "dataset": built, "datachecks": checked, "drift": drifted,
              "train": trained, "publish": published,
              "promotion": promoted and promoted["promotion"],
              "lost_to": promoted and promoted.get("lost_to"),
              "shadow": trained["promotion"].get("shadow"),
              "bento": promoted and promoted["bento"]}
    print(f"classes {list(refreshed['classes'])}: {refreshed['images']} images, "
          f"{built['crops']} crops; test accuracy {stated(trained['metrics'], 'accuracy')}")
    print(promotion_line(trained))
    for line in shadow_lines(trained["promotion"].get("shadow")):
        print(line)
    print(publish_line(published) if published else "not published: the model was not promoted")
    for line in promotion_lines(promoted):
        print(line)
    record("retrain", result, report_images(settings))
    return result

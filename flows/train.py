"""Prefect flows: build the dataset from the images, and train and register a model."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.crop_flow import chunk_runner
from flows.pipeline import stages
from flows.pipeline.artifacts import record
from flows.run.params import Architecture, Runner, report_images, settings_from
from flows.run.preflight import require_weights
from flows.settings import Settings
from model.intervals import stated


@task(cache_policy=NO_CACHE)
def build_task(settings: Settings) -> dict:
    """Crop (chunks fanned out as tasks of a crop-images subflow; only what is missing or
    changed) and split."""
    return stages.build(settings, run_chunks=chunk_runner(settings))


@task(cache_policy=NO_CACHE)
def train_task(settings: Settings, promote_now: bool = True) -> dict:
    """Fit (or reuse the model already trained on this dataset), evaluate on the test split,
    register with BentoML, pass the promotion gate (recording the promotion at once, or with
    promote_now off only deciding it, for the retrain flow to record after the publish)."""
    return stages.train(settings, promote_now)


@flow(name="build-dataset", log_prints=True)
def build_dataset(workspace: str | None = None, max_crops_per_class: int | None = None,
                  task_runner: Runner | None = None) -> dict:
    """Crop the selected boxes of the last refresh into a split dataset."""
    settings = settings_from(workspace=workspace, max_crops_per_class=max_crops_per_class,
                             task_runner=task_runner)
    summary = build_task(settings)
    print(f"{summary['crops']} crops: {summary['crops_per_class']}")
    record("build-dataset", {"dataset": summary}, report_images(settings))
    return summary


@flow(name="train", log_prints=True)
def train(workspace: str | None = None, epochs: int | None = None,
          architecture: Architecture | None = None, weights: str | None = None,
          image_size: int | None = None, force_promote: bool | None = None) -> dict:
    """Train on the last built dataset, register the model, promote it if it is no worse.

    This flow publishes nothing, so it records the promotion at once; the publish flow, run
    after it, adds the package revision to the record."""
    settings = settings_from(workspace=workspace, epochs=epochs, architecture=architecture,
                             weights=weights, image_size=image_size, force_promote=force_promote)
    require_weights(settings)
    trained = train_task(settings)
    print(f"{trained['model_tag']}: test accuracy {stated(trained['metrics'], 'accuracy')}, "
          f"macro F1 {stated(trained['metrics'], 'macro_f1')}")
    print(promotion_line(trained))
    record("train", {"train": trained}, report_images(settings))
    return trained


def promotion_line(trained: dict) -> str:
    """One line saying whether the trained model was promoted, and why."""
    verdict = "promoted" if trained["promoted"] else "NOT promoted"
    return f"{trained['model_tag']} {verdict}: {trained['promotion_reason']}"

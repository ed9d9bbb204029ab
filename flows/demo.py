"""The offline demo: the whole job on the bundled sample, through real local servers."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import requests

from flows.publishing.lineage import PROJECT_ROOT
from flows.run.runtime import prepare_run
from flows.servers.local import LOCAL_CREDENTIALS, TELEMETRY_OFF, BentoServer, LocalS3
from flows.servers.mirror import StaticHTTP
from flows.settings import CVDF_BUCKET, Settings

SAMPLE = PROJECT_ROOT / "data" / "sample"
DEMO_CLASSES = ["Hamburger", "Sandwich", "Car"]


def demo_workspace(flag: Path | None = None) -> Path:
    """The demo's workspace: --workspace, else the one every command and `bentoml serve` use
    (OPENIMAGER_WORKSPACE, else ./workspace), so that they find what the demo left."""
    return (flag if flag is not None else Settings().workspace).resolve()


def pick_test_crop(workspace: Path) -> tuple[Path, str]:
    """A held-out crop to classify (taken out of its shard into a file), with its class."""
    from flows.openimages.card import crop_images

    dataset = workspace / "dataset"
    table = pd.read_parquet(dataset / "crops.parquet")
    rows = table[table.Split == "test"].sort_values("CropPath").head(1)
    path = workspace / "demo-crop.jpg"
    path.write_bytes(crop_images(rows, dataset)[0])
    return path, rows.Class.iloc[0]


def run_demo(workspace: Path | None, classes: list[str] | None = None, epochs: int = 8,
             image_size: int = 96, s3: LocalS3 | None = None) -> dict:
    """Refresh, crop, train, publish and serve on the sample; return what happened.

    Starts its own S3 endpoint unless given one that already holds the sample images;
    workspace None: OPENIMAGER_WORKSPACE, else ./workspace.
    """
    from flows.retrain import retrain  # Prefect loads only when the demo runs

    os.environ.update(TELEMETRY_OFF)
    os.environ.update(LOCAL_CREDENTIALS)
    prepare_run()
    workspace = demo_workspace(workspace)
    logs = workspace / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if s3 is None:
            s3 = stack.enter_context(LocalS3(log_path=logs / "s3.log"))
            s3.create_bucket(CVDF_BUCKET, versioned=False, public=True)
            s3.upload_tree(CVDF_BUCKET, SAMPLE / "images", public=True)
        mirror = stack.enter_context(StaticHTTP(SAMPLE / "openimages"))
        result = retrain(
            classes=classes or DEMO_CLASSES, workspace=str(workspace),
            metadata_url=mirror.url, image_endpoint_url=s3.endpoint_url, epochs=epochs,
            image_size=image_size, registry="embedded",
            architecture="seed-cnn",  # offline: no ImageNet weights to download
        )
        if result["publish"]:
            result["publish"]["where"] = f"embedded registry kept in {workspace / 'registry'}"
            result["publish"]["access"] = registry_access(workspace, result["publish"])
        crop, truth = pick_test_crop(workspace)
        # The service logs its predictions where it would without the demo: into the
        # workspace (<workspace>/predictions unless OPENIMAGER_PREDICTION_LOG_DIR says where).
        logged = {"OPENIMAGER_WORKSPACE": str(workspace)}
        with BentoServer(result["train"]["model_tag"], log_path=logs / "bentoml.log",
                         env=logged) as server:
            with crop.open("rb") as handle:
                answer = requests.post(f"{server.url}/classify", files={"image": handle},
                                       timeout=60)
            answer.raise_for_status()
            result["serve"] = {"url": f"{server.url}/classify", "image": str(crop),
                               "true_class": truth, "answer": answer.json()}
    result["serve"]["next"] = serve_next(workspace, result["train"]["model_tag"])
    return result


def serve_next(workspace: Path, tag: str) -> list[str]:
    """What `bentoml serve` serves after the demo (the promoted model, from the same BentoML
    store, logging into the same workspace) and how to see its traffic's drift."""
    from flows.promotion.bentoml_store import promoted
    from flows.run.shell import flows_command, program, shown

    record = promoted(tag.split(":", 1)[0])
    which = "this model" if record and record["tag"] == tag else \
        f"{record['tag']}, the promoted model (`{flows_command('promote ' + tag)}` serves " \
        "this one)" if record else "no model: none is promoted"
    default = Settings().workspace.resolve() == workspace
    serve = f"{'' if default else f'OPENIMAGER_WORKSPACE={shown(workspace)} '}" \
        f"{program('bentoml')} serve service.service:Classifier"
    drift = flows_command("drift" if default else f"drift --workspace {shown(workspace)}")
    return [f"`{serve}` now serves {which}; `{drift}` then compares its requests with the "
            "test split."]


def report(result: dict) -> str:
    """The demo's closing summary."""
    from flows.publish import publish_line  # the flow module: Prefect loads with it
    from model.intervals import holdout_line, stated

    refreshed, built, trained = result["refresh"], result["dataset"], result["train"]
    published, served = result["publish"], result["serve"]
    metrics = trained["metrics"]
    photos = (metrics.get("intervals") or {}).get("photos", "?")
    lines = ["", "== openimager demo (synthetic sample data) =="]
    for name, info in refreshed["classes"].items():
        lines.append(f"class {name} ({info['mid']}): {info['images']} images, "
                     f"{info['boxes']} boxes, {built['crops_per_class'].get(name, 0)} crops")
    lines += [
        f"images: {refreshed['images']} selected, downloads {refreshed['downloads']}",
        f"crops: {built['crops']} ({built['crops_per_split']}), skipped {built['skipped']}",
        f"held-out test accuracy on synthetic scenes: {stated(metrics, 'accuracy')}, macro F1 "
        f"{stated(metrics, 'macro_f1')} ({metrics['test_examples']} crops of "
        f"{photos} photos, intervals by bootstrap over photos); model {trained['model_tag']}, "
        f"a seed CNN at {trained.get('image_size')} px, not transfer learning",
        *([line] if (line := holdout_line(metrics)) else []),
        calibration_line(metrics),
        f"promotion: {'promoted' if trained['promoted'] else 'not promoted'} "
        f"({trained['promotion_reason']})",
        f"{publish_line(published)} ({published.get('where', 'S3')})" if published
        else "published: nothing (the model was not promoted)",
        f"POST {served['url']} with a held-out {served['true_class']} crop answered: "
        + ", ".join(f"{x['label']} {x['probability']:.3f}" for x in served["answer"]["labels"])
        + (" [unsure]" if served["answer"].get("unsure") else "")
        + f" ({served['answer']['seconds']} s)",
        *served.get("next", []),
    ]
    if published and published.get("access"):
        lines += ["", "The registry stopped with the demo. To install the package with plain "
                      "quilt3, serve it in another shell:", *published["access"]]
    return "\n".join(lines)


def calibration_line(metrics: dict) -> str:
    """Temperature scaling in one line: the temperature and the test ECE before and after."""
    from model.report import NOT_FITTED

    found = metrics.get("calibration")
    if not found:
        return "calibration: not measured"
    how = "fitted on validation" if found.get("identifiable", True) else f"({NOT_FITTED})"
    return (f"calibration: temperature {found['temperature']} {how}; test expected "
            f"calibration error {found['ece_before']} before, {found['ece_after']} after")


def registry_access(workspace: Path, published: dict) -> list[str]:
    """The command that serves the demo's registry again, and the lines that then install the
    published version with plain quilt3 (what `python -m flows registry` prints)."""
    from flows.commands.registry import DEFAULT_PORT
    from flows.publishing.registries import access_lines
    from flows.run.shell import flows_command, shown

    endpoint = f"http://127.0.0.1:{DEFAULT_PORT}"
    return [f"  {flows_command(f'registry --workspace {shown(workspace)}')}",
            *(f"  {line}" for line in access_lines(
                endpoint, {published["name"]: published["top_hash"]},
                shown(workspace / "installed")))]

"""Shadow replay in the gate: a candidate trained on photos whose red and blue channels were
swapped scores well on its own (swapped) test split and passes the paired test-split gate, then
is refused when it and the promoted model classify the uploads the service kept."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from model.predictions import SHADOW_FILE, read_log
from service.config import PredictionLogging
from service.predlog import Answered, PredictionLog, describe

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
SWAPPED_BUCKET = "swapped-channels"
CLASSES = ["Hamburger", "Car"]


def swapped(jpeg: bytes) -> bytes:
    """The photo with its red and blue channels exchanged."""
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., ::-1])).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def swapped_bucket(local_s3) -> str:
    """The sample's photos with swapped channels, in a bucket of their own."""
    local_s3.create_bucket(SWAPPED_BUCKET, versioned=False, public=True)
    client = local_s3.client()
    for path in sorted((SAMPLE / "images").rglob("*.jpg")):
        key = path.relative_to(SAMPLE / "images").as_posix()
        client.put_object(Bucket=SWAPPED_BUCKET, Key=key, Body=swapped(path.read_bytes()))
    return SWAPPED_BUCKET


def settings_for(workspace: Path, local_s3, mirror, **values):
    from flows.settings import Settings

    return Settings(workspace=workspace, metadata_url=mirror.url,
                    image_endpoint_url=local_s3.endpoint_url, classes=CLASSES,
                    architecture="seed-cnn", weights="none", image_size=48, epochs=12,
                    model_name=f"shadow-{uuid.uuid4().hex[:8]}", crop_workers=1, **values)


def crops_of(settings) -> list[tuple[bytes, str]]:
    """The JPEG crops of a built dataset with their classes (what users would upload)."""
    from flows.openimages.dataset import CROPS_TABLE, crops_root
    from flows.openimages.shards import read_images

    table = pd.read_parquet(settings.dataset_dir / CROPS_TABLE)
    table = table.sort_values(["Shard", "Row"], kind="stable")
    images = read_images(crops_root(settings.dataset_dir, table), list(table.Shard),
                         list(table.Row))
    return list(zip(images, table.Class, strict=True))


def keep_uploads(folder: Path, uploads: list[tuple[bytes, str]], model: str,
                 classes: tuple[str, ...], labelled: int) -> None:
    """The uploads as the service keeps them (its own writer, every upload kept), with a
    feedback label for the first `labelled`."""
    log = PredictionLog(PredictionLogging(directory=str(folder), part_seconds=3600,
                                          sample_rate=1.0))
    for i, (data, label) in enumerate(uploads):
        item = Answered(datetime.now(UTC), "classify", [uuid.uuid4().hex],
                        [describe(data, 1.0)], model, classes,
                        np.full((1, len(classes)), 1 / len(classes), np.float32), 5.0)
        log.flush(log.rows(item))
        if i < labelled:
            log.feedback(item.request_ids[0], label, model)


def test_a_swapped_channel_candidate_passes_the_test_split_and_is_refused_by_replay(
        tmp_path, local_s3, mirror, swapped_bucket):
    from flows.pipeline import stages
    from flows.promotion.bentoml_store import promoted

    log_dir = tmp_path / "predictions"
    ours = settings_for(tmp_path / "incumbent", local_s3, mirror,
                        prediction_log_dir=str(log_dir))
    stages.refresh(ours)
    stages.build(ours)
    first = stages.train(ours)
    assert first["promoted"], first["promotion_reason"]

    # The service kept what users sent since: photos of the two classes, as taken.
    keep_uploads(log_dir, crops_of(ours), first["model_tag"], tuple(first["class_names"]),
                 labelled=30)

    # The candidate: the same classes, trained and tested on photos with swapped channels.
    theirs = ours.model_copy(update={"workspace": tmp_path / "candidate",
                                     "image_bucket": swapped_bucket})
    stages.refresh(theirs)
    stages.build(theirs)
    without = stages.train(theirs.model_copy(update={"shadow_replay": False}),
                           promote_now=False)
    # The test-split gate alone promotes it: the promoted model is poor on swapped photos.
    assert without["promoted"], without["promotion_reason"]
    assert "better beyond the margin" in without["promotion_reason"]
    assert without["promotion"]["shadow"] is None

    second = stages.train(theirs)
    reason = second["promotion_reason"]
    assert not second["promoted"], reason
    assert reason.startswith("shadow replay on ") and "under the minimum 80%" in reason
    assert "the test split alone would promote it: macro_f1" in reason
    assert promoted(ours.model_name)["tag"] == first["model_tag"]  # nothing replaced it

    report = second["promotion"]["shadow"]
    assert report["images"] == len(crops_of(ours)) and not report["passes"]
    assert report["confident_images"] >= 20 and report["confident_agreement"] < 0.8
    low, high = report["confident_agreement_interval"]
    assert low <= report["confident_agreement"] <= high
    hamburgers = report["flips"]["Hamburger"]
    assert hamburgers.get("Car", 0) > hamburgers.get("Hamburger", 0)  # the swap's signature
    feedback = report["feedback"]
    assert feedback["images"] == 30
    assert feedback["candidate_accuracy"] < feedback["incumbent_accuracy"]

    # The disagreements wait in the review queue's file, each naming a kept image.
    written = json.loads((log_dir / SHADOW_FILE).read_text())
    assert written["candidate"] == second["model_tag"]
    assert written["incumbent"] == first["model_tag"]
    rows = written["disagreements"]
    assert len(rows) == round((1 - report["agreement"]) * report["images"])
    assert all((log_dir / "images" / row["name"]).is_file() for row in rows)
    assert set(read_log(log_dir).sha256) >= {row["sha256"] for row in rows}

    # By hand: the promoted model against itself passes, the candidate is refused (exit 1).
    def shadow(tag: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows", "shadow", "--candidate", tag,
                               "--workspace", str(ours.workspace), "--log-dir", str(log_dir)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OPENIMAGER_MODEL_NAME": ours.model_name})

    same = shadow(first["model_tag"])
    assert same.returncode == 0, same.stderr[-2000:]
    assert "agreement 100.0%" in same.stdout and "PASSES: " in same.stdout
    refused = shadow(second["model_tag"])
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "REFUSED: shadow replay on" in refused.stdout
    assert "flips (promoted -> candidate): Hamburger -> Car" in refused.stdout

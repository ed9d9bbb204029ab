"""Feedback into training: labelled kept images join the train split only, as Source
feedback, and stay out of published data unless publish_feedback is on."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil

import numpy as np
import pandas as pd
from PIL import Image

from flows.openimages.card import crop_images
from flows.openimages.feedback import without_feedback
from tests.predictionlog import log_rows, write_feedback, write_log


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def workspace_with_uploads(sample_workspace, tmp_path, uploads: list[bytes],
                           labels: list[str], kept: list[bool] | None = None):
    """A workspace holding the sample's dataset and a prediction log of PNG uploads, oldest
    first, each kept (unless kept says otherwise) and labelled."""
    workspace = tmp_path / "ws"
    shutil.copytree(sample_workspace / "dataset", workspace / "dataset")
    table = pd.read_parquet(workspace / "dataset" / "crops.parquet")
    classes = sorted(table.Class.unique())
    logs = workspace / "predictions"
    (logs / "images").mkdir(parents=True)
    rows = log_rows(table[table.Split == "test"].head(len(uploads)), classes, kept=True)
    for row, data, keep in zip(rows, uploads, kept or [True] * len(uploads), strict=True):
        row["sha256"], row["format"], row["kept"] = hashlib.sha256(data).hexdigest(), "PNG", keep
        (logs / "images" / f"{row['sha256']}.png").write_bytes(data)
    write_log(logs, rows)
    write_feedback(logs, {row["request_id"]: label
                          for row, label in zip(rows, labels, strict=True)})
    return workspace, rows


def workspace_with_feedback(sample_workspace, tmp_path):
    """A workspace holding the sample's dataset and a prediction log: three kept, labelled
    images (one with a label of no class), one labelled but not kept."""
    uploads = [png(Image.new("RGB", (400 + i, 300), (i * 40, 90, 30))) for i in range(4)]
    return workspace_with_uploads(sample_workspace, tmp_path, uploads,
                                  ["car", "Sandwich", "Pizza", "Car"],
                                  [True, True, True, False])


def test_labelled_kept_images_join_the_train_split_only(sample_workspace, tmp_path):
    from flows.pipeline.stages import join_feedback
    from flows.run.params import settings_from

    workspace, _ = workspace_with_feedback(sample_workspace, tmp_path)
    settings = settings_from(workspace=str(workspace), use_feedback=True)
    before = pd.read_parquet(workspace / "dataset" / "crops.parquet")
    table = join_feedback(settings, before)
    added = table[table.Source == "feedback"]
    assert sorted(added.Class) == ["Car", "Sandwich"]  # Pizza is no class; row 3 not kept
    assert set(added.Split) == {"train"}
    assert set(table[table.Source == "openimages"].CropPath) == set(before.CropPath)
    assert added.Shard.nunique() == 1 and added.Shard.iloc[0].startswith("feedback-")
    for data in crop_images(added, workspace / "dataset"):
        with Image.open(io.BytesIO(data)) as crop:
            assert max(crop.size) == settings.crop_size and crop.format == "JPEG"
    assert pd.read_parquet(workspace / "dataset" / "crops.parquet").equals(table)
    off = join_feedback(settings_from(workspace=str(workspace)), before)
    assert set(off.Source) == {"openimages"}


def test_feedback_copies_of_held_out_crops_are_dropped_and_classes_capped(sample_workspace,
                                                                          tmp_path):
    from flows.pipeline.stages import FEEDBACK_REPORT, join_feedback, screened_summary
    from flows.run.params import settings_from

    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    held_out = table[table.Split == "test"].head(1)
    cars = table[(table.Split == "train") & (table.Class == "Car")]
    # A copy of a test crop as read from the shards, enlarged and sent as PNG ...
    with Image.open(io.BytesIO(crop_images(held_out, sample_workspace / "dataset")[0])) as crop:
        uploads = [png(crop.resize((crop.width * 3 // 2, crop.height * 3 // 2)))]
    # ... then three photos labelled Car, unlike any crop (random blocks, smoothed).
    rng = np.random.default_rng(7)
    uploads += [png(Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(
        (320, 240), Image.Resampling.BILINEAR)) for _ in range(3)]
    workspace, rows = workspace_with_uploads(sample_workspace, tmp_path, uploads,
                                             [held_out.Class.iloc[0], "Car", "Car", "Car"])
    share = 1.5 / (len(cars) + 1.5)  # feedback <= share / (1 - share) * train = 1.5: one Car
    settings = settings_from(workspace=str(workspace), use_feedback=True,
                             feedback_max_share=share)
    joined = join_feedback(settings, pd.read_parquet(workspace / "dataset" / "crops.parquet"))
    report = json.loads((workspace / "dataset" / FEEDBACK_REPORT).read_text())
    assert report["near_duplicates"] == [{"sha256": rows[0]["sha256"],
                                          "matches": held_out.CropPath.iloc[0]}]
    assert report["over_cap"] == {"Car": 2} and report["max_share"] == share
    added = joined[joined.Source == "feedback"]
    assert list(added.CropKey) == [rows[1]["sha256"]]  # the oldest Car upload only
    assert screened_summary(settings) == {"near_duplicates": 1, "over_cap": {"Car": 2}}


def test_an_s3_log_of_several_replicas_gives_its_labelled_images_too(
        sample_workspace, tmp_path, local_s3, monkeypatch):
    from flows.pipeline.stages import join_feedback
    from flows.run.params import settings_from

    workspace, _ = workspace_with_feedback(sample_workspace, tmp_path)
    logs = workspace / "predictions"
    local_s3.create_bucket("feedback-replicas", versioned=False)
    client = local_s3.client()
    for path in sorted(p for p in logs.rglob("*") if p.is_file()):
        client.upload_file(str(path), "feedback-replicas",
                           f"served/{path.relative_to(logs).as_posix()}")
    shutil.rmtree(logs)  # only S3 holds the log now
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    settings = settings_from(workspace=str(workspace), use_feedback=True,
                             prediction_log_dir="s3://feedback-replicas/served")
    table = join_feedback(settings, pd.read_parquet(workspace / "dataset" / "crops.parquet"))
    assert sorted(table[table.Source == "feedback"].Class) == ["Car", "Sandwich"]
    assert len(list((workspace / "feedback-images").iterdir())) == 3  # kept and labelled


def test_published_data_leaves_feedback_out_unless_asked(sample_workspace, tmp_path,
                                                         monkeypatch):
    from flows.pipeline import release, stages
    from flows.run.params import settings_from

    workspace, _ = workspace_with_feedback(sample_workspace, tmp_path)
    settings = settings_from(workspace=str(workspace), use_feedback=True)
    stages.join_feedback(settings, pd.read_parquet(workspace / "dataset" / "crops.parquet"))
    seen = []

    def publish(data, model_dir, meta, *args, **kwargs):
        table = pd.read_parquet(data / "crops.parquet")
        seen.append((set(table.get("Source", ["openimages"])),
                     any((data / "shards").glob("feedback-*.parquet"))))
        return {}

    monkeypatch.setattr(release, "publish", publish)
    monkeypatch.setattr(release, "opened", lambda *a: contextlib.nullcontext("s3://x"))
    trained = {"class_names": ["Car"], "class_mids": ["/m/0k4j"], "dataset_id": "d",
               "metrics": {"accuracy": 1}, "git_commit": "c", "model_tag": "m:1"}
    built = {"crops_per_class": {}, "crops_per_split": {}, "dataset_id": "d",
             "feedback_crops": 2}
    release.publish_bundle(settings, trained, built)
    release.publish_bundle(settings_from(workspace=str(workspace), use_feedback=True,
                                        publish_feedback=True), trained, built)
    assert seen == [({"openimages"}, False), ({"openimages", "feedback"}, True)]
    assert any((workspace / "dataset" / "shards").glob("feedback-*"))  # the workspace keeps them


def test_without_feedback_never_writes_through_a_hard_link(sample_workspace, tmp_path):
    workspace, _ = workspace_with_feedback(sample_workspace, tmp_path)
    from flows.pipeline.stages import join_feedback
    from flows.run.params import settings_from

    join_feedback(settings_from(workspace=str(workspace), use_feedback=True),
                  pd.read_parquet(workspace / "dataset" / "crops.parquet"))
    copy = without_feedback(workspace / "dataset", tmp_path / "copy")
    assert "feedback" not in set(pd.read_parquet(copy / "crops.parquet").Source)
    assert "feedback" in set(pd.read_parquet(workspace / "dataset" / "crops.parquet").Source)

"""Feedback into training: labelled kept images join the train split only, as Source
feedback, and stay out of published data unless publish_feedback is on."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil

import pandas as pd
from PIL import Image

from flows.openimages.card import crop_images
from flows.openimages.feedback import without_feedback
from tests.predictionlog import log_rows, write_feedback, write_log


def workspace_with_feedback(sample_workspace, tmp_path):
    """A workspace holding the sample's dataset and a prediction log: three kept, labelled
    images (one with a label of no class), one labelled but not kept."""
    workspace = tmp_path / "ws"
    shutil.copytree(sample_workspace / "dataset", workspace / "dataset")
    table = pd.read_parquet(workspace / "dataset" / "crops.parquet")
    classes = sorted(table.Class.unique())
    logs = workspace / "predictions"
    rows = log_rows(table[table.Split == "test"].head(4), classes, kept=True)
    rows[3]["kept"] = False
    for i, row in enumerate(rows):
        buffer = io.BytesIO()
        Image.new("RGB", (400 + i, 300), (i * 40, 90, 30)).save(buffer, format="PNG")
        row["sha256"], row["format"] = hashlib.sha256(buffer.getvalue()).hexdigest(), "PNG"
        (logs / "images").mkdir(parents=True, exist_ok=True)
        (logs / "images" / f"{row['sha256']}.png").write_bytes(buffer.getvalue())
    write_log(logs, rows)
    write_feedback(logs, {rows[0]["request_id"]: "car", rows[1]["request_id"]: "Sandwich",
                          rows[2]["request_id"]: "Pizza", rows[3]["request_id"]: "Car"})
    return workspace, rows


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

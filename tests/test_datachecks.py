"""Data checks before training: an induced anomaly (one class's images gone) stops the
retrain before training, with a report naming each check, old and new value and threshold."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from flows.watching.datachecks import (
    PROFILE,
    DataAnomaly,
    compare,
    markdown,
    outcome,
    profile,
    verdict,
)


def sample_profile(workspace):
    return json.loads((workspace / "dataset" / PROFILE).read_text())


def test_the_build_records_a_profile_of_its_dataset(sample_workspace):
    recorded = sample_profile(sample_workspace)
    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    assert recorded["classes"] == sorted(table.Class.unique())
    assert recorded["crops_per_class"] == table.Class.value_counts().to_dict()
    assert recorded["leaked_images"] == 0
    assert 0 < recorded["download_failure_rate"] < 0.05  # the sample has 2 'gone' photos


def test_a_class_whose_images_vanished_stops_the_run_with_a_report(sample_workspace, tmp_path):
    old = sample_profile(sample_workspace)
    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    manifest = pd.read_parquet(sample_workspace / "downloads.parquet")
    gone = set(table[table.Class == "Car"].ImageID)
    manifest.loc[manifest.ImageID.isin(gone), "Status"] = "gone"
    new = profile(table[table.Class != "Car"], manifest, {})
    checks = compare(new, old, ["Hamburger", "Sandwich", "Car"])
    failed = {c.name for c in checks if not c.ok}
    assert failed == {"classes present", "crops of Car", "download failure rate"}
    report = outcome(checks, "m:1", accepted=False)
    text = markdown(report)
    assert "| crops of Car | 123 | 0 | > 0 and >= 0.5 x old | **NO** |" in text
    with pytest.raises(DataAnomaly, match=r"crops of Car.*see .*datachecks.json"):
        verdict(report, tmp_path / "datachecks.json")
    verdict(outcome(checks, "m:1", accepted=True), tmp_path / "datachecks.json")  # overridden


def test_the_same_dataset_passes_and_no_previous_one_means_absolute_checks(sample_workspace):
    old = sample_profile(sample_workspace)
    assert all(c.ok for c in compare(old, old, ["Hamburger", "Sandwich", "Car"]))
    alone = compare(old, None, ["Hamburger"])
    assert all(c.ok for c in alone) and all(c.old is None for c in alone)


def test_a_drop_of_more_than_half_and_split_leakage_fail(sample_workspace):
    old = sample_profile(sample_workspace)
    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    manifest = pd.read_parquet(sample_workspace / "downloads.parquet")
    cars = table[table.Class == "Car"]
    thinner = pd.concat([table[table.Class != "Car"], cars.head(len(cars) // 3)])
    leaked = thinner.copy()
    leaked.loc[leaked.index[0], "Split"] = "test" if leaked.Split.iloc[0] != "test" else "train"
    leaked = pd.concat([leaked, thinner.iloc[[0]]])  # the same image in two splits
    failed = {c.name for c in compare(profile(leaked, manifest, {}), old, []) if not c.ok}
    assert failed == {"crops of Car", "images in two splits"}
    skipping = profile(table, manifest, {"too small": len(table)})
    assert {c.name for c in compare(skipping, old, []) if not c.ok} == {"crop skip rate"}


@pytest.mark.integration
def test_the_retrain_flow_stops_before_training_on_an_anomaly(sample_workspace, mirror,
                                                              local_s3, harness, tmp_path,
                                                              monkeypatch):
    import bentoml

    from flows.commands.errors import BAD_INPUT, expected
    from flows.promotion.bentoml_store import promote
    from flows.retrain import retrain

    workspace = tmp_path / "ws"
    shutil.copytree(sample_workspace, workspace, symlinks=True)
    # The promoted model was trained on a dataset with twice as many Car crops.
    old = sample_profile(sample_workspace)
    old["crops_per_class"]["Car"] *= 3
    with bentoml.models.create("checks-model", metadata={"dataset_profile": old}) as stored:
        tag = str(stored.tag)
    promote(tag)
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", "checks-model")
    options = dict(classes=["Hamburger", "Sandwich", "Car"], workspace=str(workspace),
                   metadata_url=mirror.url, image_endpoint_url=local_s3.endpoint_url,
                   architecture="seed-cnn", epochs=1, image_size=32)
    with pytest.raises(DataAnomaly, match="crops of Car") as raised:
        retrain(**options)
    assert expected(raised.value).code == BAD_INPUT
    report = json.loads((workspace / "summaries" / "datachecks.json").read_text())
    assert report["failed"] == ["crops of Car"] and report["compared_with"] == tag
    car = next(c for c in report["checks"] if c["name"] == "crops of Car")
    assert car["old"] == 3 * car["new"] and car["threshold"] == "> 0 and >= 0.5 x old"
    assert not (workspace / "model" / "model.keras").exists()  # stopped before training

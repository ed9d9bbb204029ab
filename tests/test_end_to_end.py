"""The whole job on the sample through real servers, ending with an HTTP classification."""

from pathlib import Path

import pandas as pd
import pytest
import quilt3

from flows.demo import report, run_demo
from flows.publishing.registries import opened

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory, local_s3, harness):
    workspace = tmp_path_factory.mktemp("demo")
    result = run_demo(workspace, epochs=3, image_size=48, s3=local_s3)
    return workspace, result


def test_every_stage_ran_on_the_sample(demo):
    workspace, result = demo
    assert set(result["refresh"]["classes"]) == {"Hamburger", "Sandwich", "Car"}
    assert result["refresh"]["downloads"].get("gone", 0) >= 1
    assert result["dataset"]["crops"] > 100
    assert result["dataset"]["skipped"] == {}
    table = pd.read_parquet(workspace / "dataset" / "crops.parquet")
    # No photo contributes crops to two splits.
    assert table.groupby("ImageID").Split.nunique().max() == 1
    assert result["train"]["metrics"]["test_examples"] == int((table.Split == "test").sum())


def test_the_service_answers_over_http(demo):
    _, result = demo
    answer = result["serve"]["answer"]
    assert answer["model"] == result["train"]["model_tag"]
    labels = [entry["label"] for entry in answer["labels"]]
    assert set(labels) == {"Hamburger", "Sandwich", "Car"}
    assert abs(sum(entry["probability"] for entry in answer["labels"]) - 1.0) < 1e-3
    assert result["publish"]["top_hash"] in report(result)


def test_the_published_package_installs_by_top_hash(demo, tmp_path):
    workspace, result = demo
    published = result["publish"]
    dest = tmp_path / "bundle"
    # The embedded registry stopped with the demo: this starts it again from its saved state.
    with opened("embedded", workspace / "registry") as registry:
        quilt3.Package.install(published["name"], registry=registry,
                               top_hash=published["top_hash"], dest=str(dest))
    assert (dest / "model" / "model.keras").stat().st_size > 0
    assert (dest / "data" / "crops.parquet").exists()
    installed = pd.read_parquet(dest / "data" / "crops.parquet")
    assert len(installed) == result["dataset"]["crops"]

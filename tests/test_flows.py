"""The Prefect flows as a user meets them: bad parameters fail before any work, and a rerun
of a failed retrain resumes instead of starting over."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_misspelt_class_fails_at_once_with_suggestions_and_no_retry(harness, mirror,
                                                                      tmp_path):
    from flows.refresh import refresh

    state = refresh(classes=["Hamburgr"], workspace=str(tmp_path), metadata_url=mirror.url,
                    return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="unknown Open Images class 'Hamburgr'; closest: "
                                         "Hamburger"):
        state.result()
    assert not (tmp_path / "selection.parquet").exists()  # nothing heavy started
    assert not (tmp_path / "images").exists()


def test_parameters_are_typed(harness, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.retrain import retrain

    with pytest.raises(ParameterTypeError, match="openimages_version"):
        retrain(openimages_version="v9", workspace=str(tmp_path))


def test_retries_stop_at_errors_another_try_cannot_mend():
    from prefect.states import Completed, Failed

    from flows.openimages.ontology import UnknownClassError
    from flows.run.params import retry_unless

    retry = retry_unless(UnknownClassError)
    assert not retry(None, None, Failed(data=UnknownClassError("Hamburgr")))
    assert retry(None, None, Failed(data=ConnectionError("reset by peer")))
    assert not retry(None, None, Completed(data=1))


@pytest.mark.slow
def test_a_rerun_after_a_failed_publish_resumes(harness, mirror, local_s3, registry_env,
                                                tmp_path, monkeypatch):
    import flows.publish
    from flows.retrain import retrain

    real = flows.publish.release.publish_bundle

    def broken(*args, **kwargs):
        raise RuntimeError("registry went away")

    params = {"classes": ["Hamburger", "Sandwich"], "workspace": str(tmp_path),
              "metadata_url": mirror.url, "image_endpoint_url": local_s3.endpoint_url,
              "registry": registry_env, "package_name": "resume/classifier",
              "max_images_per_class": 15, "architecture": "seed-cnn", "epochs": 1,
              "image_size": 32}
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", "resume-classifier")  # promoted: a first model
    monkeypatch.setattr(flows.publish.release, "publish_bundle", broken)
    assert retrain(**params, return_state=True).is_failed()
    files = sorted([*(tmp_path / "dataset" / "shards").glob("*.parquet"),
                    *(tmp_path / "images").rglob("*.jpg")])
    stamps = [p.stat().st_mtime_ns for p in files]
    assert len(files) > 20

    monkeypatch.setattr(flows.publish.release, "publish_bundle", real)
    result = retrain(**params)
    assert result["train"]["reused"], "the model trained by the failed run is reused"
    assert result["publish"]["top_hash"]
    # No image was downloaded and no crop made again.
    assert [p.stat().st_mtime_ns for p in files] == stamps

    # The publish flow alone takes the workspace's last summaries: nothing changed, no revision.
    from flows.publish import publish

    again = publish(workspace=str(tmp_path), registry=registry_env,
                    package_name="resume/classifier")
    assert again["top_hash"] == result["publish"]["top_hash"] and not again["pushed"]


@pytest.mark.parametrize("name", ["retrain", "train"])
def test_weights_out_of_reach_fail_the_flow_before_any_work(name, harness, mirror, no_internet,
                                                           tmp_path, monkeypatch):
    from flows.retrain import retrain
    from flows.train import train
    from model.pretrained import WeightsUnreachable, cached_file, weights_url

    monkeypatch.delenv("OPENIMAGER_WEIGHTS", raising=False)  # the default: ImageNet's
    workspace = tmp_path / "ws"
    params = {"workspace": str(workspace), "architecture": "transfer"}
    if name == "retrain":  # as the weekly deployment runs it
        params |= {"classes": ["Hamburger", "Sandwich"], "metadata_url": mirror.url}
    state = {"retrain": retrain, "train": train}[name](**params, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, WeightsUnreachable)
    first, hint = str(error).splitlines()  # as `python -m flows` prints it
    assert str(cached_file("MobileNetV3Small", no_internet)) in first
    assert weights_url("MobileNetV3Small") in first
    assert "OPENIMAGER_WEIGHTS" in hint and "architecture: seed-cnn" in hint
    assert first in state.message and hint.strip() in state.message
    assert not workspace.exists()  # no metadata, selection, crops or model: nothing started


def test_the_seed_cnn_needs_no_weights_to_start(harness, mirror, no_internet, tmp_path):
    from flows.retrain import retrain

    workspace = tmp_path / "ws"
    state = retrain(classes=["Hamburgr"], workspace=str(workspace), metadata_url=mirror.url,
                    architecture="seed-cnn", return_state=True)
    # Past the weights, without a network: the run reads the class files, then stops on the name.
    with pytest.raises(ValueError, match="unknown Open Images class 'Hamburgr'"):
        state.result()
    assert (workspace / "metadata").exists()

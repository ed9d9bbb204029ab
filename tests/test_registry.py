"""The BentoML model store: lineage, reloading, and the promotion gate through stages.train."""

import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                 reason="keras is not installed")]

NAME = "gate-test-classifier"


def workspace_with(sample_workspace, table, dest):
    """A workspace sharing the sample's shards, with its own crops table."""
    (dest / "dataset").mkdir(parents=True)
    (dest / "dataset" / "shards").symlink_to(sample_workspace / "dataset" / "shards")
    table.to_parquet(dest / "dataset" / "crops.parquet", index=False)
    return dest


def train_stage(workspace, epochs, force=False, name=NAME, reuse=False, **more):
    from flows.pipeline import stages
    from flows.settings import Settings

    # Unless more says otherwise, the gate scores the whole test split (holdout_share 0).
    settings = Settings(workspace=workspace, architecture="seed-cnn", image_size=32,
                        epochs=epochs, batch_size=32, patience=epochs, model_name=name,
                        force_promote=force, reuse_trained=reuse,
                        **{"holdout_share": 0.0, **more})
    return stages.train(settings)


@pytest.fixture(scope="module")
def runs(sample_workspace, tmp_path_factory):
    """Four trainings on the same test split: bad (first), good, bad again, bad forced."""
    from flows.promotion.bentoml_store import promoted

    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    shuffled = table.copy()
    seen = shuffled.Split != "test"
    rng = np.random.default_rng(1)
    shuffled.loc[seen, "Class"] = rng.permutation(shuffled.loc[seen, "Class"].to_numpy())
    good_ws = workspace_with(sample_workspace, table, tmp_path_factory.mktemp("good"))
    bad_ws = workspace_with(sample_workspace, shuffled, tmp_path_factory.mktemp("bad"))
    out = {}
    for step, workspace, epochs, force in (("first", bad_ws, 1, False), ("good", good_ws, 5, False),
                                           ("worse", bad_ws, 1, False),
                                           ("forced", bad_ws, 1, True)):
        out[step] = train_stage(workspace, epochs, force)
        out[f"{step}_record"] = promoted(NAME)
    return out


def test_stored_metadata_carries_the_lineage(runs):
    import bentoml

    stored = bentoml.models.get(runs["good"]["model_tag"])
    meta = stored.info.metadata
    assert meta["class_names"] == ["Car", "Hamburger", "Sandwich"]
    assert meta["class_mids"] == ["/m/0k4j", "/m/0cdn1", "/m/0l515"]
    assert meta["image_size"] == 32 and meta["architecture"] == "seed-cnn"
    assert len(meta["dataset_id"]) >= 8 and meta["openimages_version"] == "v6"
    assert meta["git_commit"] and meta["train_seconds"] > 0 and meta["trained_at"]
    assert meta["metrics"]["test_examples"] == runs["good"]["metrics"]["test_examples"]
    assert {"accuracy", "macro_f1", "roc_auc", "per_class"} <= set(meta["metrics"])
    assert stored.info.labels["dataset"] == meta["dataset_id"]
    assert {"model.keras", "metrics.json", "confusion_matrix.png"} <= {
        p.name for p in Path(stored.path).iterdir()}


def test_first_run_is_promoted_then_the_gate_decides(runs):
    first, good, worse, forced = (runs[k] for k in ("first", "good", "worse", "forced"))
    assert first["promoted"] and "first model" in first["promotion_reason"]
    assert runs["first_record"]["tag"] == first["model_tag"]

    # Better than the promoted model on the same test split: promoted.
    assert good["metrics"]["macro_f1"] > first["metrics"]["macro_f1"]
    assert good["promoted"], good["promotion_reason"]
    assert runs["good_record"]["tag"] == good["model_tag"]
    # The promoted model was re-scored on the new run's test split, not copied from its record.
    assert good["promotion"]["incumbent_score"] == first["metrics"]["macro_f1"]

    # Worse: registered but not promoted, and the reason says so.
    assert not worse["promoted"]
    reason = worse["promotion_reason"]
    assert "not better beyond the margin" in reason and "kept in the store" in reason
    assert worse["promotion"]["incumbent_score"] == good["metrics"]["macro_f1"]
    assert runs["worse_record"]["tag"] == good["model_tag"]

    assert forced["promoted"] and "forced" in forced["promotion_reason"]
    assert runs["forced_record"]["tag"] == forced["model_tag"]
    assert runs["forced_record"]["metric"] == "macro_f1"


def test_another_class_set_is_not_scored(runs):
    from flows.promotion.bentoml_store import incumbent

    def never(*_):
        raise AssertionError("a model with other classes must not be scored")

    theirs = incumbent(NAME, ["Car", "Hamburger"], never)
    assert theirs.score is None and set(theirs.class_names) == {"Car", "Hamburger", "Sandwich"}


def test_reloaded_model_predicts_like_the_one_in_memory(sample_workspace, tmp_path):
    from flows.openimages.card import crop_images
    from flows.promotion.bentoml_store import load_model, register_model
    from model.train import TrainConfig, train

    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    shards = sample_workspace / "dataset" / "shards"
    result = train(table, shards, tmp_path, TrainConfig(architecture="seed-cnn", image_size=32,
                                                        epochs=1, tensorboard=False))
    tag = register_model(tmp_path, "reload-test", {"class_names": result.class_names,
                                                    "image_size": 32}, {"test": "yes"})
    reloaded, meta = load_model(tag)
    assert meta["class_names"] == result.class_names
    for data in crop_images(table[table.Split == "test"][:5], sample_workspace / "dataset"):
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]  # raw, own size
        np.testing.assert_allclose(reloaded.predict(pixels, verbose=0),
                                   result.model.predict(pixels, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_rerun_on_the_same_dataset_reuses_the_trained_model(sample_workspace, tmp_path):
    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    workspace = workspace_with(sample_workspace, table, tmp_path / "ws")
    first = train_stage(workspace, 1, name="reuse-test", reuse=True)
    assert not first["reused"] and first["promoted"]
    model = workspace / "model" / "model.keras"
    model.unlink()  # as if another training had replaced the folder since
    again = train_stage(workspace, 1, name="reuse-test", reuse=True)
    assert again["reused"] and again["model_tag"] == first["model_tag"]
    assert again["metrics"] == first["metrics"] and again["promoted"]
    assert "already the promoted model" in again["promotion_reason"]
    assert model.exists()  # restored from the store, for publishing
    other = train_stage(workspace, 2, name="reuse-test", reuse=True)  # another config
    assert not other["reused"] and other["model_tag"] != first["model_tag"]


@pytest.fixture(scope="module")
def wired(sample_workspace, tmp_path_factory):
    """Two trainings through stages.train with a holdout slice and, the second, a confidence
    of its own; the photos the gate compares are recorded on the way in."""
    from flows.promotion import bentoml_store

    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    workspace = workspace_with(sample_workspace, table, tmp_path_factory.mktemp("wired"))
    seen = {"candidate": [], "incumbent": []}
    real = bentoml_store.gate

    def watched(tag, class_names, metric, value, score, *args, candidate=None, **kwargs):
        def scored(model, metadata):
            answers = score(model, metadata)
            seen["incumbent"].append(answers.photos)
            return answers

        seen["candidate"].append(candidate.photos)
        return real(tag, class_names, metric, value, scored, *args, candidate=candidate,
                    **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bentoml_store, "gate", watched)
        first = train_stage(workspace, 1, name="wiring-test", holdout_share=0.25)
        second = train_stage(workspace, 1, name="wiring-test", holdout_share=0.25,
                             promotion_confidence=0.8)
    return {"table": table, "workspace": workspace, "first": first, "second": second,
            "seen": seen}


def test_the_stored_metrics_carry_intervals_holdout_and_calibration(wired):
    import bentoml

    from flows.pipeline.stages import last_summary
    from flows.settings import Settings
    from model.intervals import holdout

    test = wired["table"][wired["table"].Split == "test"]
    held = holdout(list(test.ImageID), 0.25)
    classes = ["Car", "Hamburger", "Sandwich"]
    stored = bentoml.models.get(wired["first"]["model_tag"]).info.metadata["metrics"]
    summary = last_summary(Settings(workspace=wired["workspace"]), "train")
    assert summary["model_tag"] == wired["second"]["model_tag"]
    for metrics in (stored, wired["first"]["metrics"], summary["metrics"]):
        bounds = metrics["intervals"]
        assert len(bounds["accuracy"]) == 2 and bounds["photos"] == test.ImageID.nunique()
        assert sorted(bounds["per_class"]) == classes
        assert all(len(bounds["per_class"][c]["f1"]) == 2 for c in classes)
        found = metrics["holdout"]
        assert found["share"] == 0.25 and found["test_examples"] == int(held.sum()) > 0
        assert found["accuracy"] is not None and found["intervals"]["accuracy"]
        calibration = metrics["calibration"]
        assert calibration["temperature"] > 0 and calibration["fitted_on"] == "validation"
        assert {"identifiable", "ece_before", "ece_after"} <= set(calibration)


def test_the_gate_compares_the_test_photos_without_the_holdout(wired):
    from model.intervals import holdout

    test = wired["table"][wired["table"].Split == "test"]
    held = holdout(list(test.ImageID), 0.25)
    holdout_photos, gate_photos = set(test.ImageID[held]), set(test.ImageID[~held])
    assert holdout_photos and gate_photos
    seen = wired["seen"]
    assert len(seen["candidate"]) == 2 and len(seen["incumbent"]) == 1  # the first had none
    for photos in (*seen["candidate"], *seen["incumbent"]):
        assert len(photos) == int((~held).sum())  # every gate crop, no holdout crop
        assert set(photos) == gate_photos and not set(photos) & holdout_photos
    second = wired["second"]["promotion"]
    assert second["photos"] == len(gate_photos) < test.ImageID.nunique()
    # The confidence given in the settings is the one the gate decided with.
    assert second["confidence"] == 0.8 and second["margin"] == 0.0

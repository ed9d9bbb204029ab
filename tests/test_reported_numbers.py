"""Every published figure comes with its interval and says what it measures: metrics.json's
intervals reach the package README, the run report, GET /model and the demo's last lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from model.evaluate import classification_metrics


def metrics() -> dict:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    probs = np.eye(3)[np.where(rng.uniform(size=60) < 0.8, truth, (truth + 1) % 3)] * 0.7 + 0.1
    photos = [f"photo{i // 2}" for i in range(60)]  # two crops a photo
    found = classification_metrics(truth, probs, ["A", "B", "C"], photos)
    found["calibration"] = {"temperature": 1.7, "ece_before": 0.21, "ece_after": 0.04}
    found["holdout"] = {"share": 0.25, "test_examples": 14, "accuracy": 0.7857,
                        "intervals": {"accuracy": [0.5714, 1.0], "photos": 7}}
    return found


def test_intervals_are_over_photos_and_seeded():
    found = metrics()
    bounds = found["intervals"]
    assert bounds["photos"] == 30 and bounds["method"].endswith("source photos")
    assert bounds["accuracy"][0] < found["accuracy"] < bounds["accuracy"][1]
    assert bounds["per_class"]["B"]["recall"][0] <= found["per_class"]["B"]["recall"]
    assert metrics()["intervals"] == bounds  # seeded: the same numbers every run
    one_photo_each = classification_metrics(np.array([0, 1]), np.eye(2), ["a", "b"])
    assert one_photo_each["intervals"]["photos"] == 2


def meta(synthetic: bool, architecture: str = "seed-cnn") -> dict:
    return {"package": "o/c", "registry": "s3://r", "classes": ["A", "B", "C"],
            "class_mids": {"A": "/m/a", "B": "/m/b", "C": "/m/c"},
            "crops_per_class": {"A": 20, "B": 20, "C": 20}, "dataset_id": "d",
            "git_commit": "c" * 40, "model_tag": "m:1", "metrics": metrics(),
            "train_config": {"architecture": architecture, "image_size": 96,
                             "weights": "imagenet", "backbone": "MobileNetV3Small"},
            "synthetic": synthetic}


def test_the_package_readme_gives_intervals_and_says_what_was_trained():
    from flows.publishing.bundle import readme

    found = meta(True)
    text = readme(found)
    low, high = found["metrics"]["intervals"]["accuracy"]
    assert f"95% CI {low:.4g}-{high:.4g}" in text and "30 photos" in text
    assert "seed CNN" in text and "96 px" in text and "SYNTHETIC" in text
    assert "T = 1.7" in text and "0.21 before, 0.04 after" in text
    assert "Holdout (the 25% of test photos the promotion gate never scores, 14 crops)" in text
    # A seed-CNN build says what a real run trains instead, and the settings that ask for it.
    assert "A real run uses transfer learning instead: MobileNetV3Small on ImageNet weights" \
        in text and "`OPENIMAGER_ARCHITECTURE=transfer`" in text
    assert "`OPENIMAGER_WEIGHTS=imagenet`" in text
    real = readme(meta(False, "transfer"))
    assert "ImageNet weights" in real and "SYNTHETIC" not in real
    assert "A real run uses" not in real


def test_a_temperature_that_could_not_be_fitted_is_said_so():
    from flows.demo import calibration_line
    from flows.pipeline.artifacts import train_section
    from flows.publishing.bundle import readme

    found = meta(True)
    found["metrics"]["calibration"] = {"temperature": 1.0, "identifiable": False,
                                       "ece_before": 0.08, "ece_after": 0.08}
    text = readme(found)
    assert ("Probabilities are not calibrated (validation separated perfectly, so no "
            "temperature could be fitted): the temperature inside `model.keras` stays "
            "T = 1.0") in text
    assert "calibrated by temperature scaling" not in text
    report = "\n".join(train_section({"metrics": found["metrics"], "model_tag": "m:1",
                                      "promoted": True, "promotion_reason": "first"}, None))
    assert "temperature 1.0 (not fitted: validation separated perfectly" in report
    assert "no temperature could be fitted" in calibration_line(found["metrics"])


def test_the_run_report_and_the_demo_lines_carry_intervals():
    from flows.demo import calibration_line
    from flows.pipeline.artifacts import train_section
    from model.intervals import stated

    found = metrics()
    text = "\n".join(train_section({"metrics": found, "model_tag": "m:1", "promoted": True,
                                    "promotion_reason": "first"}, None))
    assert stated(found, "accuracy") in text and "CI" in stated(found, "accuracy")
    assert "temperature 1.7" in text and "ECE 0.21 before, 0.04 after" in text
    assert "never scores, 14 crops): accuracy 0.7857 (95% CI 0.5714-1)" in text
    assert "0.21 before, 0.04 after" in calibration_line(found)


def test_get_model_passes_the_intervals_through(tmp_path):
    from service.source import Choice, Located, lineage

    found = metrics()
    info = lineage(Choice("env", "m:1"), Located(tmp_path / "model.keras",
                                                  {"class_names": ["A", "B", "C"],
                                                   "metrics": found}, "m:1"), 96)
    assert info["metrics"]["intervals"]["accuracy"] == found["intervals"]["accuracy"]
    assert info["metrics"]["calibration"]["ece_after"] == 0.04


def test_the_card_names_class_weights_only_when_used_and_says_what_is_trained():
    from flows.openimages.card import card_text

    table = pd.DataFrame({"Class": ["A", "B"], "ClassMID": ["/m/a", "/m/b"],
                          "Split": ["train", "test"], "CropPath": ["a.jpg", "b.jpg"],
                          "ImageID": ["i1", "i2"], "License": ["x", "x"], "Author": ["p", "q"]})
    skipped = pd.DataFrame({"Status": []})
    training = {"architecture": "seed-cnn", "image_size": 96, "weights": None,
                "crop_size": 256, "min_box_pixels": 32}
    unused = card_text(table, skipped, {"class_weights": None, "training": training,
                                        "synthetic": True})
    assert "Class weights used" not in unused and "weighs every crop alike" in unused
    assert "seed CNN" in unused and "synthetic" in unused and "upscaled 3x" in unused
    assert "A real run uses transfer learning instead: MobileNetV3Small on ImageNet weights" \
        in unused and "`OPENIMAGER_ARCHITECTURE=transfer`" in unused
    transfer = card_text(table, skipped, {"training": {**training, "architecture": "transfer",
                                                       "weights": "imagenet"}})
    assert "A real run uses" not in transfer and "a real run uses ImageNet weights" in transfer
    used = card_text(table, skipped, {"class_weights": {"A": 0.5, "B": 2.0}})
    assert "Class weights used in training" in used and "A 0.5" in used


def test_min_box_pixels_default_follows_the_model_input():
    from flows.openimages.crop import CropOptions
    from flows.settings import Settings

    settings = Settings()
    # One default: cropping with CropOptions() skips exactly what a pipeline run skips.
    assert CropOptions().min_pixels == settings.min_box_pixels == 32
    # A box under the default is upscaled more than about 5x to the model's input.
    assert settings.image_size / settings.min_box_pixels <= 5
    assert Path("docs/training.md").read_text().count("OPENIMAGER_MIN_BOX_PIXELS") >= 1


def test_the_gate_never_scores_the_holdout_photos():
    from flows.pipeline.stages import gate_rows
    from model.intervals import holdout

    photos = [f"img{i}" for i in range(400)]
    table = pd.DataFrame({"ImageID": photos * 2, "Split": ["test"] * 400 + ["train"] * 400})
    rows = gate_rows(table, 0.25)
    held = set(np.array(photos)[holdout(photos, 0.25)])
    assert set(rows.Split) == {"test"} and held and not held & set(rows.ImageID)
    assert len(rows) + len(held) == 400 and len(gate_rows(table, 0.0)) == 400


def test_the_demo_report_prints_the_interval_and_an_unsure_answer():
    from flows.demo import report

    found = metrics()
    result = {
        "refresh": {"classes": {}, "images": 30, "downloads": {"ok": 30}},
        "dataset": {"crops": 60, "crops_per_split": {}, "skipped": {}, "crops_per_class": {}},
        "train": {"metrics": found, "model_tag": "m:1", "promoted": True, "image_size": 96,
                  "promotion_reason": "first model"},
        "publish": None,
        "serve": {"url": "http://127.0.0.1:1/classify", "true_class": "A",
                  "answer": {"labels": [{"label": "A", "probability": 0.5}], "seconds": 0.1,
                             "unsure": True}}}
    text = report(result)
    low, high = found["intervals"]["accuracy"]
    assert f"accuracy on synthetic scenes: {found['accuracy']} (95% CI {low:.4g}-{high:.4g})" \
        in text
    assert "30 photos" in text and "seed CNN at 96 px" in text and "[unsure]" in text
    assert "holdout (the 25% of test photos the promotion gate never scores" in text

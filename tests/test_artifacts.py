"""The run report: what it says for each stage, and the pictures it carries."""

import base64

import numpy as np
from PIL import Image

from flows.pipeline.artifacts import classification_rows, inline_image, report
from model.evaluate import classification_metrics

REFRESH = {"classes": {"Car": {"mid": "/m/0k4j", "images": 10, "boxes": 12}},
           "images": 10, "boxes": 12, "downloads": {"ok": 9, "gone": 1}}
DATASET = {"dataset_id": "abc123", "crops": 11, "images": 9, "crops_per_class": {"Car": 11},
           "crops_per_split": {"test": 2, "train": 7, "validation": 2},
           "crops_per_class_split": {"Car": {"test": 2, "train": 7, "validation": 2}},
           "skipped": {"too-small": 1}}
METRICS = {"accuracy": 0.9, "macro_f1": 0.8, "roc_auc": None, "test_examples": 2,
           "per_class": {"Car": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}}}
TRAINED = {"model_tag": "clf:v1", "metrics": METRICS, "promoted": False, "reused": True,
           "promotion_reason": "macro_f1 0.8 < 0.9 of the promoted clf:v0"}


def test_the_report_covers_every_stage_that_ran(tmp_path):
    grid = tmp_path / "sample_grid.png"
    Image.new("RGB", (1200, 300), (255, 0, 0)).save(grid)
    text = report("openimager retrain", {"refresh": REFRESH, "dataset": DATASET,
                                         "train": TRAINED, "publish": None},
                  {"sample_grid": grid, "confusion_matrix": tmp_path / "missing.png"})
    assert "| Car | /m/0k4j | 10 | 12 |" in text and "gone 1, ok 9" in text
    assert "| Car | 11 | 2 | 7 | 2 |" in text and "too-small 1" in text
    assert "**NOT promoted**: macro_f1 0.8 < 0.9" in text and "reused" in text
    assert "Not published: the model was not promoted" in text
    assert text.count("data:image/png;base64,") == 1  # the missing picture is left out


def test_the_dataset_section_counts_what_the_feedback_screen_kept_out():
    screened = {**DATASET, "feedback_crops": 3,
                "feedback_screen": {"near_duplicates": 2, "over_cap": {"Car": 4}}}
    text = report("x", {"dataset": screened}, {})
    assert "3 of them from labelled served images" in text
    assert ("Feedback kept out of training: 2 near-duplicates of validation or test crops; "
            "over the cap per class: Car 4.") in text
    assert "Feedback kept out" not in report("x", {"dataset": {**DATASET,
                                                               "feedback_screen": None}}, {})


def test_a_published_run_names_its_top_hash():
    published = {"name": "openimager/classifier", "registry": "s3://bucket",
                 "top_hash": "f" * 64, "pushed": False}
    text = report("x", {"publish": published, "train": {**TRAINED, "promoted": True}}, {})
    assert f"top hash `{'f' * 64}` (unchanged, no new revision)" in text


def test_pictures_are_embedded_shrunk(tmp_path):
    path = tmp_path / "confusion_matrix.png"
    Image.new("RGB", (2000, 1000)).save(path)
    markdown = inline_image(path, side=100)
    assert markdown.startswith("![confusion matrix](data:image/png;base64,")
    data = base64.b64decode(markdown.split(",", 1)[1].rstrip(")"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert inline_image(tmp_path / "absent.png") is None


def test_classification_rows_are_one_per_class_with_their_intervals():
    assert classification_rows(METRICS) == [  # recorded before intervals were
        {"class": "Car", "precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}]
    bounds = {"confidence": 0.95, "per_class": {"Car": {"precision": [0.8, 1.0],
                                                        "recall": [0.25, 0.75],
                                                        "f1": [0.4, 0.8571]}}}
    assert classification_rows({**METRICS, "intervals": bounds}) == [
        {"class": "Car", "precision": 1.0, "precision 95% CI": "0.8-1", "recall": 0.5,
         "recall 95% CI": "0.25-0.75", "f1": 0.667, "f1 95% CI": "0.4-0.8571", "support": 2}]
    # As training records them: every class's F1 with the interval of metrics.json.
    truth, probs = [0, 0, 1, 1, 1, 0], [[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6],
                                         [0.6, 0.4], [0.8, 0.2]]
    found = classification_metrics(np.array(truth), np.array(probs), ["A", "B"],
                                   ["p1", "p1", "p2", "p3", "p4", "p5"])
    rows = classification_rows(found)
    assert [r["class"] for r in rows] == ["A", "B"]
    for row in rows:
        low, high = found["intervals"]["per_class"][row["class"]]["f1"]
        assert row["f1 95% CI"] == f"{low:.4g}-{high:.4g}" and low <= row["f1"] <= high


def test_a_shadow_replay_shows_its_figures_and_flip_matrix():
    from model.shadow import Replayed, ShadowRule, compare, judge

    replayed = Replayed(tuple("abcd"), ("Car", "Hamburger"),
                        np.array([[0.9, 0.1]] * 2 + [[0.1, 0.9]] * 2),
                        np.array([[0.2, 0.8]] * 3 + [[0.9, 0.1]]), (None, "Car", None, None))
    found = compare(replayed)
    passes, reason = judge(found, ShadowRule(min_images=1),
                           "clf:v1", "clf:v0")
    shadow = {**found, "candidate": "clf:v1", "incumbent": "clf:v0", "since": "t0",
              "log": "logs", "passes": passes, "reason": reason, "seconds": 0.1,
              "images_per_second": 40.0}
    trained = {**TRAINED, "promotion": {"shadow": shadow}}
    text = report("openimager retrain", {"train": trained}, {})
    assert "## Shadow replay" in text and "on 4 kept uploads since t0" in text
    assert "| promoted / candidate | Car | Hamburger |" in text
    assert "| Car | 0 | 2 |" in text and "| Hamburger | 1 | 1 |" in text
    assert "REFUSED: shadow replay on 4 kept uploads" in text

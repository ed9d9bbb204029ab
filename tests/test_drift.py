"""Drift in the report: a replay of only hamburgers shows class-mix drift, a replay of the
test split's own mix does not; the command prints the same summary."""

from __future__ import annotations

import importlib.util
import json
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from flows.watching.drift import Reference, drift, lines
from tests.predictionlog import log_rows, write_feedback, write_log

NO_FEEDBACK = pd.DataFrame(columns=["request_id", "label", "time", "model"])


@pytest.fixture(scope="module")
def test_split(sample_workspace):
    table = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    return table[table.Split == "test"]


def reference_of(test, top=()):
    return Reference(test.Class.value_counts().astype(float).to_dict(), test.Width.tolist(),
                     test.Height.tolist(), list(top))


def test_hamburgers_only_drift_and_the_test_mix_does_not(test_split):
    classes = sorted(test_split.Class.unique())
    same = drift(pd.DataFrame(log_rows(test_split, classes)), NO_FEEDBACK,
                 reference_of(test_split))
    burgers = test_split[test_split.Class == "Hamburger"]
    skewed = drift(pd.DataFrame(log_rows(burgers, classes)), NO_FEEDBACK,
                   reference_of(test_split))
    mix = {t["name"]: t for t in same["tests"]}["class mix"]
    assert mix["p_value"] > 0.5 and not same["drifted"]
    burger_mix = {t["name"]: t for t in skewed["tests"]}["class mix"]
    assert burger_mix["p_value"] < 0.01 and "class mix" in skewed["drifted"]
    assert burger_mix["traffic"]["Hamburger"] == 1.0


def test_sizes_and_confidence_have_their_tests(test_split):
    classes = sorted(test_split.Class.unique())
    rows = log_rows(test_split, classes)
    for row in rows:
        row["width"], row["height"] = row["width"] * 4, row["height"] * 4
        row["top_probability"] = 0.4
    summary = drift(pd.DataFrame(rows), NO_FEEDBACK,
                    reference_of(test_split, [0.9] * len(test_split)))
    assert set(summary["drifted"]) == {"image width", "image height", "mean top-1 probability",
                                       "share under 0.5"}


def test_the_drift_command_reads_the_log_since_the_promotion(sample_workspace, tmp_path,
                                                             capsys, monkeypatch):
    import bentoml

    from flows.commands.main import main
    from flows.promotion.bentoml_store import promote
    from flows.run.params import settings_from
    from flows.watching.watch import drift_summary

    workspace = tmp_path / "ws"
    (workspace / "dataset").mkdir(parents=True)
    shutil.copy(sample_workspace / "dataset" / "crops.parquet", workspace / "dataset")
    table = pd.read_parquet(workspace / "dataset" / "crops.parquet")
    test = table[table.Split == "test"]
    classes = sorted(test.Class.unique())
    logs = tmp_path / "predictions"
    old = log_rows(test[test.Class == "Car"], classes,
                   time=datetime.now(UTC) - timedelta(days=30))
    recent = log_rows(test[test.Class == "Hamburger"], classes)
    write_log(logs, old, seq=0)
    write_log(logs, recent, seq=1)
    write_feedback(logs, {recent[0]["request_id"]: "Hamburger",
                          recent[1]["request_id"]: "Sandwich"})
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", "drift-none-promoted")
    assert main(["drift", "--workspace", str(workspace), "--log-dir", str(logs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(old) + len(recent)} requests to any model since the log began")
    assert "class mix:" in out and "DRIFT" in out
    assert "feedback: 2 labelled requests, accuracy 0.5" in out

    # After a promotion only its own requests from then on count.
    # Its metrics carry the test split's top-1 probabilities: the reference for confidence.
    metrics = {"test_top_probabilities": [0.95] * len(test)}
    with bentoml.models.create("drift-promoted", metadata={"metrics": metrics}) as stored:
        tag = str(stored.tag)
    promote(tag)
    # Answered after the promotion: rows made before it (recent) may fall a second earlier.
    served = datetime.now(UTC)
    write_log(logs, [{**row, "model": tag, "top_probability": 0.4, "time": served}
                     for row in recent], seq=2)
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", "drift-promoted")
    settings = settings_from(workspace=str(workspace), prediction_log_dir=str(logs))
    summary = drift_summary(settings, chart=workspace / "model" / "drift.png")
    assert summary["model"] == tag and summary["requests"] == len(recent)
    assert "mean top-1 probability" in summary["drifted"]
    assert (workspace / "model" / "drift.png").stat().st_size > 1000
    assert lines(summary)[0].startswith(f"{len(recent)} requests to {tag} since ")


def test_the_drift_command_without_a_dataset_says_what_to_run(tmp_path, capsys):
    from flows.commands.main import main

    assert main(["drift", "--workspace", str(tmp_path)]) == 2
    assert "run build-dataset (or retrain) there first" in capsys.readouterr().err


def test_a_models_metrics_carry_its_test_top_probabilities():
    import numpy as np

    from model.evaluate import classification_metrics

    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.55, 0.45]])
    found = classification_metrics(np.array([0, 1, 1]), probs, ["a", "b"])
    assert found["test_top_probabilities"] == [0.7, 0.8, 0.55]


def test_the_drift_reference_is_compact_and_keeps_what_the_tests_need():
    import json

    from flows.watching.drift import recorded
    from model.evaluate import drift_reference

    rng = np.random.default_rng(3)
    top = [round(float(p), 4) for p in rng.uniform(0.34, 1.0, 5000)] + [0.29, 0.5, 1.0]
    widths = [*rng.integers(20, 257, 5000).tolist(), 30, 30, 256]
    summary = drift_reference(top, widths, widths[::-1])
    assert len(json.dumps(summary)) < 8000  # 5,003 examples: bins and sizes, not a list
    found = recorded(summary)
    sample, got_widths, got_heights = (found[k] for k in ("top_probabilities", "widths",
                                                          "heights"))
    mean = found["top_mean"]
    assert found["top_bins"] == 100
    assert len(sample) == len(top) and sorted(got_widths) == sorted(widths)
    assert sorted(got_heights) == sorted(widths)
    assert mean == round(float(np.mean(top)), 4)
    # The share under 0.5 is exact; every value stays within its bin of 0.01.
    assert sum(p < 0.5 for p in sample) == sum(p < 0.5 for p in top)
    assert np.allclose(sorted(sample), sorted(top), atol=0.01)


def test_a_binned_reference_is_compared_with_the_traffic_in_the_same_bins():
    from flows.watching.drift import recorded
    from model.evaluate import drift_reference

    # The test split and the traffic alike: confident answers of 0.991 to 0.999.
    rng = np.random.default_rng(5)
    test = rng.uniform(0.991, 0.9999, 60)
    reference = Reference({"a": 1.0, "b": 1.0}, [50], [50],
                          **{k: v for k, v in recorded(drift_reference(test, [50], [50])).items()
                             if k.startswith("top")})
    traffic = pd.DataFrame({"top_label": ["a"] * 40, "top_probability": rng.uniform(
        0.997, 0.9999, 40), "width": 50, "height": 50, "request_id": [str(i) for i in range(40)]})
    summary = drift(traffic, NO_FEEDBACK, reference)
    assert "mean top-1 probability" not in summary["drifted"]
    low = traffic.assign(top_probability=0.6)
    assert "mean top-1 probability" in drift(low, NO_FEEDBACK, reference)["drifted"]


def test_with_no_requests_each_figure_still_shows_its_reference():
    summary = drift(pd.DataFrame(columns=["top_label", "top_probability", "width", "height",
                                          "request_id"]),
                    NO_FEEDBACK, Reference({"Car": 2.0, "Hamburger": 1.0}, [100, 120],
                                           [80, 90], [0.9, 0.8]))
    figures = {t["name"]: t for t in summary["tests"]}
    assert figures["image width"]["reference"] == 110.0
    assert figures["image height"]["reference"] == 85.0
    assert figures["mean top-1 probability"]["reference"] == 0.85
    assert figures["share under 0.5"]["reference"] == 0.0
    printed = "\n".join(lines(summary))
    assert "no reference" not in printed
    assert "image width: traffic n/a, reference 110, Kolmogorov-Smirnov p=n/a (no requests)" \
        in printed


def test_the_command_prints_plain_numbers(test_split):
    classes = sorted(test_split.Class.unique())
    rows = log_rows(test_split[test_split.Class == "Car"].head(1), classes)
    summary = drift(pd.DataFrame(rows), NO_FEEDBACK, reference_of(test_split, [0.9, 0.4]))
    printed = "\n".join(lines(summary))
    assert "np." not in printed and "float64" not in printed
    assert "class mix: traffic (Car 1, Hamburger 0, Sandwich 0), reference (Car " in printed
    mix = {t["name"]: t for t in summary["tests"]}["class mix"]
    assert all(type(v) is float for v in mix["traffic"].values())


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")
def test_a_trained_model_carries_its_reference_to_the_store_and_its_package(
        sample_workspace, tmp_path, capsys, monkeypatch):
    """A model trained by the train stage (1 epoch of 32 px) records the reference of every
    figure: the drift report of its traffic has one for each, read from the BentoML store
    and from the model metadata of its package as the service installs it."""
    from flows.commands.main import main
    from flows.pipeline import stages
    from flows.pipeline.release import bundle_meta
    from flows.publishing.servable import METADATA_FILE
    from flows.settings import Settings
    from flows.watching.watch import drift_summary
    from model.registry_state import servable_metadata

    workspace = tmp_path / "ws"
    (workspace / "dataset").mkdir(parents=True)
    (workspace / "dataset" / "shards").symlink_to(sample_workspace / "dataset" / "shards")
    shutil.copy(sample_workspace / "dataset" / "crops.parquet", workspace / "dataset")
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", "drift-reference-test")
    settings = Settings(workspace=workspace, architecture="seed-cnn", image_size=32, epochs=1,
                        patience=1, reuse_trained=False,
                        prediction_log_dir=str(tmp_path / "predictions"))
    trained = stages.train(settings)
    assert trained["promoted"]
    test = pd.read_parquet(workspace / "dataset" / "crops.parquet").query("Split == 'test'")
    classes = sorted(test.Class.unique())
    write_log(tmp_path / "predictions", [{**row, "model": trained["model_tag"]} for row in
                                          log_rows(test, classes)])
    # The workspace's own test split is not what the reference comes from.
    (workspace / "dataset" / "crops.parquet").unlink()
    test.head(3).to_parquet(workspace / "dataset" / "crops.parquet")

    summary = drift_summary(settings)
    figures = {t["name"]: t for t in summary["tests"]}
    assert summary["requests"] == len(test)
    for name in ("mean top-1 probability", "share under 0.5", "image width", "image height"):
        assert figures[name]["reference"] is not None and figures[name]["p_value"] is not None
    assert figures["image width"]["reference"] == float(test.Width.median())
    assert figures["mean top-1 probability"]["reference"] == \
        trained["drift_reference"]["top_probability"]["mean"]

    # The same reference from the package's model metadata, as servable installs it.
    built = {"crops_per_class": {}, "crops_per_split": {}, "dataset_id": trained["dataset_id"]}
    served = tmp_path / "served"
    served.mkdir()
    meta = servable_metadata(bundle_meta(settings, trained, built), "openimager/classifier",
                             "s3://somewhere", "0" * 64)
    (served / METADATA_FILE).write_text(json.dumps(meta))
    capsys.readouterr()  # what training printed
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", "drift-none-promoted")
    assert main(["drift", "--workspace", str(workspace), "--log-dir",
                 str(tmp_path / "predictions"), "--model-path", str(served)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(test)} requests to {trained['model_tag']} since the log began")
    assert "no reference" not in out
    assert f"mean top-1 probability: traffic 0.9, reference " \
           f"{trained['drift_reference']['top_probability']['mean']:g}," in out


def test_the_report_counts_unsure_answers():
    log = pd.DataFrame({"top_label": ["a", "b", "a", "a"],
                        "top_probability": [0.3, 0.55, 0.9, 0.99], "width": [10] * 4,
                        "height": [10] * 4, "request_id": list("wxyz")})
    summary = drift(log, NO_FEEDBACK, Reference({"a": 3.0, "b": 1.0}, [10], [10]), 0.6)
    assert summary["unsure"] == {"threshold": 0.6, "count": 2, "share": 0.5}
    assert "unsure answers (top probability under 0.6): 2 (0.5)" in lines(summary)
    # ... and the run report's drift section
    from flows.pipeline.artifacts import drift_section

    reported = drift_section({**summary, "model": "m:1", "since": None,
                              "class_mix_of": "the test split"}, None)
    assert "Unsure answers (top probability under 0.6): 2 (share 0.5)." in reported

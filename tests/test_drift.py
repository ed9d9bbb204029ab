"""Drift in the report: a replay of only hamburgers shows class-mix drift, a replay of the
test split's own mix does not; the command prints the same summary."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

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


def test_the_report_counts_unsure_answers():
    log = pd.DataFrame({"top_label": ["a", "b", "a", "a"],
                        "top_probability": [0.3, 0.55, 0.9, 0.99], "width": [10] * 4,
                        "height": [10] * 4, "request_id": list("wxyz")})
    summary = drift(log, NO_FEEDBACK, Reference({"a": 3.0, "b": 1.0}, [10], [10]), 0.6)
    assert summary["unsure"] == {"threshold": 0.6, "count": 2, "share": 0.5}
    assert "unsure answers (top probability under 0.6): 2 (0.5)" in lines(summary)

"""Shadow replay's figures and verdict, and which kept uploads it replays."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from flows.watching.shadow import kept_uploads
from model.shadow import Replayed, ShadowRule, aligned, compare, disagreements, judge, wilson
from service.config import PredictionLogging
from service.predlog import Answered, PredictionLog, describe
from tests.servicekit import encoded, picture

NAMES = ("Car", "Hamburger")


def answers(tops: list[int], p: float) -> np.ndarray:
    out = np.full((len(tops), 2), 1 - p)
    out[np.arange(len(tops)), tops] = p
    return out


def replayed(theirs: list[int], ours: list[int], labels=None, sure: float = 0.9) -> Replayed:
    return Replayed(tuple(f"s{i}" for i in range(len(theirs))), NAMES, answers(theirs, sure),
                    answers(ours, 0.7), tuple(labels or [None] * len(theirs)))


def test_agreement_flips_and_confidence_shift():
    found = compare(replayed([0] * 30 + [1] * 30, [0] * 30 + [0] * 10 + [1] * 20))
    assert found["images"] == 60 and found["agreement"] == pytest.approx(50 / 60, abs=1e-4)
    assert found["confident_images"] == 60 and found["confident_agreement"] == found["agreement"]
    assert found["flips"] == {"Car": {"Car": 30}, "Hamburger": {"Car": 10, "Hamburger": 20}}
    shift = found["mean_confidence"]
    assert shift["shift"] == pytest.approx(-0.2) and shift["shift_interval"][1] < 0
    low, high = found["agreement_interval"]
    assert low < found["agreement"] < high
    assert found["feedback"] is None


def test_only_confident_answers_of_the_incumbent_count_for_the_rule():
    unsure = replayed([0] * 40, [1] * 40, sure=0.6)  # every answer below 0.8
    found = compare(unsure)
    assert found["confident_images"] == 0 and found["confident_agreement"] is None
    passes, reason = judge(found, ShadowRule(), "new:1", "old:1")
    assert passes and "gave no confident answer" in reason and "not judged" in reason


def test_the_rule_refuses_under_its_minimums_and_passes_over_them():
    rule = ShadowRule(min_agreement=0.8, min_feedback_accuracy=0.7, min_images=20)
    labels = ["Car"] * 30 + [None] * 30
    bad = compare(replayed([0] * 60, [1] * 30 + [0] * 30, labels), rule)
    passes, reason = judge(bad, rule, "new:1", "old:1")
    assert not passes
    assert "agrees with 50.0% of the 60 confident answers" in reason
    assert "under the minimum 80%" in reason and "accuracy on 30 labelled uploads 0.0%" in reason
    good = compare(replayed([0] * 60, [0] * 60, labels), rule)
    assert judge(good, rule, "new:1", "old:1")[0]
    few = compare(replayed([0] * 10, [1] * 10), rule)
    passes, reason = judge(few, rule, "new:1", "old:1")
    assert passes and "under 20 uploads, agreement not judged" in reason
    assert judge(compare(replayed([], [])), rule, "n", "o") == (
        True, "shadow replay: no kept uploads to replay (nothing judged)")


def test_columns_are_aligned_by_class_name_and_other_classes_refused():
    probs = np.array([[0.1, 0.9]])
    assert aligned(probs, ["Hamburger", "Car"], ["Car", "Hamburger"]).tolist() == [[0.9, 0.1]]
    with pytest.raises(ValueError, match="classes differ"):
        aligned(probs, ["Hamburger", "Car"], ["Car", "Sandwich"])


def test_wilson_intervals_and_disagreements_order():
    assert wilson(0, 0) is None
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson(10, 10)[1] == 1.0
    rows = disagreements(Replayed(("a", "b", "c"), NAMES, np.array([[0.6, 0.4], [0.95, 0.05],
                                                                     [0.2, 0.8]]),
                                  np.array([[0.3, 0.7], [0.1, 0.9], [0.1, 0.9]]),
                                  (None, None, None)))
    assert [r["sha256"] for r in rows] == ["b", "a"]  # the incumbent's surest first
    assert rows[0] == {"sha256": "b", "incumbent_label": "Car", "incumbent_probability": 0.95,
                       "candidate_label": "Hamburger", "candidate_probability": 0.9}


def log_uploads(folder, seeds: list[int], at: datetime, labels: dict[int, str]) -> None:
    log = PredictionLog(PredictionLogging(directory=str(folder), sample_rate=1.0,
                                          part_seconds=3600))
    for seed in seeds:
        request = uuid.uuid4().hex
        log.flush(log.rows(Answered(at, "classify", [request],
                                    [describe(encoded(picture(seed)), 1.0)], "m:1", NAMES,
                                    np.array([[0.5, 0.5]], np.float32), 1.0)))
        if seed in labels:
            log.feedback(request, labels[seed], "m:1")


def test_kept_uploads_since_a_time_once_each_with_their_labels(tmp_path):
    folder = tmp_path / "log"
    old = datetime.now(UTC) - timedelta(days=2)
    log_uploads(folder, [1, 2], old, {})
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    log_uploads(folder, [3, 4, 3], datetime.now(UTC), {4: "Hamburger"})
    time.sleep(0.01)
    found = kept_uploads(folder, since, 100)
    assert len(found) == 2  # upload 3 twice is one image; 1 and 2 are older
    assert sorted(found.label, key=str) == ["Hamburger", None]
    assert all(name.endswith(".jpg") and (folder / "images" / name).is_file()
               for name in found.name)
    assert len(kept_uploads(folder, None, 100)) == 4
    assert len(kept_uploads(folder, None, 1)) == 1  # the newest only
    assert kept_uploads(tmp_path / "nothing", None, 10).empty


def test_a_replay_of_no_uploads_passes_without_judging(tmp_path):
    from flows.watching.shadow import Side, replay

    class Never:
        def predict_on_batch(self, pixels):
            raise AssertionError("no upload, no prediction")

    side = Side("m:1", Never(), NAMES, 32)
    none = replay(kept_uploads(tmp_path / "nothing", None, 10), tmp_path, side, side)
    found = compare(none)
    assert found["images"] == 0 and found["agreement"] is None
    assert judge(found, ShadowRule(), "m:1", "m:1")[0]


def test_uploads_kept_on_an_s3_prefix_come_down_into_a_pruned_cache(tmp_path, monkeypatch,
                                                                       local_s3):
    from flows.watching.shadow import image_folder

    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    local_s3.create_bucket("shadowlog", versioned=False)
    prefix = "s3://shadowlog/served"
    log_uploads(prefix, [5, 6, 7], datetime.now(UTC), {6: "Car"})
    found = kept_uploads(prefix, None, 100)
    assert len(found) == 3 and list(found.label).count("Car") == 1
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{'f' * 64}.jpg").write_bytes(b"an earlier replay's upload")
    folder = image_folder(prefix, list(found.name[:2]), cache)
    assert folder == cache and sorted(p.name for p in cache.iterdir()) == sorted(found.name[:2])


def test_a_replay_that_cannot_read_the_log_leaves_the_verdict_and_says_why(
        tmp_path, monkeypatch, local_s3):
    from flows.pipeline.stages import shadow_check
    from flows.settings import Settings
    from model.architectures import seed_cnn
    from model.promotion import Decision, Incumbent

    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    settings = Settings(workspace=tmp_path, prediction_log_dir="s3://no-such-bucket/log")
    model = seed_cnn(32, 2)
    check = shadow_check(settings, "new:1", {"class_names": list(NAMES), "image_size": 32},
                         model)
    decision = Decision(True, "better on the test split", "accuracy", 0.9)
    after = check(decision, Incumbent("old:1", NAMES, 0.5, model=model, image_size=32))
    assert after.promote and after.reason == decision.reason
    assert after.shadow["passes"] is None and "NoSuchBucket" in after.shadow["error"]

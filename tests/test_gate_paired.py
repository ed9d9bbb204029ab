"""The paired promotion gate: candidate and incumbent compared on the same test photos."""

import numpy as np
import pytest

from model.intervals import Outcome, compare, value_of
from model.promotion import DEFAULT_RULE, Incumbent, Rule, decide

CLASSES = ("A", "B")


def outcome(right: list[bool], crops_per_photo: int = 1) -> Outcome:
    """Answers on photos p0, p1, ... (each with crops_per_photo crops, all true class A):
    right[i] says whether the crops of photo i were answered A."""
    photos = tuple(f"p{i}" for i, _ in enumerate(right) for _ in range(crops_per_photo))
    flags = np.repeat(np.array(right, dtype=bool), crops_per_photo)
    probs = np.where(flags[:, None], [0.9, 0.1], [0.2, 0.8])
    truth = np.zeros(len(photos), dtype=int)
    return Outcome(photos, truth, probs, CLASSES)


def incumbent(right: list[bool]) -> Incumbent:
    theirs = outcome(right)
    return Incumbent("clf:old", CLASSES, value_of(theirs, "accuracy"), outcome=theirs)


def test_one_crop_better_is_not_promoted_at_the_defaults():
    base = [True] * 40 + [False] * 20
    better = [True] * 41 + [False] * 19  # one more photo right
    decision = decide("accuracy", None, CLASSES, incumbent(base), candidate=outcome(better))
    assert not decision.promote and "not better beyond the margin" in decision.reason
    assert decision.difference == pytest.approx(1 / 60, abs=1e-4)
    low, high = decision.difference_interval
    assert low <= 0 < high and decision.p_value > 0.05
    assert (decision.margin, decision.confidence, decision.photos) == (0.0, 0.95, 60)
    assert "a tie keeps the promoted model" in decision.reason


def test_a_clearly_better_model_is_promoted_with_its_figures():
    base = [True] * 30 + [False] * 30
    better = [True] * 55 + [False] * 5
    decision = decide("accuracy", None, CLASSES, incumbent(base), candidate=outcome(better))
    assert decision.promote, decision.reason
    assert decision.difference == pytest.approx(25 / 60, abs=1e-4)
    assert decision.difference_interval[0] > 0 and decision.p_value < 0.01
    record = decision.as_dict()  # what the summary, pending marker and history carry
    assert {"difference", "difference_interval", "p_value", "margin", "confidence"} <= set(record)


def test_the_settings_default_to_the_gate_s_rule():
    from flows.settings import Settings

    settings = Settings()
    assert settings.promotion_margin == DEFAULT_RULE.margin == 0.0
    assert settings.promotion_confidence == DEFAULT_RULE.confidence == 0.95


def test_a_confidence_set_in_the_settings_reaches_the_rule_and_the_decision(monkeypatch):
    from flows.pipeline.stages import promotion_rule
    from flows.settings import Settings

    base = [True] * 30 + [False] * 30
    better = [True] * 33 + [False] * 27  # +0.05: p about 0.05, interval from 0 at 95 %
    assert promotion_rule(Settings()) == DEFAULT_RULE
    kept = decide("accuracy", None, CLASSES, incumbent(base), candidate=outcome(better),
                  rule=promotion_rule(Settings()))
    monkeypatch.setenv("OPENIMAGER_PROMOTION_CONFIDENCE", "0.8")
    rule = promotion_rule(Settings())
    assert rule.confidence == 0.8 and rule.margin == DEFAULT_RULE.margin
    promoted = decide("accuracy", None, CLASSES, incumbent(base), candidate=outcome(better),
                      rule=rule)
    assert not kept.promote and kept.confidence == 0.95
    assert promoted.promote and promoted.confidence == 0.8, promoted.reason
    assert promoted.difference_interval[0] > 0 >= kept.difference_interval[0]


def test_a_tie_keeps_the_incumbent_and_a_margin_raises_the_bar():
    same = [True] * 30 + [False] * 10
    assert not decide("macro_f1", None, CLASSES, incumbent(same), candidate=outcome(same)).promote
    base = [True] * 30 + [False] * 30
    better = [True] * 40 + [False] * 20  # +0.167, interval roughly [0.07, 0.27]
    assert decide("accuracy", None, CLASSES, incumbent(base), candidate=outcome(better)).promote
    strict = Rule(margin=0.2)
    assert not decide("accuracy", None, CLASSES, incumbent(base), candidate=outcome(better),
                      rule=strict).promote


def test_crops_of_a_photo_are_resampled_together():
    """Ten crops of one photo are one piece of evidence, not ten."""
    base = [True] * 20 + [False] * 20
    better = [True] * 21 + [False] * 19
    one = compare(outcome(better, 10), outcome(base, 10), "accuracy")
    assert one.photos == 40 and not one.better
    # Counted as 400 independent crops, the same gap would look tighter than it is.
    crops = outcome(better, 10)
    independent = Outcome(tuple(f"c{i}" for i in range(400)), crops.truth, crops.probs, CLASSES)
    theirs = outcome(base, 10)
    loose = compare(independent, Outcome(independent.photos, theirs.truth, theirs.probs,
                                         CLASSES), "accuracy")
    width = one.interval[1] - one.interval[0]
    assert loose.interval[1] - loose.interval[0] < width


def test_the_comparison_is_seeded_and_refuses_other_photos():
    a, b = outcome([True] * 10 + [False] * 5), outcome([True] * 12 + [False] * 3)
    assert compare(b, a, "macro_f1") == compare(b, a, "macro_f1")
    other = Outcome(tuple(f"x{i}" for i in range(15)), a.truth, a.probs, CLASSES)
    with pytest.raises(ValueError, match="same test crops"):
        compare(b, other, "accuracy")


def test_classes_in_another_order_are_aligned():
    theirs = outcome([True] * 30 + [False] * 30)
    flipped = Outcome(theirs.photos, 1 - theirs.truth, theirs.probs[:, ::-1], ("B", "A"))
    assert compare(theirs, flipped, "accuracy").difference == 0.0


def test_roc_auc_is_compared_on_the_same_photos():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 80)
    good = np.clip(truth + rng.normal(0, 0.3, 80), 0, 1)
    bad = rng.uniform(0, 1, 80)
    photos = tuple(f"p{i}" for i in range(80))
    ours = Outcome(photos, truth, np.stack([1 - good, good], 1), CLASSES)
    theirs = Outcome(photos, truth, np.stack([1 - bad, bad], 1), CLASSES)
    found = compare(ours, theirs, "roc_auc", resamples=300)
    assert found.better and found.difference > 0.3


def test_reproduce_judges_the_two_models_on_the_same_photos(tmp_path):
    from flows.publishing.reproduce import Reproduction

    published = {"accuracy": 0.9, "macro_f1": 0.9, "intervals": {"accuracy": [0.8, 0.97]}}
    crops = {"photos": 40, "crops": 52, "agreement": 0.94}
    one_crop_off = Reproduction("h", tmp_path, published=published,
                                reproduced={"accuracy": 0.86, "macro_f1": 0.85},
                                paired={"difference": -0.04, "interval": [-0.1, 0.02], **crops})
    assert one_crop_off.ok
    said = one_crop_off.report()
    assert "on the same 52 test crops of 40 photos" in said and "[-0.1000, +0.0200]" in said
    assert "the two answer 94.0% of the crops alike" in said
    # Inside the published figure's interval, but the same photos tell another model.
    other = Reproduction("h", tmp_path, published=published,
                         reproduced={"accuracy": 0.84, "macro_f1": 0.8},
                         paired={"difference": -0.06, "interval": [-0.1, -0.02], **crops})
    assert not other.ok and "NOT REPRODUCED" in other.report()
    unpaired = Reproduction("h", tmp_path, published=published,
                            reproduced={"accuracy": 0.86, "macro_f1": 0.85})
    assert not unpaired.ok  # no model to pair with: the fixed tolerance alone
    close = Reproduction("h", tmp_path, published=published,
                         reproduced={"accuracy": 0.89, "macro_f1": 0.88})
    assert close.ok


@pytest.mark.slow
def test_paired_scores_the_published_and_the_reproduced_model_on_the_test_crops(
        sample_workspace, tmp_path):
    import shutil

    import keras
    import pandas as pd

    from flows.publishing.reproduce import paired
    from model.architectures import seed_cnn

    bundle = tmp_path / "bundle"
    shutil.copytree(sample_workspace / "dataset", bundle / "data")
    names = sorted(pd.read_parquet(bundle / "data" / "crops.parquet").Class.unique())
    for folder, seed in ((bundle / "model", 1), (tmp_path / "again", 1), (tmp_path / "other", 2)):
        folder.mkdir()
        keras.utils.set_random_seed(seed)
        seed_cnn(32, len(names), seed).save(folder / "model.keras")
    same = paired(bundle, tmp_path / "again", 32)
    test = pd.read_parquet(bundle / "data" / "crops.parquet").query("Split == 'test'")
    assert same["crops"] == len(test) and same["photos"] == test.ImageID.nunique()
    assert same["agreement"] == 1.0 and same["difference"] == 0.0
    other = paired(bundle, tmp_path / "other", 32)
    assert other["agreement"] < 1.0


def test_the_holdout_slice_is_a_stable_hash_of_the_photo():
    from model.intervals import holdout, subset

    photos = [f"img{i:05d}" for i in range(4000)]
    chosen = holdout(photos, 0.25)
    assert 0.22 < chosen.mean() < 0.28
    assert (holdout(list(reversed(photos)), 0.25) == chosen[::-1]).all()  # per photo, stable
    assert (holdout(photos, 0.5) >= chosen).all() and not holdout(photos, 0.0).any()
    answers = outcome([True] * 4000)
    answers = Outcome(tuple(photos), answers.truth, answers.probs, CLASSES)
    assert len(subset(answers, chosen).photos) == int(chosen.sum())


def test_the_gate_records_the_comparison_in_the_pending_marker(tmp_path, monkeypatch):
    from flows.promotion import bentoml_store
    from flows.promotion.bentoml_store import gate, pending, promoted, register_model

    def stored(folder: str) -> str:
        workdir = tmp_path / folder
        workdir.mkdir()
        (workdir / "model.keras").write_bytes(b"never opened here")
        (workdir / "metrics.json").write_text("{}")
        return register_model(workdir, "paired-gate", {"class_names": list(CLASSES)}, {})

    base = outcome([True] * 30 + [False] * 30)
    monkeypatch.setattr(bentoml_store, "load_model",
                        lambda tag: (object(), {"class_names": list(CLASSES)}))
    first = stored("one")
    assert gate(first, list(CLASSES), "accuracy", 0.5, lambda *_: base).promote
    assert promoted("paired-gate")["tag"] == first

    slightly = stored("two")
    kept = gate(slightly, list(CLASSES), "accuracy", 0.52, lambda *_: base, promote_now=False,
                candidate=outcome([True] * 31 + [False] * 29))
    assert not kept.promote and kept.p_value > 0.05 and pending("paired-gate") is None

    clearly = stored("three")
    decision = gate(clearly, list(CLASSES), "accuracy", 0.9, lambda *_: base,
                    promote_now=False, candidate=outcome([True] * 55 + [False] * 5))
    assert decision.promote, decision.reason
    details = pending("paired-gate")["details"]
    assert details["difference"] == decision.difference > 0.3
    assert details["difference_interval"][0] > 0 and details["p_value"] < 0.01
    assert promoted("paired-gate")["tag"] == first  # the record waits for the publish


def test_the_gate_scores_as_metrics_json_does():
    from model.evaluate import metrics_of

    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, 97)
    probs = rng.dirichlet([1, 1, 1], 97)
    answers = Outcome(tuple(f"p{i // 3}" for i in range(97)), truth, probs, ("a", "b", "c"))
    found = metrics_of(answers)
    for metric in ("accuracy", "macro_f1", "roc_auc"):
        assert value_of(answers, metric) == found[metric]

"""The promotion gate as a pure function: no model store, no TensorFlow."""

import numpy as np
import pytest

from model.intervals import Outcome
from model.promotion import Incumbent, decide

CLASSES = ["Hamburger", "Sandwich"]


def answers(right: int, photos: int = 100, classes=CLASSES) -> Outcome:
    """Answers on photos of class 0, the first `right` of them right."""
    flags = np.arange(photos) < right
    probs = np.where(flags[:, None], [0.8, 0.2], [0.3, 0.7])
    return Outcome(tuple(f"p{i}" for i in range(photos)), np.zeros(photos, dtype=int), probs,
                   tuple(classes))


def served(score, classes=CLASSES, missing=False, right=None):
    return Incumbent("clf:old", tuple(classes), score, missing=missing,
                     outcome=None if right is None else answers(right, classes=classes))


def test_a_worse_model_is_not_promoted_and_says_why():
    decision = decide("accuracy", 0.71, CLASSES, served(0.83, right=83),
                      candidate=answers(71))
    assert not decision.promote
    assert "accuracy 0.71 vs 0.83" in decision.reason and "clf:old" in decision.reason
    assert "not better" in decision.reason and decision.difference == -0.12
    assert (decision.incumbent_tag, decision.incumbent_score) == ("clf:old", 0.83)


def test_a_clearly_better_model_is_promoted_and_a_tie_is_not():
    assert decide("macro_f1", 0.9, CLASSES, served(0.6, right=60),
                  candidate=answers(90)).promote
    # A tie keeps the promoted model: new data alone is no evidence of a better one.
    assert not decide("accuracy", 0.83, CLASSES, served(0.83, right=83),
                      candidate=answers(83)).promote


def test_first_run_and_force_promote():
    first = decide("macro_f1", 0.2, CLASSES, None)
    assert first.promote and "first model" in first.reason
    forced = decide("macro_f1", 0.2, CLASSES, served(0.9), force=True)
    assert forced.promote and "forced" in forced.reason and "0.9" in forced.reason


def test_changed_classes_need_force():
    other = served(None, ["Hamburger", "Sandwich", "Hot dog"])
    decision = decide("macro_f1", 0.95, CLASSES, other)
    assert not decision.promote
    assert "classes changed" in decision.reason and "force_promote" in decision.reason
    assert decide("macro_f1", 0.95, CLASSES, other, force=True).promote
    # The same classes in another order are the same question.
    assert decide("accuracy", 0.95, list(reversed(CLASSES)), served(0.5, right=50),
                  candidate=answers(95)).promote


def test_a_promoted_model_missing_from_the_store_is_replaced():
    decision = decide("macro_f1", 0.5, CLASSES, served(None, (), missing=True))
    assert decision.promote and "no longer in the model store" in decision.reason


def test_undefined_metric_and_unknown_metric():
    assert not decide("roc_auc", None, CLASSES, served(0.8)).promote  # no answers to compare
    with pytest.raises(ValueError, match="unknown promotion metric"):
        decide("loss", 0.5, CLASSES, None)
    assert decide("macro_f1", 0.5, CLASSES, None).as_dict()["metric"] == "macro_f1"


@pytest.mark.parametrize("decision", [
    decide("macro_f1", 0.71, CLASSES, served(0.83)),
    decide("macro_f1", None, CLASSES, served(0.83)),
    decide("macro_f1", 0.9, ["Car"], served(0.83)),
])
def test_a_refusal_says_not_promoted_once(decision):
    from flows.train import promotion_line

    line = promotion_line({"model_tag": "clf:new", "promoted": decision.promote,
                           "promotion_reason": decision.reason})
    assert line.startswith("clf:new NOT promoted: ") and line.lower().count("not promoted") == 1

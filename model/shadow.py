"""Shadow replay's figures: a candidate and the promoted model (the incumbent) on the same
uploads the service kept, and whether the candidate may replace it.

A test split cannot see a candidate whose input differs from what the service feeds it (say
its training and test crops had their channels swapped): it scores well on its own split and
answers real uploads badly. Replayed on the kept uploads, it disagrees with the incumbent's
confident answers and misses the labels users sent. Pure numpy: the pipeline decodes the
uploads and runs the models (flows/watching/shadow.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from model.intervals import CONFIDENCE, RESAMPLES, SEED, interval


@dataclass(frozen=True)
class Replayed:
    """Both models' answers on the same uploads, columns in class_names' order."""

    images: tuple[str, ...]  # the sha256 of each upload
    class_names: tuple[str, ...]
    incumbent: np.ndarray  # (images, classes) probabilities
    candidate: np.ndarray
    labels: tuple[str | None, ...]  # the label users sent through /feedback, if any


@dataclass(frozen=True)
class ShadowRule:
    """When shadow replay refuses a candidate. A minimum of 0 turns its check off; a check
    with fewer than min_images uploads to judge on is reported, not applied."""

    min_agreement: float = 0.8  # with the incumbent's confident answers
    min_feedback_accuracy: float = 0.0  # on uploads users labelled
    confident: float = 0.8  # an incumbent answer at least this probable is confident
    min_images: int = 20
    confidence: float = CONFIDENCE


def aligned(probs: np.ndarray, names: list[str] | tuple[str, ...],
            order: list[str] | tuple[str, ...]) -> np.ndarray:
    """probs with its columns (classes in names' order) put in order's order."""
    if set(names) != set(order):
        raise ValueError(f"the models' classes differ: {sorted(names)} and {sorted(order)}")
    return np.asarray(probs)[:, [list(names).index(c) for c in order]]


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """The Wilson score interval of a proportion; None without observations."""
    if n == 0:
        return None
    z = float(norm.ppf((1 + confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def paired_mean_interval(values: np.ndarray, confidence: float = CONFIDENCE,
                         resamples: int = RESAMPLES, seed: int = SEED) -> list[float] | None:
    """A bootstrap interval of the mean of per-upload values (differences of the two models'
    answers on the same upload, so the pairing is kept)."""
    if len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    return interval(values[draws].mean(axis=1), confidence)


def flips(incumbent: np.ndarray, candidate: np.ndarray, names: tuple[str, ...]) -> dict:
    """{incumbent's label: {candidate's label: uploads}}, the pairs that occur."""
    matrix: dict[str, dict[str, int]] = {}
    for ours, theirs in zip(candidate.tolist(), incumbent.tolist(), strict=True):
        row = matrix.setdefault(names[theirs], {})
        row[names[ours]] = row.get(names[ours], 0) + 1
    return matrix


def compare(replayed: Replayed, rule: ShadowRule = ShadowRule()) -> dict:
    """Agreement (overall and on the incumbent's confident answers), the flip matrix, the
    shift in mean top probability and accuracy on labelled uploads, each with its interval."""
    n = len(replayed.images)
    theirs, ours = replayed.incumbent.argmax(axis=1), replayed.candidate.argmax(axis=1)
    agree = theirs == ours
    sure = replayed.incumbent.max(axis=1) >= rule.confident
    shift = replayed.candidate.max(axis=1) - replayed.incumbent.max(axis=1)
    found = {
        "images": n,
        "agreement": _share(agree),
        "agreement_interval": wilson(int(agree.sum()), n, rule.confidence),
        "confident_threshold": rule.confident,
        "confident_images": int(sure.sum()),
        "confident_agreement": _share(agree[sure]),
        "confident_agreement_interval": wilson(int(agree[sure].sum()), int(sure.sum()),
                                               rule.confidence),
        "flips": flips(theirs, ours, replayed.class_names),
        "mean_confidence": {
            "incumbent": _mean(replayed.incumbent.max(axis=1)),
            "candidate": _mean(replayed.candidate.max(axis=1)),
            "shift": _mean(shift),
            "shift_interval": paired_mean_interval(shift, rule.confidence)},
        "confidence": rule.confidence,
        "feedback": None,
    }
    labelled = np.array([label is not None for label in replayed.labels], dtype=bool)
    if labelled.any():
        index = {name: i for i, name in enumerate(replayed.class_names)}
        truth = np.array([index.get(label, -1) if label is not None else -1
                          for label in replayed.labels])
        right_ours, right_theirs = ours == truth, theirs == truth
        m = int(labelled.sum())
        found["feedback"] = {
            "images": m,
            "candidate_accuracy": _share(right_ours[labelled]),
            "candidate_accuracy_interval": wilson(int(right_ours[labelled].sum()), m,
                                                  rule.confidence),
            "incumbent_accuracy": _share(right_theirs[labelled]),
            "difference": _mean((right_ours.astype(float) - right_theirs)[labelled]),
            "difference_interval": paired_mean_interval(
                (right_ours.astype(float) - right_theirs)[labelled], rule.confidence)}
    return found


def judge(found: dict, rule: ShadowRule, candidate: str, incumbent: str) -> tuple[bool, str]:
    """Whether the candidate passes shadow replay, and why, in words an operator can act on."""
    if found["images"] == 0:
        return True, "shadow replay: no kept uploads to replay (nothing judged)"
    lines, refused = [], False
    pct = f"{rule.confidence:.0%}"
    if rule.min_agreement > 0:
        sure, share = found["confident_images"], found["confident_agreement"]
        what = (f"{candidate} agrees with {share:.1%} of the {sure} confident answers "
                f"(p >= {rule.confident:g}) of the promoted {incumbent}, {pct} interval "
                f"{percent_span(found['confident_agreement_interval'])}") if sure else \
            f"the promoted {incumbent} gave no confident answer (p >= {rule.confident:g})"
        if sure < rule.min_images:
            lines.append(f"{what}: under {rule.min_images} uploads, agreement not judged")
        elif share < rule.min_agreement:
            refused = True
            lines.append(f"{what}, under the minimum {rule.min_agreement:.0%}")
        else:
            lines.append(what)
    feedback = found["feedback"]
    if rule.min_feedback_accuracy > 0:
        if feedback is None or feedback["images"] < rule.min_images:
            count = feedback["images"] if feedback else 0
            lines.append(f"{count} labelled uploads: under {rule.min_images}, accuracy on "
                         "feedback not judged")
        else:
            what = (f"accuracy on {feedback['images']} labelled uploads "
                    f"{feedback['candidate_accuracy']:.1%} ({pct} interval "
                    f"{percent_span(feedback['candidate_accuracy_interval'])}; the promoted "
                    f"{feedback['incumbent_accuracy']:.1%})")
            if feedback["candidate_accuracy"] < rule.min_feedback_accuracy:
                refused = True
                lines.append(f"{what}, under the minimum {rule.min_feedback_accuracy:.0%}")
            else:
                lines.append(what)
    if not lines:
        lines.append(f"agreement {found['agreement']:.1%} on {found['images']} uploads "
                     "(no minimum set: reported only)")
    return not refused, f"shadow replay on {found['images']} kept uploads: {'; '.join(lines)}"


def disagreements(replayed: Replayed) -> list[dict]:
    """The uploads the two models answer differently, the incumbent's surest first."""
    theirs, ours = replayed.incumbent.argmax(axis=1), replayed.candidate.argmax(axis=1)
    rows = [{"sha256": sha, "incumbent_label": replayed.class_names[t],
             "incumbent_probability": round(float(replayed.incumbent[i, t]), 6),
             "candidate_label": replayed.class_names[o],
             "candidate_probability": round(float(replayed.candidate[i, o]), 6)}
            for i, (sha, t, o) in enumerate(zip(replayed.images, theirs, ours, strict=True))
            if t != o]
    return sorted(rows, key=lambda row: -row["incumbent_probability"])


def _share(flags: np.ndarray) -> float | None:
    return round(float(flags.mean()), 4) if len(flags) else None


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None


def percent_span(bounds: list[float] | None) -> str:
    """An interval as percentages, for the words of a report."""
    return f"[{bounds[0]:.1%}, {bounds[1]:.1%}]" if bounds else "[undefined]"


RECORDED = ("images", "agreement", "agreement_interval", "confident_images",
            "confident_agreement", "confident_agreement_interval", "mean_confidence",
            "feedback", "passes", "since", "error")


def recorded(report: dict | None) -> dict | None:
    """What the promotion record and history keep of a replay: its figures, not its flips."""
    return None if report is None else {k: report.get(k) for k in RECORDED if k in report}

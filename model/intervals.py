"""Bootstrap over source photos: every crop of a photo is resampled together, since crops of
one photo are not independent. Intervals of the test metrics, and the paired comparison of two
models on the same photos that the promotion gate uses. Seeded: the same inputs give the same
numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 20240607
BLOCK = 250  # resamples drawn at once: bounds memory to BLOCK x photos counts


@dataclass(frozen=True)
class Outcome:
    """One model's answers on a test split, crop by crop, with each crop's source photo."""

    photos: tuple[str, ...]  # ImageID of every crop
    truth: np.ndarray  # true class index per crop (into class_names)
    probs: np.ndarray  # (crops, classes) probabilities, columns in class_names order
    class_names: tuple[str, ...]

    def aligned(self, class_names: tuple[str, ...] | list[str]) -> Outcome:
        """The same answers with classes (columns and indices) in the given order."""
        order = [self.class_names.index(c) for c in class_names]
        where = {old: new for new, old in enumerate(order)}
        truth = np.array([where[int(t)] for t in self.truth], dtype=int)
        return Outcome(self.photos, truth, self.probs[:, order], tuple(class_names))


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both labels."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based rank of ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_auc(truth: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC-AUC of class 1 for two classes, else one-vs-rest averaged over present classes."""
    if probs.shape[1] == 2:
        return roc_auc(truth == 1, probs[:, 1])
    aucs = [roc_auc(truth == i, probs[:, i]) for i in range(probs.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


def stated(metrics: dict, key: str) -> str:
    """A metric with its interval, as the reports print it: "0.8333 (95 % CI 0.70-0.93)"."""
    value = metrics.get(key)
    bounds = (metrics.get("intervals") or {}).get(key)
    if value is None or not bounds:
        return str(value)
    share = (metrics.get("intervals") or {}).get("confidence", CONFIDENCE)
    return f"{value} ({share:.0%} CI {span(bounds)})"


def span(bounds: list[float]) -> str:
    """An interval as the reports print it: "0.7-0.93"."""
    return f"{bounds[0]:.4g}-{bounds[1]:.4g}"


def holdout(photos: list[str] | tuple[str, ...], share: float) -> np.ndarray:
    """Which crops belong to the holdout slice: photos whose SHA-256 of ImageID falls in the
    lowest share of the hash space. Stable across runs and datasets: a photo in it stays in it
    whenever it is in a test split, so the gate, which never scores it, cannot bend it."""
    import hashlib

    cut = share * 2 ** 64
    return np.array([int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:8], "big") < cut
                     for p in photos], dtype=bool)


def subset(outcome: Outcome, keep: np.ndarray) -> Outcome:
    """The outcome on the crops where keep is true."""
    return Outcome(tuple(p for p, k in zip(outcome.photos, keep, strict=True) if k),
                   outcome.truth[keep], outcome.probs[keep], outcome.class_names)


def holdout_line(metrics: dict) -> str | None:
    """The holdout slice's figure in words, or None when none was recorded."""
    found = metrics.get("holdout") or {}
    if not found.get("test_examples"):
        return None
    return (f"holdout (the {found['share']:.0%} of test photos the promotion gate never "
            f"scores, {found['test_examples']} crops): accuracy {stated(found, 'accuracy')}, "
            f"macro F1 {stated(found, 'macro_f1')}")


def photo_counts(photos: tuple[str, ...] | list[str]) -> tuple[np.ndarray, int]:
    """Each crop's photo index (photos in sorted order) and the number of photos."""
    names, index = np.unique(np.asarray(photos, dtype=str), return_inverse=True)
    return index.reshape(-1), len(names)


def additive(truth: np.ndarray, predicted: np.ndarray, k: int, index: np.ndarray,
             photos: int) -> np.ndarray:
    """Per photo: crops, correct crops, and per class true positives, false positives and
    false negatives (photos, 2 + 3k); every metric but ROC-AUC is a function of their sums."""
    rows = np.zeros((photos, 2 + 3 * k))
    np.add.at(rows[:, 0], index, 1)
    right = truth == predicted
    np.add.at(rows[:, 1], index, right)
    for c in range(k):
        np.add.at(rows[:, 2 + c], index, right & (truth == c))
        np.add.at(rows[:, 2 + k + c], index, ~right & (predicted == c))
        np.add.at(rows[:, 2 + 2 * k + c], index, ~right & (truth == c))
    return rows


def from_sums(sums: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and per-class precision, recall and F1 from summed additive rows
    (the last axis), as classification_metrics defines them (0 where undefined)."""
    tp, fp, fn = sums[..., 2:2 + k], sums[..., 2 + k:2 + 2 * k], sums[..., 2 + 2 * k:]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / (tp + fp))
        recall = np.nan_to_num(tp / (tp + fn))
        f1 = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
        accuracy = np.nan_to_num(sums[..., 1] / sums[..., 0])
    return {"accuracy": accuracy, "macro_f1": f1.mean(axis=-1), "precision": precision,
            "recall": recall, "f1": f1}


def resample_weights(photos: int, resamples: int, seed: int) -> list[np.ndarray]:
    """Blocks of bootstrap weights (how often each photo is drawn), each (<= BLOCK, photos)."""
    rng = np.random.default_rng(seed)
    even = np.full(photos, 1.0 / photos)
    return [rng.multinomial(photos, even, size=min(BLOCK, resamples - start))
            for start in range(0, resamples, BLOCK)]


def auc_draws(outcome: Outcome, index: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """ROC-AUC of every resample (crops repeated as often as their photo was drawn)."""
    values = []
    for block in weights:
        for row in block:
            repeat = row[index]
            values.append(mean_auc(np.repeat(outcome.truth, repeat),
                                   np.repeat(outcome.probs, repeat, axis=0)))
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """The central percentile interval of bootstrap values, rounded; None if undefined."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def metric_intervals(outcome: Outcome, resamples: int = RESAMPLES,
                     confidence: float = CONFIDENCE, seed: int = SEED) -> dict:
    """Intervals of accuracy, macro-F1, ROC-AUC and per-class precision, recall and F1, photos
    resampled together."""
    k = len(outcome.class_names)
    index, photos = photo_counts(outcome.photos)
    info = {"method": "percentile bootstrap over source photos", "confidence": confidence,
            "resamples": resamples, "seed": seed, "photos": photos}
    if not photos:
        return {**info, "accuracy": None, "macro_f1": None, "roc_auc": None, "per_class": {}}
    rows = additive(outcome.truth, outcome.probs.argmax(axis=1), k, index, photos)
    weights = resample_weights(photos, resamples, seed)
    draws = from_sums(np.concatenate([w @ rows for w in weights]), k)
    per_class = {name: {m: interval(draws[m][:, c], confidence)
                        for m in ("precision", "recall", "f1")}
                 for c, name in enumerate(outcome.class_names)}
    return {**info, "accuracy": interval(draws["accuracy"], confidence),
            "macro_f1": interval(draws["macro_f1"], confidence),
            "roc_auc": interval(auc_draws(outcome, index, weights), confidence),
            "per_class": per_class}


@dataclass(frozen=True)
class Comparison:
    """Candidate minus incumbent on the same test photos, with its bootstrap interval."""

    metric: str
    difference: float
    interval: list[float] | None
    p_value: float  # share of resamples where the candidate is not better by the margin
    margin: float
    confidence: float
    photos: int
    resamples: int

    @property
    def better(self) -> bool:
        """The whole interval lies above the margin."""
        return self.interval is not None and self.interval[0] > self.margin


def metric_draws(outcome: Outcome, metric: str, index: np.ndarray, photos: int,
                 weights: list[np.ndarray]) -> tuple[float | None, np.ndarray]:
    """A metric on the whole split and on every resample (NaN where undefined)."""
    if metric == "roc_auc":
        whole = mean_auc(outcome.truth, outcome.probs)
        return whole, auc_draws(outcome, index, weights)
    k = len(outcome.class_names)
    rows = additive(outcome.truth, outcome.probs.argmax(axis=1), k, index, photos)
    whole = float(from_sums(rows.sum(axis=0), k)[metric])
    if not weights:
        return whole, np.empty(0)
    return whole, from_sums(np.concatenate([w @ rows for w in weights]), k)[metric]


def value_of(outcome: Outcome, metric: str) -> float | None:
    """One metric (accuracy, macro_f1 or roc_auc) of an outcome on its whole split, rounded
    as metrics.json has it."""
    index, photos = photo_counts(outcome.photos)
    if metric == "macro_f1":  # per-class F1 rounded first, as classification_metrics does
        k = len(outcome.class_names)
        rows = additive(outcome.truth, outcome.probs.argmax(axis=1), k, index, photos)
        f1 = from_sums(rows.sum(axis=0), k)["f1"]
        return round(float(np.mean([round(float(v), 4) for v in f1])), 4)
    whole, _ = metric_draws(outcome, metric, index, photos, [])
    return None if whole is None else round(whole, 4)


def compare(candidate: Outcome, incumbent: Outcome, metric: str, margin: float = 0.0,
            confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
            seed: int = SEED) -> Comparison:
    """Paired bootstrap over photos: both models' metric on the same resampled photos."""
    incumbent = incumbent.aligned(candidate.class_names)
    if candidate.photos != incumbent.photos or not np.array_equal(candidate.truth,
                                                                   incumbent.truth):
        raise ValueError("the two models were not scored on the same test crops")
    index, photos = photo_counts(candidate.photos)
    weights = resample_weights(photos, resamples, seed) if photos else []
    ours, our_draws = metric_draws(candidate, metric, index, photos, weights)
    theirs, their_draws = metric_draws(incumbent, metric, index, photos, weights)
    diffs = our_draws - their_draws
    diffs = diffs[~np.isnan(diffs)]
    difference = float("nan") if ours is None or theirs is None else round(ours - theirs, 4)
    # Exact ties (both right on the same photos) count against the candidate.
    p = (1 + int((diffs <= margin + 1e-12).sum())) / (1 + len(diffs))
    return Comparison(metric, difference, interval(diffs, confidence), round(p, 4), margin,
                      confidence, photos, len(diffs))

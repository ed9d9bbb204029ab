"""The promotion gate (does a newly trained model replace the served one?) and the promotion
record, the small JSON file that says which model to serve. Imports no store or framework: the
pipeline writes the record and the service reads it, each passing BentoML's home folder.

Beside the record: the pending marker (a gate's decision whose publish has not completed yet,
for operators and for the next run to finish) and the history (every record written, one JSON
line each, so a rollback can carry the older model's publication)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from model.atomic import write_json
from model.intervals import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Comparison,
    Outcome,
    compare,
    value_of,
)

# Test-split metrics (model/evaluate.py) a gate can compare; higher is better for all three.
PROMOTION_METRICS = ("macro_f1", "accuracy", "roc_auc")


@dataclass(frozen=True)
class Incumbent:
    """The promoted model, scored on the candidate's test split when it could be."""

    tag: str
    class_names: tuple[str, ...]
    score: float | None  # None when it was not evaluated (other classes, or missing)
    missing: bool = False  # its record points at a model no longer in the store
    # Its answers on the candidate's test split, crop by crop: the paired comparison's input.
    outcome: Outcome | None = None
    # For shadow replay: the loaded model, its input size, and when it was promoted.
    model: Any = field(default=None, compare=False, repr=False)
    image_size: int | None = None
    promoted_at: str | None = None


@dataclass(frozen=True)
class Rule:
    """When a candidate beats the incumbent: by more than margin (in the metric's units) at
    confidence, by a paired bootstrap over the test photos."""

    margin: float = 0.0
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED


DEFAULT_RULE = Rule()


@dataclass(frozen=True)
class Decision:
    """Whether to promote, and why, in words an operator can act on."""

    promote: bool
    reason: str
    metric: str
    candidate_score: float | None
    incumbent_tag: str | None = None
    incumbent_score: float | None = None
    # The registry revision the decision was taken against: a promotion written later stands
    # only if that revision is still the promoted one (model/registry_state.py).
    incumbent_top_hash: str | None = None
    # The paired comparison on the same test photos (None when none was made): candidate
    # minus incumbent, its interval at confidence, and the one-sided p-value of "not better
    # by more than the margin".
    difference: float | None = None
    difference_interval: list[float] | None = None
    p_value: float | None = None
    margin: float | None = None
    confidence: float | None = None
    photos: int | None = None
    # The shadow replay on the kept uploads (flows/watching/shadow.py), when one ran.
    shadow: dict | None = None

    def as_dict(self) -> dict:
        """The decision as plain JSON-able values."""
        return asdict(self)

    def figures(self) -> dict:
        """The paired comparison's figures that were computed, for records and histories."""
        return figures(self.as_dict())


FIGURES = ("difference", "difference_interval", "p_value", "margin", "confidence", "photos")


def figures(decision: dict) -> dict:
    """The paired comparison's figures of a decision (as_dict) that are not None."""
    return {k: decision[k] for k in FIGURES if decision.get(k) is not None}


def decide(metric: str, candidate_score: float | None, class_names: list[str] | tuple[str, ...],
           incumbent: Incumbent | None, force: bool = False, candidate: Outcome | None = None,
           rule: Rule = DEFAULT_RULE) -> Decision:
    """Promote when forced, when nothing is promoted, or when the candidate beats the
    incumbent on the same test photos beyond rule's margin at its confidence (a tie keeps the
    incumbent); class sets that differ need force."""
    if metric not in PROMOTION_METRICS:
        raise ValueError(f"unknown promotion metric {metric!r}: one of {PROMOTION_METRICS}")
    tag = incumbent.tag if incumbent else None
    theirs = incumbent.score if incumbent else None
    if incumbent is not None and incumbent.outcome is not None and theirs is None:
        theirs = value_of(incumbent.outcome, metric)  # its metric on the candidate's split
    if candidate is not None:  # on the crops the incumbent is scored on (no holdout)
        candidate_score = value_of(candidate, metric)

    def decision(promote: bool, reason: str) -> Decision:
        return Decision(promote, reason, metric, candidate_score, tag, theirs)

    if force:
        against = f" over {tag} ({metric} {theirs})" if incumbent else ""
        return decision(True, f"forced promotion{against}")
    if incumbent is None:
        return decision(True, "first model of this name: nothing was promoted yet")
    if incumbent.missing:
        return decision(True, f"the promoted model {tag} is no longer in the model store")
    if set(incumbent.class_names) != set(class_names):
        # The served label set is a contract with the service's clients, and a class can also
        # vanish by accident (its downloads failed): changing it takes an operator's decision.
        return decision(False, (
            f"the classes changed ({sorted(incumbent.class_names)} served, "
            f"{sorted(class_names)} trained), so no test metric compares the two models; "
            "promote it with force_promote (OPENIMAGER_FORCE_PROMOTE=true) if the change is "
            "meant"))
    if candidate is None or incumbent.outcome is None:
        return decision(False, "the two models' answers on the same test photos "
                               "are missing, so they cannot be compared")
    found = compare(candidate, incumbent.outcome, metric, rule.margin, rule.confidence,
                    rule.resamples, rule.seed)
    if math.isnan(found.difference) or found.interval is None:
        return decision(False, f"{metric} is undefined on this test split "
                               f"(new {candidate_score}, promoted {theirs})")
    return paired(decision(found.better, explain(found, candidate_score, theirs, tag)), found)


def explain(found: Comparison, ours: float | None, theirs: float | None, tag: str | None) -> str:
    """The paired comparison in words."""
    low, high = found.interval or (None, None)
    numbers = (f"{found.metric} {ours} vs {theirs} of the promoted {tag} on the same "
               f"{found.photos} test photos: difference {found.difference:+.4f}, "
               f"{found.confidence:.0%} interval [{low:+.4f}, {high:+.4f}], p={found.p_value}")
    if found.better:
        return f"{numbers}; better beyond the margin {found.margin}"
    return (f"{numbers}; not better beyond the margin {found.margin} at "
            f"{found.confidence:.0%} confidence (a tie keeps the promoted model); kept in the "
            "store")


def paired(decision: Decision, found: Comparison) -> Decision:
    """decision with the comparison's figures."""
    return replace(decision, difference=found.difference, difference_interval=found.interval,
                   p_value=found.p_value, margin=found.margin, confidence=found.confidence,
                   photos=found.photos)


def record_file(home: Path, name: str) -> Path:
    """Where the promoted version of model name is recorded, beside BentoML's store at home."""
    return Path(home) / "openimager" / "promoted" / f"{name}.json"


def read_record(home: Path, name: str) -> dict | None:
    """The promotion record of name ({"tag", "promoted_at", ...}), or None."""
    path = record_file(home, name)
    return json.loads(path.read_text()) if path.exists() else None


def write_record(home: Path, record: dict) -> None:
    """Replace the promotion record of the model that record["tag"] names, atomically."""
    write_json(record_file(home, record["tag"].split(":", 1)[0]), record)


def pending_file(home: Path, name: str) -> Path:
    """Where a promotion decided but not yet published and recorded is marked, beside the record."""
    return record_file(home, name).with_suffix(".pending.json")


def read_pending(home: Path, name: str) -> dict | None:
    """The pending promotion of name ({"tag", "decided_at", "decision", ...}), or None."""
    path = pending_file(home, name)
    return json.loads(path.read_text()) if path.exists() else None


def write_pending(home: Path, pending: dict) -> None:
    """Mark pending["tag"] as decided for promotion, atomically."""
    write_json(pending_file(home, pending["tag"].split(":", 1)[0]), pending)


def clear_pending(home: Path, name: str) -> None:
    """Remove the pending marker of name, if any."""
    pending_file(home, name).unlink(missing_ok=True)


def history_file(home: Path, name: str) -> Path:
    """Every promotion record of name ever written, one JSON line each, oldest first."""
    return record_file(home, name).with_suffix(".history.jsonl")


def append_history(home: Path, record: dict) -> None:
    """Add a written record to its name's history (a line torn by a crash is skipped on read)."""
    path = history_file(home, record["tag"].split(":", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def read_history(home: Path, name: str) -> list[dict]:
    """The promotion records of name, oldest first."""
    path = history_file(home, name)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the tail of a write cut short
            continue
    return records

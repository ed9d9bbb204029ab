"""The promotion gate (does a newly trained model replace the served one?) and the promotion
record, the small JSON file that says which model to serve. Imports no store or framework: the
pipeline writes the record and the service reads it, each passing BentoML's home folder.

Beside the record: the pending marker (a gate's decision whose publish has not completed yet,
for operators and for the next run to finish) and the history (every record written, one JSON
line each, so a rollback can carry the older model's publication)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from model.atomic import write_json

# Test-split metrics (model/evaluate.py) a gate can compare; higher is better for all three.
PROMOTION_METRICS = ("macro_f1", "accuracy", "roc_auc")


@dataclass(frozen=True)
class Incumbent:
    """The promoted model, scored on the candidate's test split when it could be."""

    tag: str
    class_names: tuple[str, ...]
    score: float | None  # None when it was not evaluated (other classes, or missing)
    missing: bool = False  # its record points at a model no longer in the store


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

    def as_dict(self) -> dict:
        """The decision as plain JSON-able values."""
        return asdict(self)


def decide(metric: str, candidate_score: float | None, class_names: list[str] | tuple[str, ...],
           incumbent: Incumbent | None, force: bool = False) -> Decision:
    """Promote when forced, when nothing is promoted, or when the candidate scores at least the
    incumbent on the same test split; class sets that differ need force."""
    if metric not in PROMOTION_METRICS:
        raise ValueError(f"unknown promotion metric {metric!r}: one of {PROMOTION_METRICS}")
    tag = incumbent.tag if incumbent else None
    theirs = incumbent.score if incumbent else None

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
    if candidate_score is None or theirs is None:
        return decision(False, f"{metric} is undefined on this test split "
                               f"(new {candidate_score}, promoted {theirs})")
    if candidate_score >= theirs:
        return decision(True, f"{metric} {candidate_score} >= {theirs} of the promoted {tag} "
                              "on the same test split")
    return decision(False, f"{metric} {candidate_score} < {theirs} of the "
                           f"promoted {tag} on the same test split; kept in the store")


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

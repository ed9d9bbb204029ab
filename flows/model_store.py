"""The BentoML model store: registering trained models with lineage, and which one is promoted."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer

from model.atomic import write_json
from model.promotion import (
    Decision,
    Incumbent,
    decide,
    read_record,
    record_file,
    write_record,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

MODEL_FILES = ("model.keras", "metrics.json")
REPORT_FILES = ("training_curves.png", "confusion_matrix.png")  # copied when present
SUMMARY = "openimager.json"  # the whole training summary; BentoML metadata drops None values


def register_model(model_dir: Path, name: str, metadata: dict, labels: dict[str, str]) -> str:
    """Copy a trained model (and its report PNGs) into the BentoML store and return its tag."""
    with bentoml.models.create(name, labels=labels, metadata=_storable(metadata)) as stored:
        for file in MODEL_FILES:
            shutil.copy2(model_dir / file, stored.path_of(file))
        for file in REPORT_FILES:
            if (model_dir / file).exists():
                shutil.copy2(model_dir / file, stored.path_of(file))
        write_json(Path(stored.path_of(SUMMARY)), metadata)
    return str(stored.tag)


def find_trained(name: str, label: str, value: str) -> tuple[str, dict] | None:
    """The newest stored model of name whose label equals value, with its training summary."""
    try:
        models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:  # nothing of this name yet
        return None
    found = sorted((m for m in models if m.info.labels.get(label) == value
                    and Path(m.path_of(SUMMARY)).exists()),
                   key=lambda m: m.info.creation_time, reverse=True)
    if not found:
        return None
    return str(found[0].tag), json.loads(Path(found[0].path_of(SUMMARY)).read_text())


def restore_model(tag: str, model_dir: Path) -> None:
    """Put a stored model's files back in model_dir, where publishing takes them from."""
    stored = bentoml.models.get(tag)
    model_dir.mkdir(parents=True, exist_ok=True)
    for old in model_dir.glob("*.png"):
        old.unlink()
    for file in (*MODEL_FILES, *REPORT_FILES):
        if Path(stored.path_of(file)).exists():
            shutil.copy2(stored.path_of(file), model_dir / file)


def _storable(value: object) -> object:
    """value without None entries in dicts: BentoML metadata refuses None (absent = undefined)."""
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def load_model(tag: str) -> tuple[keras.Model, dict]:
    """A stored model, ready to predict, with its metadata."""
    import keras  # TensorFlow loads only when a model is needed

    stored = bentoml.models.get(tag)
    model = keras.saving.load_model(stored.path_of("model.keras"), compile=False)
    return model, dict(stored.info.metadata)


def bentoml_home() -> Path:
    """BentoML's home folder, where the store and the promotion records live."""
    return Path(BentoMLContainer.bentoml_home.get())


def promotion_file(name: str) -> Path:
    """Where the promoted version of a model is recorded, beside BentoML's own store."""
    return record_file(bentoml_home(), name)


def promoted(name: str) -> dict | None:
    """The promotion record of a model name ({"tag", "promoted_at", ...}), or None."""
    return read_record(bentoml_home(), name)


def promote(tag: str, **details: object) -> dict:
    """Record tag as the promoted (served) version of its model name."""
    record = {"tag": tag, "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
              **details}
    write_record(bentoml_home(), record)
    return record


def incumbent(name: str, class_names: list[str],
              score: Callable[[keras.Model, dict], float | None]) -> Incumbent | None:
    """The promoted model of name, scored by score(model, metadata) if its classes match."""
    record = promoted(name)
    if record is None:
        return None
    try:
        stored = bentoml.models.get(record["tag"])
    except bentoml.exceptions.NotFound:
        return Incumbent(record["tag"], (), None, missing=True)
    theirs = tuple(stored.info.metadata.get("class_names", ()))
    if set(theirs) != set(class_names):
        return Incumbent(str(stored.tag), theirs, None)  # not comparable: decide() says why
    model, metadata = load_model(record["tag"])
    return Incumbent(str(stored.tag), theirs, score(model, metadata))


def annotate_promotion(tag: str, **details: object) -> dict | None:
    """Add details (e.g. the published package and top hash) to the promotion record of tag's
    name if it still names tag; return the record, or None if tag is not the promoted one."""
    record = promoted(tag.split(":", 1)[0])
    if record is None or record["tag"] != tag:
        return None
    record = {**record, **details}
    write_record(bentoml_home(), record)
    return record


def gate(tag: str, class_names: list[str], metric: str, candidate_score: float | None,
         score: Callable[[keras.Model, dict], float | None], force: bool = False,
         **details: object) -> Decision:
    """Decide whether tag replaces the promoted model of its name, and record it if so."""
    name = tag.split(":", 1)[0]
    record = promoted(name)
    if record is not None and record["tag"] == tag:  # a resumed run, or the same model again
        return Decision(True, f"{tag} is already the promoted model", metric, candidate_score,
                        tag, candidate_score)
    decision = decide(metric, candidate_score, class_names, incumbent(name, class_names, score),
                      force)
    if decision.promote:
        promote(tag, metric=metric, score=candidate_score, reason=decision.reason, **details)
    log.info("%s: %s", tag, decision.reason)
    return decision

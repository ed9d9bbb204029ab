"""The BentoML model store: registering trained models with lineage, and which one is promoted."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer

from flows.atomic import write_json

MODEL_FILES = ("model.keras", "metrics.json")


def register_model(model_dir: Path, name: str, metadata: dict, labels: dict[str, str]) -> str:
    """Copy a trained model into the BentoML store and return its tag."""
    with bentoml.models.create(name, labels=labels, metadata=metadata) as stored:
        for file in MODEL_FILES:
            shutil.copy2(model_dir / file, stored.path_of(file))
    return str(stored.tag)


def latest_tag(name: str) -> str | None:
    """The newest stored version of a model, or None."""
    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def promotion_file(name: str) -> Path:
    """Where the promoted version of a model is recorded, beside BentoML's own store."""
    return Path(BentoMLContainer.bentoml_home.get()) / "openimager" / "promoted" / f"{name}.json"


def promoted(name: str) -> dict | None:
    """The promotion record of a model name ({"tag", "promoted_at", ...}), or None."""
    path = promotion_file(name)
    return json.loads(path.read_text()) if path.exists() else None


def promote(tag: str, **details: object) -> dict:
    """Record tag as the promoted (served) version of its model name."""
    name = tag.split(":", 1)[0]
    record = {"tag": tag, "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
              **details}
    write_json(promotion_file(name), record)
    return record

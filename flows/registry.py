"""Registering trained models in the BentoML model store, with their lineage."""

from __future__ import annotations

import shutil
from pathlib import Path

import bentoml

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

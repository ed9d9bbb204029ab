"""Which model the service serves, where its files are, and the lineage GET /model reports.

In order: OPENIMAGER_MODEL_PATH (a folder with model.keras and openimager-model.json, as
`python -m flows.publishing.servable` installs from a published package), OPENIMAGER_MODEL_TAG,
the promotion record beside the BentoML store, else the newest stored version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import attrs
import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml.exceptions import NotFound

from model.promotion import read_record

DEFAULT_NAME = "openimager-classifier"
MODEL_FILE = "model.keras"
METADATA_FILE = "openimager-model.json"


class NoModel(NotFound):
    """No model to serve: the message says what was looked for and how to get one."""


@dataclass(frozen=True)
class Choice:
    """The model to serve: a store tag or a folder, and which rule picked it."""

    source: str  # "path", "env", "promoted", "latest" or "bento"
    tag: str | None = None
    path: Path | None = None
    promotion: dict | None = None


def model_name() -> str:
    """The model's name in the BentoML store."""
    return os.environ.get("OPENIMAGER_MODEL_NAME") or DEFAULT_NAME


def promotion_record(name: str) -> dict | None:
    """The promotion record of name, if any, beside the BentoML store."""
    return read_record(Path(BentoMLContainer.bentoml_home.get()), name)


def choose() -> Choice:
    """Pick the model from the environment and the promotion record; reads one small file."""
    if path := os.environ.get("OPENIMAGER_MODEL_PATH"):
        return Choice("path", path=Path(path))
    record = promotion_record(model_name())
    if tag := os.environ.get("OPENIMAGER_MODEL_TAG"):
        return Choice("env", tag=tag, promotion=record)
    if record is not None:
        return Choice("promoted", tag=record["tag"], promotion=record)
    return Choice("latest", tag=f"{model_name()}:latest")


def missing(choice: Choice) -> NoModel:
    """The fail-fast error for a model that is not there."""
    if choice.source == "path":
        return NoModel(f"OPENIMAGER_MODEL_PATH={choice.path} has no {MODEL_FILE} and "
                       f"{METADATA_FILE}: install a package there with "
                       "python -m flows.publishing.servable")
    why = {"env": "set by OPENIMAGER_MODEL_TAG", "promoted": "named by the promotion record",
           "latest": "the newest version; none is registered",
           "bento": "packed in the Bento"}[choice.source]
    return NoModel(f"no model {choice.tag} ({why}) in the BentoML store under "
                   f"{BentoMLContainer.bentoml_home.get()}: train one with "
                   "`python -m flows retrain`, or set OPENIMAGER_MODEL_TAG")


@attrs.frozen
class LocalModel(bentoml.models.BentoModel):
    """A BentoModel that looks in the local store only."""

    # What picked it, for the error message. (BentoModel would try BentoCloud over the
    # network for a missing model; this one fails fast with the reason instead.)
    choice: Choice | None = attrs.field(default=None, eq=False)

    def resolve(self, base_path: object = None) -> bentoml.Model:
        """The stored model (copied to base_path's store if given), or NoModel."""
        try:
            stored = bentoml.models.get(self.tag)
        except NotFound:
            raise missing(self.choice or Choice("env", tag=str(self.tag))) from None
        return stored if base_path is None else super().resolve(base_path)

    def to_info(self, alias: str | None = None) -> object:
        """Model info for `bentoml build`, resolved locally, with the promotion record."""
        # A Bento has no promotion file: GET /model reads the record from here.
        self.resolve()
        info = super().to_info(alias)
        record = self.choice.promotion if self.choice else None
        if record and record.get("tag") == str(info.tag):
            info = attrs.evolve(info, metadata={"promotion": record})
        return info


def served_choice(bento: object | None, service_name: str) -> Choice:
    """The model to serve: from a Bento, the packed one unless the environment names one."""
    choice = choose()
    if bento is None or choice.source in ("path", "env"):
        return choice
    for service in bento.info.services:
        for model in service.models if service.name == service_name else []:
            record = (model.metadata or {}).get("promotion")
            return Choice("bento", tag=str(model.tag), promotion=record)
    return choice


def declared_model() -> LocalModel | None:
    """The model reference the model service declares, so `bentoml build` packs it."""
    choice = choose()
    return None if choice.path is not None else LocalModel(choice.tag, choice=choice)


@dataclass(frozen=True)
class Located:
    """A model's file, its metadata and its resolved tag."""

    file: Path
    metadata: dict
    tag: str


def locate(choice: Choice) -> Located:
    """Find the chosen model's file and metadata, or raise NoModel."""
    if choice.path is not None:
        meta_file = choice.path / METADATA_FILE
        if not (choice.path / MODEL_FILE).is_file() or not meta_file.is_file():
            raise missing(choice)
        metadata = json.loads(meta_file.read_text())
        return Located(choice.path / MODEL_FILE, metadata, str(metadata.get("tag", "")))
    stored = LocalModel(choice.tag, choice=choice).resolve()
    return Located(Path(stored.path_of(MODEL_FILE)), dict(stored.info.metadata), str(stored.tag))


def lineage(choice: Choice, located: Located, image_size: int) -> dict:
    """What GET /model reports: the tag, classes, data, code, scores and publication."""
    meta = located.metadata
    record = choice.promotion if choice.promotion and choice.promotion.get("tag") == located.tag \
        else None
    published = record or meta  # a package installed by path carries its own name and hash
    names, mids = list(meta.get("class_names", [])), list(meta.get("class_mids", []))
    return {
        "tag": located.tag,
        "source": choice.source,
        "classes": [{"name": n, "mid": mids[i] if i < len(mids) else None}
                    for i, n in enumerate(names)],
        "image_size": image_size,
        "architecture": meta.get("architecture"),
        "dataset_id": meta.get("dataset_id"),
        "openimages_version": meta.get("openimages_version"),
        "package": published.get("package"),
        "top_hash": published.get("top_hash"),
        "git_commit": meta.get("git_commit"),
        "metrics": meta.get("metrics"),
        "trained_at": meta.get("trained_at"),
        "promoted_at": record.get("promoted_at") if record else None,
    }

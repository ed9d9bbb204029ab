"""Which model the service serves, where its files are, and the lineage GET /model reports.

In order, the first that is set wins:

1. OPENIMAGER_MODEL_PATH: a folder with model.keras and openimager-model.json, as
   `python -m flows.publishing.servable` installs from a published package ("path");
2. OPENIMAGER_MODEL_TAG: that model of the BentoML store, pinned ("env");
3. OPENIMAGER_REGISTRY=s3://bucket with OPENIMAGER_PACKAGE=user/name: the revision the
   registry's promotion state names (model/registry_state.py), fetched into a cache by
   service.registry, followed through every promotion and rollback ("registry"); with
   OPENIMAGER_TOP_HASH, that one revision, pinned ("revision": `bentoml build` packs it);
4. the promotion record beside the BentoML store ("promoted");
5. the newest stored version ("latest").

Inside a Bento, the packed model ("bento") comes before 4 and 5 and before a pinned revision.
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
from service import registry
from service.registry import Followed

DEFAULT_NAME = "openimager-classifier"
MODEL_FILE = "model.keras"
METADATA_FILE = "openimager-model.json"


class NoModel(NotFound):
    """No model to serve: the message says what was looked for and how to get one."""


@dataclass(frozen=True)
class Choice:
    """The model to serve: a store tag or a folder, and which rule picked it."""

    source: str  # "path", "env", "registry", "revision", "promoted", "latest" or "bento"
    tag: str | None = None
    path: Path | None = None
    promotion: dict | None = None
    followed: Followed | None = None  # the registry's package ("registry" and "revision")


def model_name() -> str:
    """The model's name in the BentoML store."""
    return os.environ.get("OPENIMAGER_MODEL_NAME") or DEFAULT_NAME


def promotion_record(name: str) -> dict | None:
    """The promotion record of name, if any, beside the BentoML store."""
    return read_record(Path(BentoMLContainer.bentoml_home.get()), name)


def choose() -> Choice:
    """Pick the model from the environment and the promotion record; reads one small file
    (the registry is read by resolved())."""
    if path := os.environ.get("OPENIMAGER_MODEL_PATH"):
        return Choice("path", path=Path(path))
    record = promotion_record(model_name())
    if tag := os.environ.get("OPENIMAGER_MODEL_TAG"):
        return Choice("env", tag=tag, promotion=record)
    if (followed := registry.followed()) is not None:
        return Choice("revision" if followed.top_hash else "registry", followed=followed)
    if record is not None:
        return Choice("promoted", tag=record["tag"], promotion=record)
    return Choice("latest", tag=f"{model_name()}:latest")


def resolved(choice: Choice) -> Choice:
    """A registry choice with the revision it names now: for "registry" the promoted one (one
    small GET; RegistryError when the registry cannot say), for "revision" its tag (the
    revision is fetched into the cache). Other choices are returned as they are."""
    if choice.source == "registry" and choice.tag is None:
        entry = registry.promoted(choice.followed)
        revision = Followed(choice.followed.registry, choice.followed.package,
                            entry["top_hash"])
        promotion = {**entry, "package": revision.package, "registry": revision.registry}
        return Choice("registry", tag=entry["tag"],
                      path=registry.revision_folder(revision, entry["top_hash"]),
                      promotion=promotion, followed=revision)
    if choice.source == "revision" and choice.tag is None:
        folder = registry.fetched(choice.followed)
        return Choice("revision", tag=registry.metadata_of(folder).get("tag"), path=folder,
                      followed=choice.followed)
    return choice


def missing(choice: Choice) -> NoModel:
    """The fail-fast error for a model that is not there."""
    if choice.followed is not None:
        return NoModel(f"{choice.followed.package}@{choice.followed.top_hash} in "
                       f"{choice.followed.registry} has no model to serve in {choice.path}")
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
    """The model to serve: from a Bento, the packed one unless the environment names one (a
    path, a tag, or a registry to follow)."""
    choice = choose()
    if bento is None or choice.source in ("path", "env", "registry"):
        return choice
    for service in bento.info.services:
        for model in service.models if service.name == service_name else []:
            record = (model.metadata or {}).get("promotion")
            return Choice("bento", tag=str(model.tag), promotion=record)
    return choice


@attrs.frozen
class RegistryModel(LocalModel):
    """The model of one registry revision (OPENIMAGER_TOP_HASH), imported into the local
    store when BentoML resolves it: `bentoml build` packs it, `bentoml serve` imports it
    before it starts. Its tag until then is a stand-in; the store's is the one its metadata
    names."""

    def stored_model(self) -> bentoml.Model:
        return bentoml.models.get(registry.import_revision(self.choice.followed))

    def resolve(self, base_path: object = None) -> bentoml.Model:
        stored = self.stored_model()
        return LocalModel(stored.tag, choice=self.choice).resolve(base_path)

    def to_info(self, alias: str | None = None) -> object:
        return LocalModel(self.stored_model().tag, choice=self.choice).to_info(alias)


def declared_model() -> LocalModel | None:
    """The model reference the model service declares, so `bentoml build` packs it (none for
    a folder or a followed registry: what they name changes while the service runs)."""
    choice = choose()
    if choice.source == "revision":
        return RegistryModel(f"{model_name()}:{choice.followed.top_hash[:16]}", choice=choice)
    if choice.path is not None or choice.source == "registry":
        return None
    return LocalModel(choice.tag, choice=choice)


def check_at_start(bento: object | None, service_name: str) -> None:
    """Fail `bentoml serve` at once, with the reason, when the chosen model is not there. A
    followed registry is not read here: each worker reads it, and shows in /readyz why it
    is not ready while the registry does not answer."""
    choice = served_choice(bento, service_name)
    if choice.source != "registry":
        locate(resolved(choice))


@dataclass(frozen=True)
class Located:
    """A model's file, its metadata and its resolved tag."""

    file: Path
    metadata: dict
    tag: str


def locate(choice: Choice) -> Located:
    """Find the chosen model's file and metadata, or raise NoModel (RegistryError when a
    registry revision cannot be fetched)."""
    if choice.followed is not None:
        choice = resolved(choice)
        registry.fetched(choice.followed)  # in the cache, fetched if needed
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
        "registry": published.get("registry"),
        "top_hash": published.get("top_hash"),
        "git_commit": meta.get("git_commit"),
        "metrics": meta.get("metrics"),
        "trained_at": meta.get("trained_at"),
        "promoted_at": record.get("promoted_at") if record else None,
    }

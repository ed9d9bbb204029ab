"""The models a shadow replay compares, loaded from wherever this host can find them: its
BentoML store first, else the registry's published revision (fetched into the workspace's
cache). The promoted one is the registry's, or this host's record without a registry."""

from __future__ import annotations

from pathlib import Path

from flows.settings import Settings
from flows.watching.shadow import Side


def side_of(tag: str, file: Path, metadata: dict) -> Side:
    """A loaded model file as one side of a replay."""
    import keras

    from flows.promotion.registry import input_size

    model = keras.saving.load_model(file, compile=False)
    size = metadata.get("image_size") or input_size(model)
    return Side(tag, model, tuple(metadata["class_names"]), int(size))


def stored(tag: str) -> tuple[str, Path, dict] | None:
    """A model of this host's BentoML store (name:latest resolved), or None."""
    import bentoml

    try:
        model = bentoml.models.get(tag)
    except (bentoml.exceptions.BentoMLException, ValueError):
        return None
    return str(model.tag), Path(model.path_of("model.keras")), dict(model.info.metadata)


def promoted_side(settings: Settings) -> tuple[Side, str | None]:
    """The promoted model and when it was promoted."""
    from flows.commands.errors import UsageError
    from flows.promotion.bentoml_store import promoted
    from flows.promotion.registry import fetched_model, has_registry, registry_of

    if not has_registry(settings):
        record = promoted(settings.model_name)
        found = stored(record["tag"]) if record else None
        if found is None:
            raise UsageError(f"no promoted {settings.model_name} in this host's BentoML store "
                             f"and no registry in {settings.registry_dir}: nothing to compare "
                             "the candidate with")
        return side_of(*found), record.get("promoted_at")
    with registry_of(settings) as registry:
        entry = registry.state()[0].get("promoted")
        if entry is None:
            raise UsageError(f"nothing is promoted for {registry.package} in {registry.url}: "
                             "nothing to compare the candidate with")
        found = stored(entry["tag"])
        if found is None:
            folder, metadata = fetched_model(registry, entry,
                                             settings.workspace / "cache" / "promoted")
            found = (entry["tag"], folder / "model.keras", metadata)
    return side_of(*found), entry.get("promoted_at")


def candidate_side(settings: Settings, wanted: str) -> Side:
    """The candidate: a tag of this host's store, or a tag or top hash in the registry."""
    from flows.promotion.bentoml_store import UnknownModel, bentoml_home
    from flows.promotion.registry import fetched_model, find_revision, has_registry, registry_of

    found = stored(wanted)
    if found is not None:
        return side_of(*found)
    if not has_registry(settings):
        raise UnknownModel(f"no model {wanted!r} in the BentoML store under {bentoml_home()} "
                           f"and no registry in {settings.registry_dir}: `bentoml models list` "
                           "shows the stored tags")
    with registry_of(settings) as registry:
        revision = find_revision(registry, registry.state()[0], wanted)
        folder, metadata = fetched_model(registry, revision,
                                         settings.workspace / "cache" / "promoted")
    return side_of(revision["tag"] or wanted, folder / "model.keras", metadata)

"""The registry's promotion state as the pipeline uses it: the gate's incumbent, fetched from
the registry into a cache when this process has never seen it; the promotion written after a
publish with compare-and-swap; promoting a revision or rolling back by hand.

The state itself (its object, format and conditional writes) is model/registry_state.py,
which the service reads too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.publishing.registries import EMBEDDED, opened
from flows.publishing.s3clients import boto3_session
from flows.settings import Settings
from model import registry_state
from model.promotion import Incumbent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registry:
    """An opened registry: its s3:// URL, the package, and an S3 client on its endpoint."""

    url: str
    package: str
    client: Any

    def state(self) -> tuple[dict, str | None]:
        return registry_state.read(self.client, self.url, self.package)

    def update(self, change: Callable[[dict], dict | None]) -> dict:
        return registry_state.update(self.client, self.url, self.package, change)


def has_registry(settings: Settings) -> bool:
    """Whether there is a registry to ask: any s3:// one, or an embedded one that exists (an
    embedded registry never started holds no promotion, and starting it costs seconds)."""
    if settings.registry != EMBEDDED:
        return True
    return settings.registry_dir.is_dir() and any(settings.registry_dir.iterdir())


@contextmanager
def registry_of(settings: Settings) -> Iterator[Registry]:
    """The settings' registry, opened (the embedded one started if it is not running)."""
    with opened(settings.registry, settings.registry_dir) as url:
        client = boto3_session().client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        yield Registry(url, settings.package_name, client)


def fetched_model(registry: Registry, entry: dict, cache: Path) -> tuple[Path, dict]:
    """The folder holding the model/ files of the promoted revision entry names (fetched from
    the registry into cache once) and its servable metadata."""
    from flows.publishing.servable import METADATA_FILE, fetch_model

    folder = cache / entry["top_hash"][:16]
    if not (folder / METADATA_FILE).exists():
        incoming = cache / f".{entry['top_hash'][:16]}.incoming"
        fetch_model(registry.package, registry.url, entry["top_hash"], incoming)
        incoming.replace(folder)  # the folder appears whole, or not at all
    return folder, json.loads((folder / METADATA_FILE).read_text())


def registry_incumbent(registry: Registry, entry: dict, class_names: list[str], cache: Path,
                       score: Callable[[Any, dict], Any]) -> Incumbent:
    """The registry's promoted model with its answers score(model, metadata) on the
    candidate's test split if its classes match: taken from the BentoML store when this host
    has it, else fetched from the registry."""
    import keras

    from flows.promotion.bentoml_store import stored_model_file

    theirs = None
    file = stored_model_file(entry["tag"])
    if file is not None:
        file, theirs = file
    else:
        folder, theirs = fetched_model(registry, entry, cache)
        file = folder / "model.keras"
    names = tuple(theirs.get("class_names", ()))
    if set(names) != set(class_names):
        return Incumbent(entry["tag"], names, None)
    model = keras.saving.load_model(file, compile=False)
    size = theirs.get("image_size") or input_size(model)
    return Incumbent(entry["tag"], names, None,
                     outcome=score(model, {**theirs, "image_size": size}), model=model,
                     image_size=int(size), promoted_at=entry.get("promoted_at"))


def input_size(model: Any) -> int:
    """The square input size of a model, from its Resizing layer."""
    for layer in model.layers:
        if type(layer).__name__ == "Resizing":
            return int(layer.height)
    raise ValueError("the model has no Resizing layer: its input size is unknown")


def entry_of(tag: str, top_hash: str, by: str, **details: Any) -> dict:
    """A promoted entry: the model, the revision that holds it, who decided, and why."""
    return {"tag": tag, "top_hash": top_hash, "by": by, **details}


def gate_entry(tag: str, top_hash: str, package: str, details: dict) -> dict:
    """The promoted entry of a gate's decision (details: its metric, score, reason, figures,
    shadow replay and dataset), written by this run."""
    from model.promotion import FIGURES

    keep = ("metric", "score", "reason", "dataset_id", "shadow", *FIGURES)
    return entry_of(tag, top_hash, registry_state.actor(run_name()), package=package,
                    **{k: details[k] for k in keep if k in details})


def run_name() -> str:
    """The Prefect flow run writing a decision, or the command."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
    except ImportError:  # pragma: no cover - prefect is always installed with the pipeline
        context = None
    if context is not None and context.flow_run is not None:
        return f"flow run {context.flow_run.name} ({context.flow_run.id})"
    return "python -m flows"


class NoRevision(LookupError):
    """A tag or top hash that names no revision of the package in the registry."""


def find_revision(registry: Registry, state: dict, wanted: str) -> dict:
    """The revision a tag or a (short) top hash names: from the history first, else from the
    package's revisions in the registry. Returns {"tag", "top_hash", ...}."""
    for seen in reversed(state.get("history", [])):
        if not seen.get("top_hash"):  # a rejected model: never published
            continue
        if seen.get("tag") == wanted or seen["top_hash"].startswith(wanted):
            return {k: seen.get(k) for k in ("tag", "top_hash", "dataset_id") if seen.get(k)}
    from flows.publishing.s3clients import quilt3_module

    quilt3 = quilt3_module()
    try:
        versions = list(quilt3.list_package_versions(registry.package, registry=registry.url))
    except Exception as error:
        raise NoRevision(f"no package {registry.package} in {registry.url}: {error}") from error
    for _, top_hash in versions:
        if top_hash.startswith(wanted):
            meta = quilt3.Package.browse(registry.package, registry=registry.url,
                                         top_hash=top_hash).meta
            return {"tag": meta.get("model_tag"), "top_hash": top_hash,
                    "dataset_id": meta.get("dataset_id")}
    for _, top_hash in reversed(versions):
        meta = quilt3.Package.browse(registry.package, registry=registry.url,
                                     top_hash=top_hash).meta
        if meta.get("model_tag") == wanted:
            return {"tag": wanted, "top_hash": top_hash, "dataset_id": meta.get("dataset_id")}
    raise NoRevision(f"no revision of {registry.package} in {registry.url} holds {wanted!r}: "
                     f"`python -m flows promotions` lists the promoted ones")


class NothingToRollBack(LookupError):
    """The promoted revision replaced nothing, or nothing is promoted."""


def decided_order(state: dict) -> list[str]:
    """The top hashes the history names, in the order it first names them."""
    return list(dict.fromkeys(seen["top_hash"] for seen in state.get("history", [])
                              if seen.get("top_hash")))


def pushes(registry: Registry) -> list[tuple[int, str]]:
    """(when, top hash) of every push of the package, oldest first (none if the package
    cannot be listed)."""
    from flows.publishing.s3clients import quilt3_module

    try:
        pointers = list(quilt3_module().list_package_versions(registry.package,
                                                              registry=registry.url))
    except Exception:  # noqa: BLE001 - no such package: nothing was pushed
        return []
    return sorted((int(when), top_hash) for when, top_hash in pointers if str(when).isdigit())


def pushed_order(registry: Registry) -> list[str]:
    """The package's revisions in the registry, by when each was first pushed."""
    return list(dict.fromkeys(top_hash for _, top_hash in pushes(registry)))


def is_older(registry: Registry, state: dict, top_hash: str, than: str) -> bool:
    """Whether revision top_hash came before revision than: by the history when it names
    both (it keeps the last 500 decisions), else by when they were pushed; False when
    neither tells."""
    known = decided_order(state)
    if top_hash not in known or than not in known:
        known = pushed_order(registry)
    return top_hash in known and than in known and known.index(top_hash) < known.index(than)


def promote_by_hand(registry: Registry, wanted: str) -> tuple[dict, dict | None]:
    """Make the revision a tag or top hash names the promoted one; return the state's new
    promoted entry and the one it replaced. A revision older than the promoted one rolls back:
    the promoted one is marked rolled back, as `rollback` marks it, so a retrain on its data
    is not promoted again unless forced."""
    for _ in range(registry_state.CAS_TRIES):
        state, _ = registry.state()
        found = find_revision(registry, state, wanted)
        before = state.get("promoted")
        back = before is not None and before["top_hash"] != found["top_hash"] \
            and is_older(registry, state, found["top_hash"], before["top_hash"])
        reason = "promoted by hand with python -m flows promote"
        entry = entry_of(found["tag"], found["top_hash"],
                         registry_state.actor("python -m flows promote"),
                         reason=f"rolled back from {before['tag']}: {reason}" if back else reason,
                         **{k: v for k, v in found.items() if k == "dataset_id"})
        # Whether it rolls back was judged against before: written only while it stands.
        change = registry_state.promote(entry, expected=before["top_hash"],
                                        action="rolled back to") if back \
            else registry_state.promote(entry)
        try:
            after = registry.update(change)
        except registry_state.Lost:
            continue
        return after["promoted"], before
    raise registry_state.StateError(
        f"the promoted revision of {registry.package} in {registry.url} changed "
        f"{registry_state.CAS_TRIES} times while this promotion was written: try again")


def rollback(registry: Registry) -> tuple[dict, dict]:
    """Promote again the revision the promoted one replaced, and mark the promoted one rolled
    back (a retrain on its data is then not promoted unless forced); return (new, old)."""
    state, _ = registry.state()
    current = state.get("promoted")
    if current is None or not current.get("replaced"):
        raise NothingToRollBack(
            f"{registry.package} in {registry.url}: "
            + ("nothing is promoted" if current is None else
               f"{current['tag']} replaced nothing") + ": name a revision with "
            "`python -m flows promote TAG_OR_TOP_HASH`")
    target = find_revision(registry, state, current["replaced"]["top_hash"])
    entry = entry_of(target["tag"], target["top_hash"],
                     registry_state.actor("python -m flows rollback"),
                     reason=f"rolled back from {current['tag']}",
                     **{k: v for k, v in target.items() if k == "dataset_id"})
    after = registry.update(registry_state.promote(entry, expected=current["top_hash"],
                                                   action="rolled back to"))
    return after["promoted"], current


def mark_pending(registry: Registry, tag: str, decided_at: str, against: str | None,
                 details: dict) -> None:
    """Record in the registry that the gate decided to promote tag over the revision against,
    before the publish (see registry_state.mark_pending)."""
    registry.update(registry_state.mark_pending({
        "tag": tag, "package": registry.package, "decided_at": decided_at,
        "by": registry_state.actor(run_name()), "against": against,
        "details": details}))


def revision_holding(registry: Registry, tag: str, since: str) -> str | None:
    """The top hash of a revision of the package whose metadata names model tag: among those
    pushed since the decision, or the newest (a publish that found its bundle there already
    pushes nothing). None when there is none."""
    from flows.publishing.s3clients import quilt3_module

    start = int(datetime.fromisoformat(since).timestamp())
    newest_first = pushes(registry)[::-1]
    for n, (when, top_hash) in enumerate(newest_first):
        if n and when < start:
            break
        meta = quilt3_module().Package.browse(registry.package, registry=registry.url,
                                              top_hash=top_hash).meta
        if meta.get("model_tag") == tag:
            return top_hash
    return None


def finish_decided(registry: Registry) -> list[dict]:
    """Finish the promotions the registry has pending, from any host: one whose model a
    revision holds is written (compare-and-swap against the revision it was decided over);
    one decided over a revision no longer promoted is dropped as superseded; one not
    published (yet: its run may still be at it) stays. Returns the entries promoted."""
    state, _ = registry.state()
    done = []
    by = registry_state.actor(run_name())
    for tag, decided in sorted(state.get("pending", {}).items(),
                               key=lambda item: item[1].get("decided_at", "")):
        current = (registry.state()[0].get("promoted") or {}).get("top_hash")
        if current == decided.get("against"):
            top_hash = revision_holding(registry, tag, decided["decided_at"])
            if top_hash is None:
                continue
            entry = {**gate_entry(tag, top_hash, decided.get("package", registry.package),
                                  decided.get("details", {})), "decided_by": decided.get("by")}
            try:
                done.append(registry.update(registry_state.promote(
                    entry, expected=decided.get("against")))["promoted"])
                log.warning("%s was published as %s@%s but its run stopped before the "
                            "promotion was written: written now", tag, registry.package,
                            top_hash[:12])
                continue
            except registry_state.Lost:
                pass  # promoted by another since this read: superseded
        registry.update(registry_state.supersede(tag, by))
        log.info("the pending promotion of %s is superseded: another was promoted since", tag)
    return done

"""The promotion state kept in the registry: which revision of a package is promoted, and the
history of every decision. The registry (the S3 bucket that holds the quilt3 packages) is the
truth; the BentoML store and the workspace are caches of it.

One small JSON object per package, `.openimager/promotion/<package>.json`, written with S3
conditional writes: If-None-Match: * creates it, If-Match: <ETag> replaces the version that
was read. Two writers that read the same version cannot both replace it: the second gets 412
and reads again, and a change that depended on what it first read (the gate's incumbent)
then fails as Lost, naming the winner. Imports boto3's exceptions only; the caller brings the
client, so the pipeline and the service each use their own.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from types import EllipsisType
from typing import Any

PREFIX = ".openimager/promotion"
HISTORY_KEPT = 500  # decisions kept in the object; a decision is a few hundred bytes
CAS_TRIES = 8


class Lost(RuntimeError):
    """A change refused because the state moved since it was decided; winner is the promoted
    entry that stands (None when nothing is promoted)."""

    def __init__(self, message: str, winner: dict | None) -> None:
        super().__init__(message)
        self.winner = winner


class StateError(RuntimeError):
    """The state object cannot be read or written; the message says which and why."""


def split_registry(registry: str) -> str:
    """The bucket of an s3:// registry URL."""
    if not registry.startswith("s3://"):
        raise StateError(f"registry {registry!r} is not an s3:// URL")
    return registry[5:].split("/", 1)[0]


def state_key(package: str) -> str:
    """The key of a package's promotion state in its registry's bucket."""
    return f"{PREFIX}/{package}.json"


def now() -> str:
    """The time of a decision, as ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def actor(run: str | None = None) -> str:
    """Who writes a decision: the run (a Prefect flow run, a command) and the host."""
    return f"{run or 'command'} on {socket.gethostname()}"


def empty(package: str) -> dict:
    """The state of a package nothing was ever promoted for."""
    return {"package": package, "generation": 0, "promoted": None, "history": []}


def read(client: Any, registry: str, package: str) -> tuple[dict, str | None]:
    """The state of package and the ETag it was read at (None: there is none yet)."""
    from botocore.exceptions import ClientError

    try:
        answer = client.get_object(Bucket=split_registry(registry), Key=state_key(package))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return empty(package), None
        raise StateError(f"cannot read the promotion state of {package} in {registry}: "
                         f"{error}") from error
    try:
        state = json.loads(answer["Body"].read())
    except ValueError as error:
        raise StateError(f"the promotion state s3://{split_registry(registry)}/"
                         f"{state_key(package)} is not JSON: {error}") from error
    return state, answer["ETag"]


def promoted(client: Any, registry: str, package: str) -> dict | None:
    """The promoted entry of package ({"tag", "top_hash", "promoted_at", ...}) or None."""
    return read(client, registry, package)[0].get("promoted")


def write(client: Any, registry: str, package: str, state: dict, etag: str | None) -> str:
    """Replace the state read at etag (create it if etag is None); return the new ETag, or
    raise Conflict when another writer replaced it first."""
    from botocore.exceptions import ClientError

    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    body = json.dumps(state, indent=1, sort_keys=True, default=str).encode()
    try:
        answer = client.put_object(Bucket=split_registry(registry), Key=state_key(package),
                                   Body=body, ContentType="application/json", **condition)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            raise Conflict(code or str(status)) from error
        raise StateError(f"cannot write the promotion state of {package} in {registry}: "
                         f"{error}") from error
    return answer["ETag"]


class Conflict(RuntimeError):
    """Another writer replaced the state between this writer's read and write."""


def update(client: Any, registry: str, package: str,
           change: Callable[[dict], dict | None]) -> dict:
    """Apply change(state) -> new state (or None: nothing to write) with compare-and-swap,
    reading again after each conflict; return the state that stands. change may raise Lost."""
    for _ in range(CAS_TRIES):
        state, etag = read(client, registry, package)
        new = change(json.loads(json.dumps(state)))  # a copy: change may edit it
        if new is None:
            return state
        new["generation"] = int(state.get("generation", 0)) + 1
        new["history"] = new.get("history", [])[-HISTORY_KEPT:]
        try:
            write(client, registry, package, new, etag)
        except Conflict:
            continue
        return new
    raise StateError(f"the promotion state of {package} in {registry} changed {CAS_TRIES} "
                     "times while this change was written: try again")


def event(action: str, entry: dict, **details: Any) -> dict:
    """A history line: promoted, rejected, rolled back, lost to another writer, or a pending
    decision superseded."""
    keep = ("tag", "top_hash", "dataset_id", "metric", "score", "reason", "by", "shadow")
    return {"action": action, "at": now(), **{k: entry.get(k) for k in keep if k in entry},
            **details}


def promote(entry: dict, expected: str | EllipsisType | None = ...,
            action: str = "promoted") -> Callable[[dict], dict | None]:
    """The change that makes entry ({"tag", "top_hash", ...}) the promoted revision.

    expected is the top hash the decision was taken against (None: nothing was promoted);
    when the promoted revision is another by the time of the write, the change raises Lost.
    Ellipsis (the default) promotes whatever stands, as an operator's command does.
    """

    def change(state: dict) -> dict | None:
        current = state.get("promoted")
        if current is not None and current.get("top_hash") == entry["top_hash"]:
            # Already promoted (a rerun, the same revision again): only its pending decision,
            # if a finished one is still there, goes.
            return state if state.get("pending", {}).pop(entry["tag"], None) else None
        standing = current.get("top_hash") if current else None
        if expected is not ... and standing != expected:
            winner = f"{current['tag']} ({current['top_hash'][:12]})" if current else "nothing"
            raise Lost(f"{entry['tag']} lost: the gate compared it with "
                       f"{expected[:12] if expected else 'nothing promoted'}, but {winner} "
                       f"was promoted since by {current.get('by') if current else '?'}",
                       current)
        new = {**entry, "promoted_at": now(),
               "replaced": {k: current.get(k) for k in ("tag", "top_hash")} if current else None}
        state["promoted"] = new
        state["history"] = [*state.get("history", []), event(action, new)]
        state.get("pending", {}).pop(entry["tag"], None)  # decided, published, written
        if state.get("rolled_back"):  # served again: an operator's word lifts its mark
            state["rolled_back"] = [gone for gone in state["rolled_back"]
                                    if gone.get("top_hash") != entry["top_hash"]]
        if action == "rolled back to" and current is not None:
            state["rolled_back"] = [*state.get("rolled_back", []),
                                    {k: current.get(k) for k in ("tag", "top_hash", "dataset_id")}
                                    | {"at": now(), "by": entry.get("by")}][-HISTORY_KEPT:]
        return state

    return change


def note(action: str, entry: dict, **details: Any) -> Callable[[dict], dict]:
    """The change that adds a history line (a rejected candidate, a lost race); a pending
    decision about the same model is void."""

    def change(state: dict) -> dict:
        state["history"] = [*state.get("history", []), event(action, entry, **details)]
        state.get("pending", {}).pop(entry.get("tag"), None)
        return state

    return change


def mark_pending(decided: dict) -> Callable[[dict], dict]:
    """The change that records a promotion the gate decided before its publish: decided is
    {"tag", "package", "decided_at", "by", "against" (the promoted top hash it was compared
    with, None for nothing), "details" (the gate's figures)}, kept under "pending" by its tag
    with the generation of the state it was written on. Writing the promotion (or its loss)
    removes it; until then any host can finish it (flows/promotion/registry.py)."""

    def change(state: dict) -> dict:
        state["pending"] = {**state.get("pending", {}), decided["tag"]: {
            **decided, "generation": int(state.get("generation", 0))}}
        return state

    return change


def supersede(tag: str, by: str) -> Callable[[dict], dict | None]:
    """The change that drops the pending decision of tag, as another promotion came first:
    a history line "superseded" names the revision promoted instead."""

    def change(state: dict) -> dict | None:
        decided = state.get("pending", {}).pop(tag, None)
        if decided is None:
            return None  # finished or dropped by another host meanwhile
        current = state.get("promoted")
        against = decided.get("against")
        reason = (f"decided by {decided.get('by')} against "
                  f"{against[:12] if against else 'nothing promoted'}, but "
                  f"{current['tag'] if current else 'nothing'} is promoted now")
        state["history"] = [*state.get("history", []), event(
            "superseded", {"tag": tag, "by": by, "reason": reason,
                           "dataset_id": decided.get("details", {}).get("dataset_id")},
            decided_at=decided.get("decided_at"), against=against)]
        return state

    return change


def rolled_back(state: dict, tag: str | None = None, dataset_id: str | None = None
                ) -> dict | None:
    """The rollback that took tag, or a model trained on dataset_id, out of service, if any."""
    for gone in reversed(state.get("rolled_back", [])):
        if (tag and gone.get("tag") == tag) or (dataset_id and gone.get("dataset_id")
                                                == dataset_id):
            return gone
    return None


def storable(value: Any) -> Any:
    """value without None entries in dicts: BentoML's metadata refuses None (absent means
    undefined). The pipeline and the service both store models with metadata."""
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def servable_metadata(meta: dict, package: str, registry: str, top_hash: str) -> dict:
    """The service's model metadata (openimager-model.json) from a published revision's
    package metadata: what a replica or an installed folder serves the model with."""
    classes = list(meta["classes"])
    mids = meta.get("class_mids") or {}
    return {
        "tag": meta.get("model_tag"),
        "class_names": classes,
        "class_mids": [mids.get(c) for c in classes],
        "dataset_id": meta.get("dataset_id"),
        "openimages_version": meta.get("openimages_version"),
        "git_commit": meta.get("git_commit"),
        "metrics": meta.get("metrics"),
        "drift_reference": meta.get("drift_reference"),
        "package": package,
        "registry": registry,
        "top_hash": top_hash,
    }

"""The registry as the service reads it: which revision of a package is promoted
(model/registry_state.py) and that revision's model/ files, fetched once into a cache folder
keyed by top hash.

    OPENIMAGER_REGISTRY=s3://bucket OPENIMAGER_PACKAGE=user/name \\
        bentoml serve service.service:Classifier

The endpoint and credentials come from the standard AWS configuration (profiles, environment
credentials, AWS_ENDPOINT_URL), as boto3 reads it. OPENIMAGER_TOP_HASH pins one revision
instead of following the promotion. The cache is `<BentoML home>/registry/<bucket>/<package>/
<top hash>`: a revision is fetched into a temporary folder beside it and renamed into place, so
a folder is there whole or not at all, and two workers fetching the same revision at once
keep one of the two. The few lines that fetch a revision repeat flows/publishing/servable.py's:
the service imports nothing of flows/.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import registry_state
from model.atomic import write_json
from model.registry_state import servable_metadata, storable

REGISTRY_VARIABLE = "OPENIMAGER_REGISTRY"
PACKAGE_VARIABLE = "OPENIMAGER_PACKAGE"
TOP_HASH_VARIABLE = "OPENIMAGER_TOP_HASH"
MODEL_FILE = "model.keras"
METADATA_FILE = "openimager-model.json"  # the name service.source reads
KEPT_REVISIONS = 3  # fetched revisions kept in the cache, the most recently used


class RegistryError(RuntimeError):
    """The registry cannot give the model to serve now (unreachable, nothing promoted, a fetch
    that failed): the served model stays, and the next check tries again."""


@dataclass(frozen=True)
class Followed:
    """A package in a registry; top_hash is the revision (pinned, or once resolved)."""

    registry: str
    package: str
    top_hash: str | None = None

    @property
    def where(self) -> str:
        return f"{self.package} in {self.registry}"


def followed() -> Followed | None:
    """The registry and package the environment names, or None (both are needed)."""
    registry = os.environ.get(REGISTRY_VARIABLE, "").strip()
    package = os.environ.get(PACKAGE_VARIABLE, "").strip()
    top_hash = os.environ.get(TOP_HASH_VARIABLE, "").strip().lower() or None
    if not package:
        if top_hash:
            raise ValueError(f"{TOP_HASH_VARIABLE} names a revision of a package: set "
                             f"{PACKAGE_VARIABLE}=user/name and {REGISTRY_VARIABLE}=s3://BUCKET")
        return None  # OPENIMAGER_REGISTRY alone is the pipeline's: the service does not follow
    if not registry.startswith("s3://") or not registry_state.split_registry(registry):
        raise ValueError(f"{PACKAGE_VARIABLE}={package} needs {REGISTRY_VARIABLE}=s3://BUCKET, "
                         f"got {registry or 'nothing'!r}")
    if package.count("/") != 1 or not all(package.split("/")):
        raise ValueError(f"{PACKAGE_VARIABLE}={package!r} is not a package name (user/name)")
    if top_hash is not None and not re.fullmatch(r"[0-9a-f]{64}", top_hash):
        raise ValueError(f"{TOP_HASH_VARIABLE}={top_hash!r} is not a top hash (64 hex digits)")
    return Followed(registry, package, top_hash)


@functools.cache
def client() -> Any:
    """One S3 client per process, on AWS_ENDPOINT_URL if set, with short timeouts: a registry
    that does not answer costs a check seconds, not minutes."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2})
    return boto3.session.Session().client(
        "s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)


def promoted(package: Followed) -> dict:
    """The promoted entry of the package ({"tag", "top_hash", "promoted_at", "by", ...}), or
    RegistryError when the state cannot be read or promotes nothing."""
    try:
        state, etag = registry_state.read(client(), package.registry, package.package)
    except Exception as error:  # unreachable, refused, not JSON: all alike here
        raise RegistryError(f"cannot read the promotion state of {package.where}: "
                            f"{type(error).__name__}: {error}") from error
    entry = state.get("promoted")
    if not entry or not entry.get("top_hash"):
        key = registry_state.state_key(package.package)
        raise RegistryError(
            f"nothing is promoted for {package.where} "
            f"(s3://{registry_state.split_registry(package.registry)}/{key} "
            f"{'is not there' if etag is None else 'promotes nothing'}): "
            "`python -m flows promote TAG_OR_TOP_HASH` promotes a published revision")
    return entry


def cache_root() -> Path:
    """Where fetched revisions are kept: beside the BentoML store."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get()) / "registry"


def revision_folder(package: Followed, top_hash: str) -> Path:
    """The cache folder of one revision (it may not be fetched yet)."""
    bucket = registry_state.split_registry(package.registry)
    return cache_root() / bucket / package.package / top_hash


def fetch_into(package: Followed, top_hash: str, dest: Path) -> dict:
    """Fetch model/ of one revision into dest, with the service's metadata file. Reads the
    revision's quilt3 manifest (.quilt/packages/<top hash>: a JSON line of metadata, then one
    per file with its physical S3 key) with boto3: the service loads no quilt3."""
    from urllib.parse import parse_qs, unquote, urlsplit

    bucket = registry_state.split_registry(package.registry)
    body = client().get_object(Bucket=bucket, Key=f".quilt/packages/{top_hash}")["Body"]
    head, *entries = [json.loads(line) for line in body.read().splitlines() if line.strip()]
    files = {e["logical_key"][len("model/"):]: e["physical_keys"][0] for e in entries
             if e.get("logical_key", "").startswith("model/")}
    if MODEL_FILE not in files:
        raise RegistryError(f"{package.package}@{top_hash[:12]} in {package.registry} has no "
                            f"model/{MODEL_FILE}")
    for name, physical in files.items():
        where = urlsplit(physical)
        version = parse_qs(where.query).get("versionId", [None])[0]
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        client().download_file(where.netloc, unquote(where.path.lstrip("/")), str(target),
                               ExtraArgs={"VersionId": version} if version else None)
    metadata = servable_metadata(head.get("user_meta") or {}, package.package,
                                 package.registry, top_hash)
    write_json(dest / METADATA_FILE, metadata)
    return metadata


def fetched(package: Followed) -> Path:
    """The cache folder of package.top_hash with every file in place, fetched if needed."""
    top_hash = package.top_hash
    assert top_hash, "a revision to fetch"
    folder = revision_folder(package, top_hash)
    if (folder / METADATA_FILE).is_file():
        os.utime(folder)  # recently used: pruned last
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{top_hash[:12]}.", suffix=".incoming",
                                     dir=folder.parent))
    try:
        fetch_into(package, top_hash, incoming)
        try:
            os.rename(incoming, folder)  # the folder appears whole, or not at all
        except OSError:
            if not (folder / METADATA_FILE).is_file():  # not another worker's copy: a failure
                raise
    except RegistryError:
        raise
    except Exception as error:  # unreachable, denied, a bad package
        raise RegistryError(f"cannot fetch {package.package}@{top_hash[:12]} from "
                            f"{package.registry}: {type(error).__name__}: {error}") from error
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    prune(folder.parent, folder)
    return folder


def prune(parent: Path, keep: Path, kept: int = KEPT_REVISIONS) -> None:
    """Delete fetched revisions beyond the `kept` most recently used (never keep)."""
    try:
        folders = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
        folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in folders[kept:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def metadata_of(folder: Path) -> dict:
    """The service's metadata of a fetched revision."""
    return json.loads((folder / METADATA_FILE).read_text())


def import_revision(package: Followed) -> str:
    """The revision package.top_hash in the BentoML store (imported under the model tag its
    metadata names, unless a model of that tag is there already); returns the tag."""
    import bentoml

    folder = fetched(package)
    metadata = metadata_of(folder)
    tag = metadata.get("tag")
    if not tag:
        raise RegistryError(f"{package.package}@{package.top_hash[:12]} names no model_tag in "
                            "its metadata")
    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(tag, metadata=storable(metadata),
                               labels={"source": "registry"}) as stored:
        shutil.copy2(folder / MODEL_FILE, stored.path_of(MODEL_FILE))
    return str(stored.tag)

"""Fetch the model of a published package version into a folder the service can serve.

For a service that is given a folder (it fetches from the registry itself only when it
follows one, service/registry.py, which repeats the few lines of fetch_model below):

    python -m flows.publishing.servable openimager/classifier --registry s3://my-registry \\
        --top-hash <hash> --dest served
    OPENIMAGER_MODEL_PATH=served bentoml serve service.service:Classifier

With --follow SECONDS (and no --top-hash) it keeps the folder at the revision the registry's
promotion state names (model/registry_state.py): every promotion and every rollback reaches
the folder, and the running service swaps each one in within OPENIMAGER_RELOAD_SECONDS. A
package without a promotion state (published before the registry kept one) is followed to its
newest revision, as before; a state that promotes nothing leaves the folder as it is. (A
service can also follow the registry itself: OPENIMAGER_REGISTRY and OPENIMAGER_PACKAGE.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from flows.publishing.registries import RegistryError, refuse_embedded_bucket
from flows.publishing.s3clients import quilt3_module
from model.atomic import write_json
from model.registry_state import servable_metadata

METADATA_FILE = "openimager-model.json"  # the name service.source reads
log = logging.getLogger(__name__)


def fetch_model(name: str, registry: str, top_hash: str | None, dest: Path) -> dict:
    """Fetch model/ of one package version (the newest without top_hash) into dest."""
    quilt3 = quilt3_module()
    package = quilt3.Package.browse(name, registry=registry, top_hash=top_hash)
    if "model" not in package or "model.keras" not in package["model"]:
        raise ValueError(f"{name} has no model/model.keras")
    dest.mkdir(parents=True, exist_ok=True)
    package["model"].fetch(str(dest) + "/")
    metadata = servable_metadata(package.meta, name, registry, package.top_hash)
    write_json(dest / METADATA_FILE, metadata)
    return metadata


def installed_hash(dest: Path) -> str | None:
    """The top hash of the version in dest, if one is there."""
    try:
        return json.loads((dest / METADATA_FILE).read_text()).get("top_hash")
    except (OSError, ValueError):
        return None


def followed_revision(name: str, registry: str) -> str | None:
    """The top hash --follow keeps: the promoted revision when the registry holds a promotion
    state for the package, else (no state) its newest revision; None when the state promotes
    nothing."""
    from flows.publishing.s3clients import boto3_session
    from model import registry_state

    client = boto3_session().client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    state, etag = registry_state.read(client, registry, name)
    if etag is not None:
        promoted = state.get("promoted")
        if promoted is None:
            log.warning("%s in %s: the promotion state promotes nothing: the folder stays as it "
                        "is", name, registry)
            return None
        return promoted["top_hash"]
    return quilt3_module().Package.browse(name, registry=registry).top_hash


def update(name: str, registry: str, dest: Path) -> dict | None:
    """Bring dest to the promoted revision (the newest for a package without a promotion
    state); return its metadata if it changed.

    The new files are fetched beside dest and moved in, the metadata last: the service sees
    the new version (its metadata) only once every file of it is in place.
    """
    newest = followed_revision(name, registry)
    if newest is None or newest == installed_hash(dest):
        return None
    incoming = dest.parent / f".{dest.name}.{newest[:12]}.incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        metadata = fetch_model(name, registry, newest, incoming)
        for path in sorted(incoming.iterdir(), key=lambda p: p.name == METADATA_FILE):
            os.replace(path, dest / path.name)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return metadata


def follow(name: str, registry: str, dest: Path, seconds: float, rounds: int | None = None
           ) -> None:
    """Keep dest at the promoted (or newest) revision, checking every seconds (rounds times,
    or forever)."""
    dest.mkdir(parents=True, exist_ok=True)
    done = 0
    while rounds is None or done < rounds:
        try:
            if metadata := update(name, registry, dest):
                log.warning("%s: now %s (%s)", dest, metadata["top_hash"][:12], metadata["tag"])
        except Exception as error:  # noqa: BLE001 - a registry hiccup: the folder stays as is
            log.warning("%s: could not check %s in %s: %s", dest, name, registry, error)
        done += 1
        if rounds is None or done < rounds:
            time.sleep(seconds)


def main(argv: list[str] | None = None) -> int:
    """Command line: fetch a published model for OPENIMAGER_MODEL_PATH."""
    parser = argparse.ArgumentParser(prog="python -m flows.publishing.servable",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--registry", required=True)
    parser.add_argument("--top-hash", help="the version (default: the newest)")
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--follow", type=float, metavar="SECONDS",
                        help="keep --dest at the promoted revision (the newest for a package "
                             "without a promotion state), checking this often")
    args = parser.parse_args(argv)
    try:
        refuse_embedded_bucket(args.registry)
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.follow:
        if args.top_hash:
            parser.error("--follow keeps the promoted revision: leave out --top-hash")
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
        follow(args.name, args.registry, args.dest, args.follow)
        return 0
    metadata = fetch_model(args.name, args.registry, args.top_hash, args.dest)
    print(json.dumps(metadata, indent=2))
    print(f"serve it with OPENIMAGER_MODEL_PATH={args.dest.resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

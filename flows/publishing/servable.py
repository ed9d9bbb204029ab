"""Fetch the model of a published package version into a folder the service can serve.

The service imports neither quilt3 nor prefect; this helper does the quilt3 part:

    python -m flows.publishing.servable openimager/classifier --registry s3://my-registry \\
        --top-hash <hash> --dest served
    OPENIMAGER_MODEL_PATH=served bentoml serve service.service:Classifier
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.atomic import write_json

METADATA_FILE = "openimager-model.json"  # the name service.source reads


def servable_metadata(meta: dict, name: str, registry: str, top_hash: str) -> dict:
    """The service's model metadata from a bundle's package metadata."""
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
        "package": name,
        "registry": registry,
        "top_hash": top_hash,
    }


def fetch_model(name: str, registry: str, top_hash: str | None, dest: Path) -> dict:
    """Fetch model/ of one package version (the newest without top_hash) into dest."""
    import quilt3

    package = quilt3.Package.browse(name, registry=registry, top_hash=top_hash)
    if "model" not in package or "model.keras" not in package["model"]:
        raise ValueError(f"{name} has no model/model.keras")
    dest.mkdir(parents=True, exist_ok=True)
    package["model"].fetch(str(dest) + "/")
    metadata = servable_metadata(package.meta, name, registry, package.top_hash)
    write_json(dest / METADATA_FILE, metadata)
    return metadata


def main(argv: list[str] | None = None) -> int:
    """Command line: fetch a published model for OPENIMAGER_MODEL_PATH."""
    parser = argparse.ArgumentParser(prog="python -m flows.publishing.servable",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--registry", required=True)
    parser.add_argument("--top-hash", help="the version (default: the newest)")
    parser.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    metadata = fetch_model(args.name, args.registry, args.top_hash, args.dest)
    print(json.dumps(metadata, indent=2))
    print(f"serve it with OPENIMAGER_MODEL_PATH={args.dest.resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

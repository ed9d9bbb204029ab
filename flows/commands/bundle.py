"""Command-line commands around published bundles: install, reproduce, train-dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BUNDLE_COMMANDS = ("install", "reproduce", "train-dataset")


def add_bundle_commands(sub: argparse._SubParsersAction) -> None:
    """Register the bundle commands on the main parser."""
    for command, text in (("install", "install a published package version"),
                          ("reproduce", "install a version, retrain it and compare metrics")):
        parser = sub.add_parser(command, help=text)
        parser.add_argument("name", help="namespace/name of the package")
        parser.add_argument("--registry", default="embedded",
                            help='"embedded" (the local registry of --workspace) or s3://bucket')
        parser.add_argument("--top-hash", help="the version; the newest when left out")
        parser.add_argument("--dest", type=Path, required=command == "install",
                            help="a fresh folder to install into" + (
                                "" if command == "install" else
                                " (default: a new one under <workspace>/reproduce/)"))
        parser.add_argument("--workspace", type=Path, default=Path("workspace"),
                            help="whose embedded registry to open (with --registry embedded)")
    reproduce = sub.choices["reproduce"]
    reproduce.add_argument("--tolerance", type=float, default=0.02,
                           help="allowed accuracy gap (0.02 = 2 points)")
    reproduce.add_argument("--force", action="store_true",
                           help="empty --dest first if it is not empty")
    train = sub.add_parser("train-dataset", help="train on a crops dataset folder (no registry)")
    train.add_argument("--dataset-dir", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--config", default="{}", help="training settings as JSON")


def run_bundle_command(args: argparse.Namespace) -> int:
    """Run one bundle command; return the exit code."""
    # Absolute: the retraining child of reproduce runs in another folder.
    state_dir = (args.workspace / "registry").resolve() if hasattr(args, "workspace") else None
    if args.command == "install":
        from flows.publishing.bundle import install
        from flows.publishing.registries import opened
        from flows.publishing.reproduce import prepare_dest, require_package

        dest = prepare_dest(args.dest)
        with opened(args.registry, state_dir) as registry:
            require_package(args.name, args.registry, registry, state_dir)
            top_hash = install(args.name, registry, args.top_hash, dest)
        print(f"installed {args.name}@{top_hash} into {dest}")
        return 0
    if args.command == "reproduce":
        from flows.publishing.reproduce import fresh_dest, reproduce

        dest = args.dest or fresh_dest(args.workspace / "reproduce", args.name)
        result = reproduce(args.name, args.registry, args.top_hash, dest, state_dir,
                           args.tolerance, force=args.force)
        print(result.report())
        return 0 if result.ok else 1
    import pandas as pd

    from flows.openimages.dataset import crops_root
    from model.train import TrainConfig, train

    table = pd.read_parquet(args.dataset_dir / "crops.parquet")
    result = train(table, crops_root(args.dataset_dir, table), args.out,
                   TrainConfig(**json.loads(args.config)))
    print(json.dumps({k: result.metrics[k] for k in ("accuracy", "macro_f1")}))
    return 0

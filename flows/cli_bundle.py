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
                            help="a fresh folder to install into")
        parser.add_argument("--workspace", type=Path, default=Path("workspace"))
    sub.choices["reproduce"].add_argument("--tolerance", type=float, default=0.02,
                                          help="allowed accuracy gap (0.02 = 2 points)")
    train = sub.add_parser("train-dataset", help="train on a crops dataset folder (no registry)")
    train.add_argument("--dataset-dir", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--config", default="{}", help="training settings as JSON")


def run_bundle_command(args: argparse.Namespace) -> int:
    """Run one bundle command; return the exit code."""
    state_dir = args.workspace / "registry" if hasattr(args, "workspace") else None
    if args.command == "install":
        from flows.publishing.bundle import install
        from flows.publishing.registries import opened

        with opened(args.registry, state_dir) as registry:
            top_hash = install(args.name, registry, args.top_hash, args.dest)
        print(f"installed {args.name}@{top_hash} into {args.dest}")
        return 0
    if args.command == "reproduce":
        from flows.publishing.reproduce import reproduce

        dest = args.dest or args.workspace / "reproduce" / args.name.replace("/", "_")
        result = reproduce(args.name, args.registry, args.top_hash, dest, state_dir,
                           args.tolerance)
        print(result.report())
        return 0 if result.ok else 1
    import pandas as pd

    from model.train import TrainConfig, train

    table = pd.read_parquet(args.dataset_dir / "crops.parquet")
    result = train(table, args.dataset_dir / "crops", args.out,
                   TrainConfig(**json.loads(args.config)))
    print(json.dumps({k: result.metrics[k] for k in ("accuracy", "macro_f1")}))
    return 0

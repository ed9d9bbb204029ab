"""Command line: one subcommand per stage (select, refresh, build-dataset, train, publish) and
the whole job (retrain). The stage commands call the stages directly, without Prefect; retrain
runs the Prefect flow. Class names and the registry are checked before any large download."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flows.settings import SPLITS, parse_splits

STAGE_COMMANDS = ("select", "refresh", "build-dataset", "train", "publish", "retrain")
VERSIONS = ["v4", "v5", "v6", "v7"]


def split_names(text: str) -> list[str]:
    """--splits train,validation (or train validation): each name checked at once."""
    names = parse_splits(text)
    unknown = [name for name in names if name not in SPLITS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: splits are among {', '.join(SPLITS)}, e.g. --splits train,validation")
    return names


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose the metadata and the boxes (OPENIMAGER_* apply to the rest)."""
    parser.add_argument("--classes", nargs="+", help="class names or MIDs")
    parser.add_argument("--exclude-classes", nargs="+")
    parser.add_argument("--openimages-version", choices=VERSIONS)
    parser.add_argument("--splits", type=split_names, action="extend",
                        help="Open Images splits to read, e.g. train,validation (default all)")
    parser.add_argument("--metadata-url")
    parser.add_argument("--max-images-per-class", type=int)


def add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """Register the stage commands on the main parser."""
    texts = {
        "select": "select the boxes of classes (metadata only, no images); counts per class",
        "refresh": "select, then download the images (resumable)",
        "build-dataset": "crop the selected boxes and split them by source image",
        "train": "train on the dataset, register the model, promote it if no worse",
        "publish": "publish the last trained model with its data to the registry",
        "retrain": "the whole job as the Prefect flow: refresh, crop, train, publish",
    }
    parsers = {name: sub.add_parser(name, help=text) for name, text in texts.items()}
    for parser in parsers.values():
        parser.add_argument("--workspace")
    for name in ("select", "refresh", "retrain"):
        add_selection_options(parsers[name])
    for name in ("refresh", "retrain"):
        parsers[name].add_argument("--image-endpoint-url")
    for name in ("build-dataset", "retrain"):
        parsers[name].add_argument("--max-crops-per-class", type=int)
    for name in ("train", "retrain"):
        parsers[name].add_argument("--epochs", type=int)
        parsers[name].add_argument("--architecture", choices=["seed-cnn", "transfer"])
        parsers[name].add_argument("--force-promote", action="store_true", default=None,
                                   help="serve the new model even if it scores below the "
                                        "promoted one")
    for name in ("publish", "retrain"):
        parsers[name].add_argument("--registry", help='"embedded" or s3://bucket')
        parsers[name].add_argument("--package-name")
    for name in ("train", "retrain"):
        parsers[name].add_argument("--accept-anomalies", action="store_true", default=None,
                                   help="train even if the data checks find an anomaly")
    parsers["retrain"].add_argument("--build-bento", action="store_true", default=None,
                                    help="build the Bento of a newly promoted model")


@contextmanager
def step(name: str) -> Iterator[dict]:
    """Print one line on stderr when a stage ends: its name, what it did, how long it took."""
    started, said = time.monotonic(), {"note": "done"}
    yield said
    print(f"{name}: {said['note']} in {time.monotonic() - started:.1f} s", file=sys.stderr)


def settings_of(args: argparse.Namespace) -> object:
    """The settings of a command: OPENIMAGER_* variables, overridden by the flags given."""
    from flows.run.params import settings_from

    skip = {"command", "run", "debug"}
    return settings_from(**{k: v for k, v in vars(args).items() if k not in skip})


def run_stage_command(args: argparse.Namespace) -> int:
    """Run one stage command; return its exit code."""
    if args.command == "retrain":
        return retrain_command(args)
    settings = settings_of(args)
    if args.command == "select":
        return select_command(settings)
    from flows.pipeline import stages
    from flows.watching import watch

    if args.command == "refresh":
        with step("refresh") as said:
            summary = stages.refresh(settings)
            said["note"] = f"{summary['images']} images, downloads {summary['downloads']}"
        print(json.dumps(summary, indent=2))
        return 1 if summary["downloads"].get("failed") else 0
    if args.command == "build-dataset":
        require(settings, "selection.parquet", "refresh")
        with step("crop") as said:
            built = stages.build(settings)
            said["note"] = f"{built['crops']} crops of {built['images']} images"
        print(json.dumps({k: built[k] for k in ("dataset_id", "crops", "crops_per_class_split",
                                                "skipped")}, indent=2))
        return 0
    if args.command == "train":
        from flows.run.preflight import require_weights

        require_weights(settings)
        require(settings, "dataset/crops.parquet", "build-dataset")
        from flows.train import promotion_line
        from flows.watching.datachecks import PROFILE, verdict

        if (settings.dataset_dir / PROFILE).exists():  # datasets built before checks have none
            verdict(*watch.check_dataset(settings))
        trained = stages.train(settings)
        from model.intervals import stated

        print(f"{trained['model_tag']}: test accuracy {stated(trained['metrics'], 'accuracy')}, "
              f"macro F1 {stated(trained['metrics'], 'macro_f1')}")
        print(promotion_line(trained))
        return 0
    return publish_command(settings)


def require(settings: object, relative: str, stage: str) -> None:
    """Fail in one line when an earlier stage's output is missing from the workspace."""
    if not (settings.workspace / relative).exists():
        from flows.commands.errors import UsageError
        from flows.run.shell import flows_command

        raise UsageError(f"{settings.workspace / relative} is missing: run "
                         f"`{flows_command(stage)}` with this --workspace first")


def select_command(settings: object) -> int:
    """Select and print the boxes and images per class; pandas is not loaded."""
    from flows.pipeline.selection import Tally, select_to_file

    with step("select") as said:
        tally = Tally()
        selection = select_to_file(settings, tally)
        table = tally.table()
        said["note"] = f"{sum(tally.boxes.values())} boxes on {tally.distinct_images} images"
    width = max(len("Class"), *(len(name) for name in table["Class"].to_pylist()))
    print(f"{'Class':<{width}}  ClassMID    boxes  images")
    for row in table.to_pylist():
        print(f"{row['Class']:<{width}}  {row['ClassMID']:<10} {row['boxes']:>6}  "
              f"{row['images']:>6}")
    print(f"selection: {selection}")
    return 0


def publish_command(settings: object) -> int:
    """Publish the last trained model; record its promotion if it passed the gate."""
    from flows.pipeline import release, stages
    from flows.publish import promotion_lines

    require(settings, "summaries/train.json", "train")
    require(settings, "summaries/build.json", "build-dataset")
    trained = stages.last_summary(settings, "train")
    built = stages.last_summary(settings, "build")
    with step("publish") as said:
        published = release.publish_bundle(settings, trained, built)
        said["note"] = f"{published.name}@{published.top_hash[:12]}" + (
            "" if getattr(published, "pushed", True) else " (unchanged)")
    print(f"published {published.name}@{published.top_hash} to {published.registry}")
    if trained["promoted"]:
        from dataclasses import asdict

        with step("promote"):
            promoted = release.promote_published(settings, trained, asdict(published))
        for line in promotion_lines(promoted):
            print(line)
    return 0


def retrain_command(args: argparse.Namespace) -> int:
    """Check the settings, the class names and the registry, then run the retrain flow."""
    from flows.pipeline import stages
    from flows.publishing.registries import EMBEDDED, check_registry
    from flows.run.preflight import require_weights

    settings = settings_of(args)
    with step("check"):
        require_weights(settings)
        stages.validate_classes(settings)
        if settings.registry != EMBEDDED:
            check_registry(settings.registry)
    if args.splits:  # not a flow parameter: the flow reads it from the environment
        os.environ["OPENIMAGER_SPLITS"] = ",".join(settings.splits)
    from flows.retrain import retrain
    from flows.run.runtime import prepare_run

    prepare_run()
    options = {k: v for k, v in vars(args).items()
               if k not in {"command", "run", "debug", "splits"}}
    print(json.dumps(retrain(**options), indent=2, default=str))
    return 0

"""Command line: python -m flows {demo,retrain,promote,download,classes,install,...} ..."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from flows.cli_bundle import BUNDLE_COMMANDS, add_bundle_commands, run_bundle_command
from flows.cli_download import add_download_command, run_download_command
from flows.preflight import add_check_command, run_check_command


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole job offline on the bundled sample")
    demo.add_argument("--workspace", type=Path, help="else OPENIMAGER_WORKSPACE, workspace/demo")
    demo.add_argument("--epochs", type=int, default=8)
    run = sub.add_parser("retrain", help="refresh, crop, train and publish (OPENIMAGER_* apply)")
    run.add_argument("--classes", nargs="+")
    run.add_argument("--exclude-classes", nargs="+")
    run.add_argument("--openimages-version", choices=["v4", "v5", "v6", "v7"])
    run.add_argument("--workspace")
    run.add_argument("--metadata-url")
    run.add_argument("--image-endpoint-url")
    run.add_argument("--max-images-per-class", type=int)
    run.add_argument("--epochs", type=int)
    run.add_argument("--registry")
    run.add_argument("--package-name")
    run.add_argument("--architecture", choices=["seed-cnn", "transfer"])
    run.add_argument("--force-promote", action="store_true", default=None,
                     help="serve the new model even if it scores below the promoted one")
    run.add_argument("--build-bento", action="store_true", default=None,
                     help="build the Bento of a newly promoted model (OPENIMAGER_BUILD_BENTO)")
    promote = sub.add_parser("promote", help="make a stored model the served one (an older tag "
                                             "rolls back)")
    promote.add_argument("tag", help="name:version in the BentoML store")
    classes = sub.add_parser("classes", help="search the boxable classes and their hierarchy")
    classes.add_argument("query", nargs="?", default="")
    classes.add_argument("--tree", action="store_true", help="print the subtree of each match")
    classes.add_argument("--workspace")
    classes.add_argument("--metadata-url")
    classes.add_argument("--openimages-version")
    add_bundle_commands(sub)
    add_download_command(sub)
    add_check_command(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flows").setLevel(logging.INFO)

    try:
        if args.command == "demo":
            from flows.demo import report, run_demo

            print(report(run_demo(args.workspace, epochs=args.epochs)))
        elif args.command == "retrain":
            from flows.retrain import retrain
            from flows.runtime import prepare_run

            prepare_run()
            options = {k: v for k, v in vars(args).items() if k != "command"}
            print(json.dumps(retrain(**options), indent=2, default=str))
        elif args.command == "promote":
            return promote_command(args.tag)
        elif args.command == "classes":
            print(classes_report(args))
        elif args.command in BUNDLE_COMMANDS:
            return run_bundle_command(args)
        elif args.command == "download":
            return run_download_command(args)
        elif args.command == "check":
            return run_check_command(args)
    except user_errors() as error:  # evaluated only when an error propagates
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can cause and mend, reported in one line instead of a traceback."""
    # Imported here, not at the top: `--help` and `classes` should not load pandas for them.
    from flows.openimages.ontology import UnknownClassError
    from flows.openimages.select import EmptySelection
    from flows.publishing.registries import RegistryError
    from flows.publishing.secretscan import SecretFound

    return UnknownClassError, EmptySelection, RegistryError, SecretFound


def promote_command(tag: str) -> int:
    """Write the promotion record of a stored model, as the retrain flow does after a publish;
    say what it replaced. Exit code 2 when tag is not in the BentoML store."""
    from flows.model_store import UnknownModel, promote_stored  # BentoML loads only here

    try:
        record, before = promote_stored(tag)
    except UnknownModel as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if before is None:
        replaced = "nothing was promoted before"
    elif before["tag"] == record["tag"]:
        replaced = "it already was the promoted model"
    else:
        replaced = f"replaced {before['tag']}"
    print(f"promoted {record['tag']} ({replaced})")
    print(f"published as {record['package']}@{record['top_hash'][:12]} in {record['registry']}"
          if record.get("top_hash") else "no published package revision of it is known")
    print(f"its Bento: {record['bento']}" if record.get("bento") else
          "no Bento of it is known: `bentoml build` packs it")
    return 0


def classes_report(args: argparse.Namespace) -> str:
    """The classes matching a query, with MIDs, parents, children and box counts."""
    from flows.openimages.ontology import describe, search, tree
    from flows.params import settings_from
    from flows.stages import metadata

    settings = settings_from(workspace=args.workspace, metadata_url=args.metadata_url,
                             openimages_version=args.openimages_version)
    store = metadata(settings, kinds=("classes", "hierarchy"))
    onto, counts = store.ontology(), store.label_counts()
    matches = search(onto, args.query)
    if not matches:
        onto.resolve(args.query)  # raises, naming the closest classes
    lines = [line for mid in matches
             for line in (tree(onto, mid, counts) if args.tree else [describe(onto, mid, counts)])]
    if not counts:
        lines.append("(box counts appear once a refresh has built the metadata cache)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: python -m flows COMMAND ... (every stage, the whole job, bundles, classes).

Exit codes: 0 done; 1 not reproduced (reproduce) or images failed (refresh, download);
2 bad input or settings; 3 an unreachable or failing upstream or registry. --debug shows the
traceback of an error instead of its one-line summary.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flows.commands.bundle import add_bundle_commands, run_bundle_command
from flows.commands.download import add_download_command, run_download_command
from flows.commands.drift import add_drift_command, run_drift_command
from flows.commands.errors import guarded
from flows.commands.promotion import add_promotion_commands, run_promotion_command
from flows.commands.registry import add_registry_command, run_registry_command
from flows.commands.shadow import add_shadow_command, run_shadow_command
from flows.commands.stages import VERSIONS, add_stage_commands, run_stage_command, split_names
from flows.run.preflight import add_check_command, run_check_command


def add_other_commands(sub: argparse._SubParsersAction) -> None:
    """demo and classes."""
    demo = sub.add_parser("demo", help="run the whole job offline on the bundled sample")
    demo.add_argument("--workspace", type=Path, help="else OPENIMAGER_WORKSPACE, ./workspace")
    demo.add_argument("--epochs", type=int, default=8)
    classes = sub.add_parser("classes", help="search the boxable classes and their hierarchy")
    classes.add_argument("query", nargs="?", default="")
    classes.add_argument("--tree", action="store_true", help="print the subtree of each match")
    classes.add_argument("--workspace")
    classes.add_argument("--metadata-url")
    classes.add_argument("--openimages-version", choices=VERSIONS)
    classes.add_argument("--splits", type=split_names, action="extend",
                         help="the splits whose box counts are shown")


def run_other_command(args: argparse.Namespace) -> int:
    """Run demo or classes."""
    if args.command == "demo":
        from flows.demo import report, run_demo

        print(report(run_demo(args.workspace, epochs=args.epochs)))
    else:
        print(classes_report(args))
    return 0


# Each entry adds its subcommands to the parser and runs them. Command modules import only
# argparse at the top, so `--help` loads no heavy library.
COMMANDS = (
    (add_stage_commands, run_stage_command),
    (add_download_command, run_download_command),
    (add_bundle_commands, run_bundle_command),
    (add_other_commands, run_other_command),
    (add_check_command, run_check_command),
    (add_registry_command, run_registry_command),
    (add_drift_command, run_drift_command),
    (add_shadow_command, run_shadow_command),
    (add_promotion_commands, run_promotion_command),
)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in two lines like every other error (not the full usage)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}\n  see `{self.prog} --help`\n")


def parser() -> argparse.ArgumentParser:
    """The parser of every command; each subcommand knows its runner (args.run)."""
    main_parser = Parser(prog="python -m flows", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    main_parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = main_parser.add_subparsers(dest="command", required=True)
    for add, run in COMMANDS:
        before = set(sub.choices)
        add(sub)
        for name in set(sub.choices) - before:
            sub.choices[name].set_defaults(run=run)
            # SUPPRESS: `python -m flows --debug CMD` is not reset by the subcommand's default
            sub.choices[name].add_argument("--debug", action="store_true",
                                           default=argparse.SUPPRESS, help="show tracebacks")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return its exit code."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flows").setLevel(logging.INFO)
    return guarded(lambda: args.run(args), debug=args.debug)


def classes_report(args: argparse.Namespace) -> str:
    """The classes matching a query, with MIDs, parents, children and box counts."""
    from flows.openimages.ontology import describe, search, tree
    from flows.pipeline.selection import metadata
    from flows.run.params import settings_from

    settings = settings_from(workspace=args.workspace, metadata_url=args.metadata_url,
                             openimages_version=args.openimages_version, splits=args.splits)
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

"""Command line: `python -m flows download`, the image download on its own (no Prefect).

Selects the boxes of the classes (as `retrain` would) and brings their images into the shared
store of the workspace; run it again to resume: verified images are skipped unread, failed
ones retried. `--verify` re-reads and re-checks every image already in the store.
"""

from __future__ import annotations

import argparse
import json

from flows.commands.stages import add_selection_options

SOURCES = ["cvdf", "flickr", "thumbnail"]


def add_download_command(sub: argparse._SubParsersAction) -> None:
    """Register the download command on the main parser."""
    parser = sub.add_parser("download", help="select classes and download their images "
                                             "(resumable; OPENIMAGER_* apply)")
    add_selection_options(parser)
    parser.add_argument("--workspace")
    parser.add_argument("--image-source", choices=SOURCES)
    parser.add_argument("--fallback-sources", nargs="+", choices=SOURCES,
                        dest="image_fallback_sources", help="tried in order after --image-source")
    parser.add_argument("--image-endpoint-url")
    parser.add_argument("--workers", type=int, dest="download_workers",
                        help="requests in flight")
    parser.add_argument("--verify", action="store_const", const=True, dest="download_verify",
                        help="re-read and re-check every image already in the store")


def run_download_command(args: argparse.Namespace) -> int:
    """Select and download; print the summary; exit 1 if an image failed (0 if all settled)."""
    from flows.pipeline import stages
    from flows.run.params import settings_from

    settings = settings_from(**{k: v for k, v in vars(args).items()
                                if k not in {"command", "run", "debug"}})
    summary = stages.refresh(settings)
    print(json.dumps({k: summary[k] for k in ("images", "downloads")}, indent=2))
    print(f"store: {settings.image_dir}; manifest of this selection: "
          f"{settings.workspace / 'downloads.parquet'}")
    return 1 if summary["downloads"].get("failed") else 0

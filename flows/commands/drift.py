"""python -m flows drift: the served traffic since the last promotion against the test split."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_drift_command(sub: argparse._SubParsersAction) -> None:
    """Register the drift command."""
    drift = sub.add_parser("drift", help="compare the traffic since the last promotion (the "
                                         "prediction log) with the test split")
    drift.add_argument("--workspace", help="else OPENIMAGER_WORKSPACE, ./workspace")
    drift.add_argument("--log-dir", dest="prediction_log_dir",
                       help="a folder or s3://bucket/prefix (every replica's parts); else "
                            "OPENIMAGER_PREDICTION_LOG_DIR, <workspace>/predictions")
    drift.add_argument("--model-path", help="a published model installed by python -m "
                                            "flows.publishing.servable (what the service "
                                            "serves with OPENIMAGER_MODEL_PATH): its "
                                            "requests, against its recorded reference")


def run_drift_command(args: argparse.Namespace) -> int:
    """Print the drift summary, one line per test; exit 0 whether or not it drifted."""
    from flows.commands.errors import UsageError
    from flows.openimages.dataset import CROPS_TABLE
    from flows.run.params import settings_from
    from flows.watching.watch import SERVED_METADATA, drift_summary

    settings = settings_from(workspace=args.workspace,
                             prediction_log_dir=args.prediction_log_dir)
    if not (settings.dataset_dir / CROPS_TABLE).exists():
        raise UsageError(f"no dataset in {settings.workspace}: its test split is the "
                         "reference; run build-dataset (or retrain) there first")
    from flows.watching.drift import lines

    model_path = Path(args.model_path) if args.model_path else None
    if model_path is not None and not (model_path / SERVED_METADATA).is_file():
        from flows.run.shell import program

        raise UsageError(f"--model-path: {model_path} has no {SERVED_METADATA}; install a "
                         f"package there with {program('python')} -m "
                         "flows.publishing.servable")
    for line in lines(drift_summary(settings, model_path=model_path)):
        print(line)
    return 0

"""python -m flows shadow --candidate TAG: replay the uploads the service kept since the last
promotion on a candidate model and on the promoted one, as the gate does before a promotion."""

from __future__ import annotations

import argparse

from flows.commands.promotion import add_registry_flags

REFUSED = 1  # the candidate fails the shadow rule: read the report


def add_shadow_command(sub: argparse._SubParsersAction) -> None:
    """Register the shadow command."""
    shadow = sub.add_parser("shadow", help="replay the uploads kept since the last promotion "
                                           "on a candidate and on the promoted model")
    shadow.add_argument("--candidate", required=True,
                        help="a model tag in this host's BentoML store, or a tag or (short) "
                             "top hash of a revision published to the registry")
    shadow.add_argument("--since", help="replay uploads kept from this ISO time on (default: "
                                        "the promoted model's promotion)")
    shadow.add_argument("--min-agreement", type=float, dest="shadow_min_agreement",
                        help="else OPENIMAGER_SHADOW_MIN_AGREEMENT, 0.8")
    shadow.add_argument("--min-feedback-accuracy", type=float,
                        dest="shadow_min_feedback_accuracy",
                        help="else OPENIMAGER_SHADOW_MIN_FEEDBACK_ACCURACY, 0 (off)")
    shadow.add_argument("--json", action="store_true", help="print the whole report as JSON")
    shadow.add_argument("--log-dir", dest="prediction_log_dir",
                        help="a folder or s3://bucket/prefix; else "
                             "OPENIMAGER_PREDICTION_LOG_DIR, <workspace>/predictions")
    add_registry_flags(shadow)


def run_shadow_command(args: argparse.Namespace) -> int:
    """Print the replay's report; exit 0 when the candidate passes, 1 when it is refused."""
    import json

    from flows.promotion.models import candidate_side, promoted_side
    from flows.run.params import settings_from
    from flows.watching.shadow import lines, shadow_replay

    settings = settings_from(workspace=args.workspace, registry=args.registry,
                             package_name=args.package_name,
                             prediction_log_dir=args.prediction_log_dir,
                             shadow_min_agreement=args.shadow_min_agreement,
                             shadow_min_feedback_accuracy=args.shadow_min_feedback_accuracy)
    incumbent, promoted_at = promoted_side(settings)
    candidate = candidate_side(settings, args.candidate)
    report = shadow_replay(settings, candidate, incumbent, args.since or promoted_at)
    print(json.dumps(report, indent=1, default=str) if args.json else "\n".join(lines(report)))
    return 0 if report["passes"] else REFUSED

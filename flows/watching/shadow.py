"""Shadow replay: before a promotion, the candidate and the promoted model classify the uploads
the service kept since that model was promoted, decoded exactly as the service decodes them
(service/images.py). The figures and the verdict are model/shadow.py's; the uploads the two
models answer differently go to the review queue (GET /review) through the log's store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows.settings import Settings
from model.predictions import (
    LOG_SCHEMA,
    SHADOW_FILE,
    image_name,
    is_s3,
    read_feedback,
    read_parts,
    subfolder,
)
from model.shadow import Replayed, ShadowRule, compare, disagreements, judge, percent_span

log = logging.getLogger(__name__)
CHUNK = 256  # uploads decoded and answered at once: bounds memory at any log size
BATCH = 64


@dataclass(frozen=True)
class Side:
    """One model of the replay: its tag, Keras model, classes and input size."""

    tag: str
    model: Any
    class_names: tuple[str, ...]
    image_size: int


def rule_of(settings: Settings) -> ShadowRule:
    """The settings' shadow rule."""
    return ShadowRule(settings.shadow_min_agreement, settings.shadow_min_feedback_accuracy,
                      settings.shadow_confident, settings.shadow_min_images,
                      settings.promotion_confidence)


def kept_uploads(folder: str | Path, since: str | None, limit: int) -> pd.DataFrame:
    """The uploads kept since `since` (ISO time; None: all), one row per image (sha256, name,
    label: the newest feedback label of any of its requests, or None), newest `limit`."""
    columns = ["request_id", "time", "sha256", "format", "kept"]
    rows = read_parts(subfolder(folder, "log"), LOG_SCHEMA, columns).to_pandas()
    rows = rows[rows.kept]
    if since:
        rows = rows[rows.time >= pd.Timestamp(since)]
    feedback = read_feedback(folder).sort_values("time")
    labels = feedback.drop_duplicates("request_id", keep="last").set_index("request_id").label
    rows = rows.assign(label=rows.request_id.map(labels)).sort_values("time")
    labelled = rows.dropna(subset=["label"]).drop_duplicates("sha256", keep="last")
    newest = rows.drop_duplicates("sha256", keep="last").tail(limit)
    newest = newest.drop(columns="label").merge(labelled[["sha256", "label"]], on="sha256",
                                                how="left")
    names = [image_name(sha, fmt) for sha, fmt in zip(newest.sha256, newest.format,
                                                      strict=True)]
    labels = [value if isinstance(value, str) else None for value in newest.label]
    return pd.DataFrame({"sha256": newest.sha256.to_numpy(), "name": names,
                         "label": pd.Series(labels, dtype=object)})


def image_folder(folder: str | Path, names: list[str], cache: Path) -> Path:
    """Where the kept images are on this machine: the log folder's images/, or those of an
    S3 prefix copied down into cache."""
    if not is_s3(folder):
        return Path(folder) / "images"
    from model.predictions import fetch_images

    fetch_images(str(folder), names, cache)
    wanted = set(names)
    for old in cache.iterdir():  # uploads of earlier replays: the service's bounds apply here
        if old.name not in wanted:
            old.unlink(missing_ok=True)
    return cache


def decoded(paths: list[Path], size: int, pool: ThreadPoolExecutor
            ) -> tuple[np.ndarray, np.ndarray]:
    """The uploads as the service feeds them to a model of this input size, and which of them
    could be read (one evicted since the listing, or not an image, is left out)."""
    from service.images import BadImage, prepare

    def one(path: Path) -> np.ndarray | None:
        try:
            return prepare(path.read_bytes(), size)
        except (OSError, BadImage):
            return None

    found = list(pool.map(one, paths))
    ok = np.array([f is not None for f in found], dtype=bool)
    pixels = [f for f in found if f is not None]
    return (np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)), ok


def answers(side: Side, pixels: np.ndarray) -> np.ndarray:
    """A model's probabilities on pixels, in batches, as the service computes them."""
    from model.predict import probabilities

    out = [probabilities(side.model.predict_on_batch(pixels[i:i + BATCH]),
                         len(side.class_names)) for i in range(0, len(pixels), BATCH)]
    return np.concatenate(out) if out else np.zeros((0, len(side.class_names)))


def replay(uploads: pd.DataFrame, images: Path, candidate: Side, incumbent: Side,
           threads: int = 2) -> Replayed:
    """Both models on every readable upload, the candidate's columns in the incumbent's
    class order."""
    from model.shadow import aligned

    kept: list[int] = []
    theirs, ours = [], []
    with ThreadPoolExecutor(threads) as pool:  # Pillow decodes without the GIL
        for start in range(0, len(uploads), CHUNK):
            paths = [images / name for name in uploads.name.iloc[start:start + CHUNK]]
            by_size = {size: decoded(paths, size, pool)
                       for size in {incumbent.image_size, candidate.image_size}}
            ok = np.logical_and.reduce([good for _, good in by_size.values()])
            # the uploads both decodes read, at each size
            both = {size: found[ok[good]] for size, (found, good) in by_size.items()}
            theirs.append(answers(incumbent, both[incumbent.image_size]))
            ours.append(aligned(answers(candidate, both[candidate.image_size]),
                                candidate.class_names, incumbent.class_names))
            kept += [start + int(i) for i in np.flatnonzero(ok)]
            if len(uploads) > CHUNK:
                log.info("shadow replay: %d of %d uploads", min(start + CHUNK, len(uploads)),
                         len(uploads))
    rows = uploads.iloc[kept]
    none = np.zeros((0, len(incumbent.class_names)))
    return Replayed(tuple(rows.sha256), incumbent.class_names,
                    np.concatenate(theirs) if theirs else none,
                    np.concatenate(ours) if ours else none, tuple(rows.label))


def shadow_replay(settings: Settings, candidate: Side, incumbent: Side, since: str | None,
                  rule: ShadowRule | None = None) -> dict:
    """Replay the kept uploads since `since` on both models; return the report (figures,
    verdict, reason, timing) and leave the disagreements for the review queue."""
    from flows.watching.watch import log_location

    rule = rule or rule_of(settings)
    folder = log_location(settings)
    started = time.monotonic()
    uploads = kept_uploads(folder, since, settings.shadow_max_images)
    images = image_folder(folder, list(uploads.name), settings.workspace / "cache" / "kept")
    replayed = replay(uploads, images, candidate, incumbent, len(os.sched_getaffinity(0)))
    found = compare(replayed, rule)
    passes, reason = judge(found, rule, candidate.tag, incumbent.tag)
    seconds = time.monotonic() - started
    report = {"candidate": candidate.tag, "incumbent": incumbent.tag, "since": since,
              "log": str(folder), **found, "passes": passes, "reason": reason,
              "seconds": round(seconds, 2),
              "images_per_second": round(len(replayed.images) / seconds, 1) if seconds else None,
              "rule": {"min_agreement": rule.min_agreement,
                       "min_feedback_accuracy": rule.min_feedback_accuracy,
                       "min_images": rule.min_images}}
    log.info("%s", reason)
    if replayed.images:
        try:
            write_disagreements(folder, report, disagreements(replayed), uploads)
        except Exception as error:  # noqa: BLE001 - the review queue only misses them
            log.warning("shadow replay: the disagreements were not written to %s: %s",
                        folder, error)
    return report


def write_disagreements(folder: str | Path, report: dict, rows: list[dict],
                        uploads: pd.DataFrame) -> None:
    """The replay's disagreements as the review queue reads them (model/predictions.py),
    written whole into the log's folder or S3 prefix."""
    names = dict(zip(uploads.sha256, uploads.name, strict=True))
    body = {"candidate": report["candidate"], "incumbent": report["incumbent"],
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "since": report["since"],
            "report": {k: v for k, v in report.items() if k != "flips"},
            "disagreements": [{**row, "name": names[row["sha256"]]} for row in rows]}
    data = json.dumps(body, indent=1, default=str).encode()
    if is_s3(folder):
        import boto3

        bucket, _, prefix = str(folder).removeprefix("s3://").partition("/")
        key = f"{prefix.strip('/')}/{SHADOW_FILE}" if prefix.strip("/") else SHADOW_FILE
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data,
                                      ContentType="application/json")
    else:
        from model.atomic import atomic_path

        with atomic_path(Path(folder) / SHADOW_FILE) as temp:
            temp.write_bytes(data)


def lines(report: dict) -> list[str]:
    """The report in words, one figure a line."""
    pct = f"{report['confidence']:.0%}"
    out = [f"shadow replay of {report['candidate']} against the promoted {report['incumbent']} "
           f"on {report['images']} kept uploads since {report['since'] or 'the log began'} "
           f"({report['log']})"]
    if report["images"]:
        out.append(f"agreement {report['agreement']:.1%} ({pct} interval "
                   f"{percent_span(report['agreement_interval'])}); on the "
                   f"{report['confident_images']} confident answers (p >= "
                   f"{report['confident_threshold']:g}) "
                   + (f"{report['confident_agreement']:.1%} ({pct} interval "
                      f"{percent_span(report['confident_agreement_interval'])})"
                      if report["confident_images"] else "none"))
        shift = report["mean_confidence"]
        out.append(f"mean top probability {shift['incumbent']:.3f} -> {shift['candidate']:.3f}"
                   f" (shift {shift['shift']:+.3f}, {pct} interval "
                   f"{_signed(shift['shift_interval'])})")
        flipped = {f"{a} -> {b}": n for a, row in report["flips"].items()
                   for b, n in row.items() if a != b}
        out.append("flips (promoted -> candidate): " + (", ".join(
            f"{k} {n}" for k, n in sorted(flipped.items(), key=lambda kv: -kv[1])) or "none"))
        feedback = report["feedback"]
        out.append("labelled uploads: none" if not feedback else
                   f"on {feedback['images']} labelled uploads: accuracy "
                   f"{feedback['candidate_accuracy']:.1%} ({pct} interval "
                   f"{percent_span(feedback['candidate_accuracy_interval'])}) against "
                   f"{feedback['incumbent_accuracy']:.1%} for the promoted model (difference "
                   f"{feedback['difference']:+.3f}, {pct} interval "
                   f"{_signed(feedback['difference_interval'])})")
        out.append(f"replayed at {report['images_per_second']} uploads/s (both models, "
                   f"decoding included) in {report['seconds']} s")
    out.append(("PASSES: " if report["passes"] else "REFUSED: ") + report["reason"])
    return out


def report_lines(report: dict | None) -> list[str]:
    """A run's shadow replay in words: nothing when none ran or no upload was kept."""
    if report is None:
        return []
    if report.get("error"):
        return [f"shadow replay not run: {report['error']}"]
    return lines(report) if report["images"] else [
        "shadow replay: no uploads kept since the promotion (OPENIMAGER_PREDICTION_SAMPLE_RATE "
        "keeps a share of them)"]


def _signed(bounds: list[float] | None) -> str:
    return f"[{bounds[0]:+.3f}, {bounds[1]:+.3f}]" if bounds else "[undefined]"

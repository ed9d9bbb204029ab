"""Serving limits and tuning, read from OPENIMAGER_* environment variables when a process starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

MIB = 1024 * 1024


def cpu_count() -> int:
    """Cores this process may run on (the container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) or 1


def env_number(name: str, default: float, minimum: float = 1) -> float:
    """A positive number from the environment, or default; a bad value stops startup."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """A whole number from the environment, or default."""
    return int(env_number(name, default, minimum))


@dataclass(frozen=True)
class Limits:
    """What one request may send; anything over is refused with a 4xx before decoding."""

    max_upload_bytes: int = 10 * MIB  # one /classify request
    max_batch_upload_bytes: int = 50 * MIB  # one /classify_batch request, all files together
    max_pixels: int = 40_000_000  # width x height of one image: decompression bombs stop here
    # Formats whose decoders cannot scale down (all but baseline JPEG) fill a buffer of the
    # full size before any reduction: a lower limit keeps one decode within 0.5 s of CPU and
    # 200 MB (see benchmarks/upload.py).
    max_full_decode_pixels: int = 16_000_000
    max_batch_images: int = 32
    max_top: int = 100

    @classmethod
    def from_env(cls) -> Limits:
        """Limits with OPENIMAGER_MAX_* overrides (sizes in MiB)."""
        return cls(
            max_upload_bytes=int(env_number("OPENIMAGER_MAX_UPLOAD_MB", 10, 0.001) * MIB),
            max_batch_upload_bytes=int(
                env_number("OPENIMAGER_MAX_BATCH_UPLOAD_MB", 50, 0.001) * MIB),
            max_pixels=env_int("OPENIMAGER_MAX_PIXELS", 40_000_000),
            max_full_decode_pixels=env_int("OPENIMAGER_MAX_FULL_DECODE_PIXELS",
                                           cls.max_full_decode_pixels),
            max_batch_images=env_int("OPENIMAGER_MAX_BATCH_IMAGES", 32),
        )


@dataclass(frozen=True)
class Tuning:
    """Processes, threads and batching; defaults suit a small CPU machine."""

    workers: int  # processes: each parses, checks and decodes uploads and holds the model
    intra_op_threads: int  # TensorFlow threads per worker for one op
    inter_op_threads: int  # TensorFlow ops run side by side per worker
    decode_threads: int  # images decoded at once per worker
    large_decode_threads: int  # of which large images (service.images.LARGE_PIXELS) at most
    max_batch_size: int
    max_latency_ms: int  # a request waiting for the model longer than this is shed (503)

    @classmethod
    def from_env(cls) -> Tuning:
        """Tuning with OPENIMAGER_* overrides; model threads share the cores between workers."""
        cores = cpu_count()
        workers = env_int("OPENIMAGER_WORKERS", 1)
        # Each busy worker's event loop and decodes keep about a core; the model threads split
        # the rest. On 2 cores, 1 TensorFlow thread beat 2 (which spin and contend).
        return cls(
            workers=workers,
            intra_op_threads=env_int("OPENIMAGER_TF_INTRA_THREADS",
                                     max(1, (cores - workers) // workers)),
            inter_op_threads=env_int("OPENIMAGER_TF_INTER_THREADS", 1),
            decode_threads=env_int("OPENIMAGER_DECODE_THREADS", cores),
            # Large decodes have a lane of their own, narrower than the small one: a burst of
            # them leaves cores and memory to everything else.
            large_decode_threads=env_int("OPENIMAGER_LARGE_DECODE_THREADS",
                                         max(1, cores // 2)),
            max_batch_size=env_int("OPENIMAGER_MAX_BATCH_SIZE", 32, minimum=2),
            max_latency_ms=env_int("OPENIMAGER_MAX_LATENCY_MS", 5000),
        )


@dataclass(frozen=True)
class Lifecycle:
    """How the service follows promotions and how long it drains on SIGTERM."""

    reload_seconds: float = 30.0  # check for a newer promotion this often; 0 turns it off
    grace_seconds: float = 20.0  # finish requests in flight this long after SIGTERM
    # After SIGTERM, /readyz fails at once but requests are answered as usual this long: the
    # time load balancers take to stop sending here. 0 (no balancer in front): 503 at once.
    drain_delay_seconds: float = 0.0

    @classmethod
    def from_env(cls) -> Lifecycle:
        """Lifecycle with OPENIMAGER_RELOAD_SECONDS, OPENIMAGER_GRACE_SECONDS and
        OPENIMAGER_DRAIN_DELAY_SECONDS overrides; the delay must leave time to finish."""
        grace = env_number("OPENIMAGER_GRACE_SECONDS", 20.0, 0)
        delay = env_number("OPENIMAGER_DRAIN_DELAY_SECONDS", 0.0, 0)
        if delay and delay >= grace:
            raise ValueError(f"OPENIMAGER_DRAIN_DELAY_SECONDS={delay:g} must be under "
                             f"OPENIMAGER_GRACE_SECONDS={grace:g}")
        return cls(reload_seconds=env_number("OPENIMAGER_RELOAD_SECONDS", 30.0, 0),
                   grace_seconds=grace, drain_delay_seconds=delay)


def env_switch(name: str, default: bool) -> bool:
    """An on/off setting: true/false, 1/0, yes/no or on/off."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not true or false")


@dataclass(frozen=True)
class PredictionLogging:
    """Where and how the workers log predictions (model.predictions has the layout)."""

    enabled: bool = True
    directory: str = "workspace/predictions"  # a folder, or s3://bucket/prefix
    part_rows: int = 1000  # a part is written every this many rows...
    part_seconds: float = 10.0  # ...or this long after its first row, whichever comes first
    max_mb: float = 1024.0  # log parts and kept images together; the oldest go first
    sample_rate: float = 0.0  # the share of uploads kept for labelling
    # Kept uploads have bounds of their own (they are users' photos): the oldest go first.
    kept_max_images: int = 10_000
    kept_max_mb: float = 512.0
    kept_max_days: float = 30.0

    @classmethod
    def from_env(cls) -> PredictionLogging:
        """Settings from OPENIMAGER_PREDICTION_* (and OPENIMAGER_WORKSPACE for the folder)."""
        workspace = os.environ.get("OPENIMAGER_WORKSPACE", "").strip() or "workspace"
        directory = (os.environ.get("OPENIMAGER_PREDICTION_LOG_DIR", "").strip()
                     or os.path.join(workspace, "predictions"))
        rate = env_number("OPENIMAGER_PREDICTION_SAMPLE_RATE", 0.0, 0)
        if rate > 1:
            raise ValueError(f"OPENIMAGER_PREDICTION_SAMPLE_RATE={rate:g} must be between 0 "
                             "and 1")
        return cls(enabled=env_switch("OPENIMAGER_PREDICTION_LOG", True), directory=directory,
                   part_rows=env_int("OPENIMAGER_PREDICTION_LOG_ROWS", 1000),
                   part_seconds=env_number("OPENIMAGER_PREDICTION_LOG_SECONDS", 10.0, 0.01),
                   max_mb=env_number("OPENIMAGER_PREDICTION_LOG_MAX_MB", 1024.0, 0.001),
                   sample_rate=rate,
                   kept_max_images=env_int("OPENIMAGER_KEPT_MAX_IMAGES", 10_000, 0),
                   kept_max_mb=env_number("OPENIMAGER_KEPT_MAX_MB", 512.0, 0),
                   kept_max_days=env_number("OPENIMAGER_KEPT_MAX_DAYS", 30.0, 0))


def min_confidence() -> float:
    """OPENIMAGER_MIN_CONFIDENCE (0 to 1, default 0.6): an answer whose calibrated top
    probability is under it says "unsure": true beside its labels."""
    value = env_number("OPENIMAGER_MIN_CONFIDENCE", 0.6, 0.0)
    if value > 1:
        raise ValueError(f"OPENIMAGER_MIN_CONFIDENCE={value} must be at most 1")
    return value

"""A promotion and a restart under load: what the API's clients see.

Closed-loop load (16 connections, 60 s) against a real `bentoml serve` of a promoted model. At
a third of the run a second model (other classes) is promoted with `python -m flows promote`;
the running server swaps it in within its reload interval. At two thirds the server gets
SIGTERM, as `docker stop` sends it, drains, exits, and a new one starts on the same port.

The baseline is the same run's own steady state: p99 latency before the promotion against
p99 while the new model loads and swaps in. The models are untrained seed CNNs of the
sample's input size (prediction cost is what matters here, not accuracy).

    .venv/bin/python benchmarks/swap.py            # the full run
    .venv/bin/python benchmarks/swap.py --quick    # a short run for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of values, or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def promote(tag: str, env: dict[str, str]) -> None:
    """Promote tag the way an operator would, in a fresh process."""
    subprocess.run([sys.executable, "-m", "flows", "promote", tag], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)


def run(seconds: float, clients: int, reload: float, grace: float, workdir: Path) -> dict:
    """One run; returns the summary."""
    from flows.servers.local import TELEMETRY_OFF, BentoServer
    from tests.servicekit import Load, encoded, picture, register_tiny_model

    env = {**os.environ, **TELEMETRY_OFF}
    old_tag = register_tiny_model(workdir / "a", ["Car", "Hamburger", "Sandwich"], 64)
    new_tag = register_tiny_model(workdir / "b", ["Car", "Hamburger", "Sandwich", "Taxi"], 64)
    promote(old_tag, env)
    settings = {"OPENIMAGER_RELOAD_SECONDS": str(reload), "OPENIMAGER_GRACE_SECONDS": str(grace)}
    image = encoded(picture(1, (96, 80)))
    first = BentoServer(None, log_path=workdir / "first.log", env=settings).__enter__()
    servers = [first]
    try:
        start = time.monotonic()
        with Load(first.url, clients, image) as load:
            time.sleep(seconds / 3)
            promoted_at = time.monotonic()
            promote(new_tag, env)
            time.sleep(max(0.0, start + 2 * seconds / 3 - time.monotonic()))
            term_at = time.monotonic()
            first.process.send_signal(signal.SIGTERM)  # the server only, as a container stop
            first.process.wait()
            exited_at = time.monotonic()
            second = BentoServer(None, port=first.port, log_path=workdir / "second.log",
                                 env=settings).__enter__()
            servers.append(second)
            ready_at = time.monotonic()
            time.sleep(max(0.0, start + seconds - time.monotonic()))
        answers = load.answers
    finally:
        for server in servers:
            server.__exit__()
    new_answers = [a.end for a in answers if a.model == new_tag and a.start >= promoted_at]
    first_new = min(new_answers) - promoted_at if new_answers else None
    swap_end = promoted_at + (first_new or 0) + 1

    def ok_latency(lo: float, hi: float) -> list[float]:
        return [a.end - a.start for a in answers if a.status == 200 and lo <= a.start < hi]

    before = ok_latency(start, promoted_at)
    during = ok_latency(promoted_at, swap_end)
    # A 503 with one of these codes refused the request before any work (Retry-After).
    refusals = ("draining", "loading", "model_unavailable")
    server_errors = [a for a in answers if a.status and a.status >= 500
                     and not (a.status == 503 and a.code in refusals)]
    # From the signal until the new server is ready, a connection may be refused or reset
    # (the old one closing its port); a request under way at the signal must still succeed.
    restart = [a for a in answers if a.status is None and term_at <= a.start <= ready_at]
    other_errors = [a for a in answers if a.status is None and a not in restart]
    return {
        "requests": len(answers),
        "ok": sum(a.status == 200 for a in answers),
        "server_errors_5xx": len(server_errors),
        "refused_503_draining": sum(a.code == "draining" for a in answers),
        "refused_while_down": sum(a.error == "refused" for a in restart),
        "reset_while_down": sum(a.error != "refused" for a in restart),
        "other_connection_errors": len(other_errors),
        "models_seen": sorted({a.model for a in answers if a.model}),
        "promotion_to_new_model_s": round(first_new, 2) if first_new is not None else None,
        "reload_seconds": reload,
        "p99_before_ms": round(1000 * percentile(before, 99), 1) if before else None,
        "p99_during_swap_ms": round(1000 * percentile(during, 99), 1) if during else None,
        "old_server_exit_s": round(exited_at - term_at, 2),
        "grace_seconds": grace,
        "restart_to_ready_s": round(ready_at - exited_at, 2),
        "new_tag": new_tag,
        "refused_503_loading": sum(a.code in ("loading", "model_unavailable") for a in answers),
        "error_samples": [vars(a) for a in other_errors[:3] + server_errors[:3]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run for the tests")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--reload", type=float, default=5)
    parser.add_argument("--grace", type=float, default=20)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.clients, args.reload = 24, 4, 1
    with tempfile.TemporaryDirectory(prefix="openimager-swap-") as tmp:
        # A store of its own, so the benchmark never promotes anything in the user's.
        os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")
        summary = run(args.seconds, args.clients, args.reload, args.grace, Path(tmp))
    print(json.dumps(summary))
    print(f"swap: {summary['requests']} requests, {summary['server_errors_5xx']} 5xx, "
          f"{summary['other_connection_errors']} other connection errors; new model answered "
          f"{summary['promotion_to_new_model_s']} s after promotion (reload every "
          f"{summary['reload_seconds']} s); p99 {summary['p99_before_ms']} ms before vs "
          f"{summary['p99_during_swap_ms']} ms during the swap; old server exited in "
          f"{summary['old_server_exit_s']} s (grace {summary['grace_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

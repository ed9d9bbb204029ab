"""Two API replicas following the registry under load: how long a promotion or a rollback
takes to reach both, and what their clients see meanwhile.

A moto S3 server on 127.0.0.1 holds a registry with a package of two revisions (untrained seed
CNNs, three and four classes). Two `bentoml serve` replicas, each with its own home, BentoML
store, temporary folder and workspace, share only the S3 endpoint and follow the package's
promotion state (OPENIMAGER_REGISTRY, OPENIMAGER_PACKAGE). Each gets closed-loop load (8
clients, loopback). Every 20 s for 3 minutes the state is written, alternately a promotion of
the other revision and a rollback to the first (model/registry_state.py, as `python -m flows
promote` and `rollback` write it).

Reported: the time from each write to both replicas answering with the new revision (p50 and
max over the writes), the count of 5xx answers (goal 0), and the answers from a superseded
revision that started later than the reload interval + 5 s after the write that replaced it
(goal 0). The baseline is the same run's steady state: p99 latency before the first write
against p99 while the replicas swap.

    .venv/bin/python benchmarks/registry_follow.py            # the full run (about 4 min)
    .venv/bin/python benchmarks/registry_follow.py --quick    # a short run for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.swap import percentile  # noqa: E402 - after the project's folder is on the path

PACKAGE = "bench/follow"
BUCKET = "bench-registry"
LATE_SECONDS = 5.0  # past the reload interval, an answer from a superseded revision is late


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def run(seconds: float, every: float, clients: int, reload: float, workdir: Path) -> dict:
    """One run; returns the summary."""
    from flows.publishing.s3clients import boto3_session
    from flows.servers.local import LocalS3
    from model import registry_state
    from tests.servicekit import Load, encoded, picture, publish_tiny_model, replica_env, replicas

    with LocalS3(log_path=workdir / "s3.log") as s3:
        s3.create_bucket(BUCKET)
        os.environ["AWS_ENDPOINT_URL"] = s3.endpoint_url  # for quilt3's pushes here
        registry = f"s3://{BUCKET}"
        tags = ["bench-follow:one", "bench-follow:two"]
        hashes = [publish_tiny_model(workdir / "one", PACKAGE, registry, tags[0],
                                     ["Car", "Hamburger", "Sandwich"], 64),
                  publish_tiny_model(workdir / "two", PACKAGE, registry, tags[1],
                                     ["Car", "Hamburger", "Sandwich", "Taxi"], 64)]
        client = boto3_session().client("s3", endpoint_url=s3.endpoint_url)

        def write(i: int, action: str) -> float:
            entry = {"tag": tags[i], "top_hash": hashes[i], "by": "benchmarks/registry_follow"}
            registry_state.update(client, registry, PACKAGE,
                                  registry_state.promote(entry, action=action))
            return time.monotonic()

        write(0, "promoted")
        envs = [replica_env(workdir / f"replica{n}", registry, PACKAGE, s3.endpoint_url,
                            reload) for n in range(2)]
        image = encoded(picture(1, (96, 80)))
        writes: list[tuple[float, int]] = []  # (when, revision index now promoted)
        with replicas(envs, workdir) as servers:
            loads = [Load(server.url, clients, image) for server in servers]
            for load in loads:
                load.__enter__()
            try:
                time.sleep(min(every, 10))  # the steady state: the baseline
                start = time.monotonic()
                target = 1
                while time.monotonic() - start < seconds:
                    action = "promoted" if target == 1 else "rolled back to"
                    writes.append((write(target, action), target))
                    target = 1 - target
                    time.sleep(max(0.0, start + len(writes) * every - time.monotonic()))
                ended = time.monotonic()
            finally:
                for load in loads:
                    load.__exit__()
    return summarize([load.answers for load in loads], writes, ended, hashes, reload, tags)


def summarize(answers: list[list], writes: list[tuple[float, int]], ended: float,
              hashes: list[str], reload: float, tags: list[str]) -> dict:
    """The summary of a run from every replica's answers and the writes."""
    reached: list[float | None] = []
    late = 0
    for n, (at, target) in enumerate(writes):
        until = writes[n + 1][0] if n + 1 < len(writes) else ended
        per_replica = []
        for replica in answers:
            new = [a.end for a in replica if a.top_hash == hashes[target] and a.start >= at
                   and a.start < until]
            per_replica.append(min(new) - at if new else None)
            late += sum(1 for a in replica if a.status == 200 and a.top_hash != hashes[target]
                        and at + reload + LATE_SECONDS <= a.start < until)
        reached.append(None if None in per_replica else max(per_replica))
    everything = [a for replica in answers for a in replica]
    first = writes[0][0] if writes else ended

    def p99_ms(chosen: list) -> float | None:
        value = percentile([a.end - a.start for a in chosen if a.status == 200], 99)
        return rounded(None if value is None else 1000 * value, 1)

    swapping = [a for a in everything for (at, _), took in zip(writes, reached, strict=True)
                if at <= a.start <= at + (took if took is not None else reload + LATE_SECONDS)]
    times = [t for t in reached if t is not None]
    return {
        "requests": len(everything),
        "ok": sum(a.status == 200 for a in everything),
        "server_errors_5xx": sum(1 for a in everything if a.status and a.status >= 500),
        "connection_errors": sum(1 for a in everything if a.status is None),
        "writes": len(writes),
        "writes_not_reached": sum(t is None for t in reached),
        "write_to_both_p50_s": rounded(percentile(times, 50)),
        "write_to_both_max_s": rounded(max(times) if times else None),
        "write_to_both_s": [rounded(t) for t in reached],  # promotions and rollbacks in turn
        "late_superseded_answers": late,
        "reload_seconds": reload,
        "p99_steady_ms": p99_ms([a for a in everything if a.start < first]),
        "p99_during_swaps_ms": p99_ms(swapping),
        "models_seen": sorted({a.model for a in everything if a.model}),
        "tags": tags,
        "error_samples": [vars(a) for a in everything
                          if a.status is None or a.status >= 500][:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run for the tests")
    parser.add_argument("--seconds", type=float, default=180, help="how long writes go on")
    parser.add_argument("--every", type=float, default=20, help="seconds between writes")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients a replica")
    parser.add_argument("--reload", type=float, default=5, help="OPENIMAGER_RELOAD_SECONDS")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.every, args.clients, args.reload = 30, 7.5, 4, 1
    from flows.servers.local import LOCAL_CREDENTIALS, TELEMETRY_OFF

    for name in list(os.environ):  # the replicas get exactly the settings given here
        if name.startswith("OPENIMAGER_") or name.startswith("AWS_ENDPOINT_URL"):
            del os.environ[name]
    os.environ.update(TELEMETRY_OFF)
    os.environ.update(LOCAL_CREDENTIALS)  # moto's: the run never reaches a real account
    with tempfile.TemporaryDirectory(prefix="openimager-follow-") as tmp:
        os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")
        os.environ["XDG_DATA_HOME"] = str(Path(tmp) / "data")  # quilt3's cache
        summary = run(args.seconds, args.every, args.clients, args.reload, Path(tmp))
    print(json.dumps(summary))
    print(f"registry_follow: {summary['writes']} writes, both replicas answered with the new "
          f"revision after p50 {summary['write_to_both_p50_s']} s, max "
          f"{summary['write_to_both_max_s']} s (reload every {summary['reload_seconds']} s; "
          f"{summary['writes_not_reached']} not reached); {summary['requests']} requests, "
          f"{summary['server_errors_5xx']} 5xx (goal 0), {summary['connection_errors']} "
          f"connection errors, {summary['late_superseded_answers']} answers from a superseded "
          f"revision past reload + {LATE_SECONDS:g} s (goal 0); p99 "
          f"{summary['p99_steady_ms']} ms steady vs {summary['p99_during_swaps_ms']} ms "
          "during swaps")
    return 0


if __name__ == "__main__":
    sys.exit(main())

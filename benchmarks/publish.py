"""Publishing cost: time and bytes uploaded for a first push and for an unchanged re-push.

In one run, against a local S3 endpoint: (1) openimager's first publish of a bundle; (2) its
publish of the same bundle again, which finds the newest version identical and pushes nothing;
(3) quilt3's own push of the same package again (what a plain `push` costs). Bytes are counted
as the request bodies the S3 client sends.

    python benchmarks/publish.py            # 400 crops of ~10 KB and a 2 MB model
    python benchmarks/publish.py --quick    # 20 crops, for the test suite
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

from flows.servers.local import LOCAL_CREDENTIALS, TELEMETRY_OFF, LocalS3  # noqa: E402

META = {"package": "bench/bundle", "registry": "s3://bench", "classes": ["Car"],
        "class_mids": {"Car": "/m/0k4j"}, "crops_per_class": {"Car": 1}, "dataset_id": "d",
        "metrics": {"accuracy": 1.0, "macro_f1": 1.0, "test_examples": 1},
        "model_tag": "bench:1"}


class Counter:
    """Counts the bytes of every request body sent by botocore clients made after install()."""

    def __init__(self) -> None:
        self.bytes = self.requests = 0

    def install(self) -> None:
        from botocore.session import Session

        original, counter = Session.create_client, self

        def create_client(session, *args, **kwargs):
            client = original(session, *args, **kwargs)
            client.meta.events.register("before-send.s3", counter.count)
            return client

        Session.create_client = create_client

    def count(self, request, **_) -> None:
        body = request.body
        size = len(body) if isinstance(body, bytes | bytearray) else (
            int(request.headers.get("Content-Length", 0) or 0))
        self.bytes += size
        self.requests += 1


def make_bundle(root: Path, crops: int) -> tuple[Path, Path]:
    """A dataset folder of random crops and a model folder."""
    import pandas as pd

    data, model = root / "dataset", root / "model"
    (data / "crops" / "Car").mkdir(parents=True)
    for i in range(crops):
        (data / "crops" / "Car" / f"{i:05d}.jpg").write_bytes(os.urandom(10_000))
    pd.DataFrame({"CropPath": [f"Car/{i:05d}.jpg" for i in range(crops)], "Author": "a",
                  "License": "l", "OriginalLandingURL": "u"}).to_parquet(data / "crops.parquet")
    model.mkdir()
    (model / "model.keras").write_bytes(os.urandom(2_000_000))
    (model / "metrics.json").write_text(json.dumps(META["metrics"]))
    return data, model


def main() -> None:
    """Run the three pushes and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF, **LOCAL_CREDENTIALS)
    counter = Counter()
    counter.install()
    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3:
        s3.create_bucket("bench")
        os.environ["AWS_ENDPOINT_URL"] = s3.endpoint_url
        import quilt3

        from flows.publishing.bundle import publish
        from flows.publishing.lineage import git_commit

        META["git_commit"] = git_commit()  # code/ is the source of the recorded commit
        data, model = make_bundle(Path(tmp), 20 if args.quick else 400)
        cases = (("first publish", lambda: publish(data, model, META, "bench/bundle",
                                                   "s3://bench", "one").top_hash),
                 ("unchanged re-publish", lambda: publish(data, model, META, "bench/bundle",
                                                          "s3://bench", "two").top_hash),
                 ("quilt3 re-push", lambda: quilt3.Package.browse(
                     "bench/bundle", registry="s3://bench").push(
                     "bench/bundle", registry="s3://bench", message="again", force=True)
                  .top_hash))
        for name, run in cases:
            counter.bytes = counter.requests = 0
            start = time.perf_counter()
            top_hash = run()
            print(f"publish {name:>20}: {time.perf_counter() - start:6.2f} s  "
                  f"{counter.bytes / 1e6:8.3f} MB uploaded in {counter.requests} requests  "
                  f"top hash {top_hash[:12]}")


if __name__ == "__main__":
    main()

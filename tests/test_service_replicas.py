"""Two replicas of the service, as two containers run them: each `bentoml serve` has its own
model store, home, temporary folder and workspace, and they share only an S3 prefix (moto) for
the prediction log. Neither overwrites the other's parts, either takes feedback for the
other's answers, and the drift command reads the requests of both."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from flows.servers.local import BentoServer
from model.predictions import read_feedback, read_log
from tests.servicekit import CLASSES, encoded, picture, register_tiny_model, wait_for

pytestmark = pytest.mark.integration
BUCKET = "replicas-log"
PART = re.compile(r"part-\d{8}T\d{6}-(?P<writer>[0-9a-f]{16})-\d{6}\.parquet")


def replica_env(root: Path, models: Path, log_dir: str, endpoint: str) -> dict[str, str]:
    """A container's worth of its own folders, the model copied into its own store."""
    for name in ("home", "tmp", "workspace"):
        (root / name).mkdir(parents=True)
    shutil.copytree(models, root / "bentoml" / "models")
    return {"BENTOML_HOME": str(root / "bentoml"), "HOME": str(root / "home"),
            "TMPDIR": str(root / "tmp"), "OPENIMAGER_WORKSPACE": str(root / "workspace"),
            "OPENIMAGER_PREDICTION_LOG_DIR": log_dir, "AWS_ENDPOINT_URL": endpoint,
            # Parts wait 2 s for more rows: feedback sent at once finds no part yet.
            "OPENIMAGER_PREDICTION_LOG_SECONDS": "2",
            "OPENIMAGER_PREDICTION_SAMPLE_RATE": "1"}  # every upload kept, for a replay


def classify(url: str, seed: int) -> str:
    answer = requests.post(f"{url}/classify", timeout=60,
                           files={"image": ("x.jpg", encoded(picture(seed)))})
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def classify_batch(url: str, seeds: list[int]) -> list[str]:
    answer = requests.post(f"{url}/classify_batch", timeout=60, files=[
        ("images", (f"{seed}.jpg", encoded(picture(seed)))) for seed in seeds])
    assert answer.status_code == 200, answer.text
    return [result["request_id"] for result in answer.json()["results"]]


def feedback(url: str, request_id: str, label: str) -> requests.Response:
    return requests.post(f"{url}/feedback", timeout=120,
                         json={"request_id": request_id, "label": label})


def test_two_replicas_share_only_s3_for_the_log_feedback_and_drift(
        tmp_path, local_s3, monkeypatch, capsys):
    from flows.commands.main import main

    local_s3.create_bucket(BUCKET, versioned=False)
    log_dir = f"s3://{BUCKET}/served"
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    tag = register_tiny_model(tmp_path / "model")
    models = Path(os.environ["BENTOML_HOME"]) / "models"
    env_a = replica_env(tmp_path / "a", models, log_dir, local_s3.endpoint_url)
    env_b = replica_env(tmp_path / "b", models, log_dir, local_s3.endpoint_url)

    with (BentoServer(tag, log_path=tmp_path / "a.log", env=env_a) as a,
          BentoServer(tag, log_path=tmp_path / "b.log", env=env_b) as b):
        ids_a = [classify(a.url, seed) for seed in range(3)]
        ids_b = [classify(b.url, 3), *classify_batch(b.url, [4, 5, 6])]
        # Straight away, before either has written a part: each takes the other's.
        on_b = feedback(b.url, ids_a[0], "Square")
        on_a = feedback(a.url, ids_b[1], "Circle")
        bad_label = feedback(b.url, ids_a[1], "Dog")
        long_ago = f"{int((time.time() - 3600) * 1000):012x}7abc8{'0' * 15}"
        unknown = feedback(b.url, long_ago, "Circle")
        more_a = [classify(a.url, seed) for seed in range(7, 9)]  # still in an open part
        wait_for(lambda: len(read_log(log_dir)) >= 9, "the first parts of both", 60, 0.2)
    # Both stopped with SIGTERM: each wrote its open part.

    assert (on_b.status_code, on_a.status_code) == (200, 200), (on_b.text, on_a.text)
    assert on_b.json() == {"request_id": ids_a[0], "label": "Square", "model": tag,
                           "stored": True}
    assert on_a.json()["model"] == tag
    assert (bad_label.status_code, bad_label.json()["code"]) == (400, "unknown_label")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_request")

    # No part overwrote another: every answer of both is in the log once.
    rows = read_log(log_dir)
    assert sorted(rows.request_id) == sorted(ids_a + more_a + ids_b)
    listed = local_s3.client().list_objects_v2(Bucket=BUCKET, Prefix="served/log/")
    names = [item["Key"].rpartition("/")[2] for item in listed["Contents"]]
    assert all(PART.fullmatch(name) for name in names), names
    writers: dict[str, set[str]] = {}
    for name in names:
        part = read_log_part(local_s3, f"served/log/{name}")
        replica = "a" if set(part.request_id) <= set(ids_a + more_a) else "b"
        assert set(part.request_id) <= set(ids_a + more_a if replica == "a" else ids_b)
        writers.setdefault(replica, set()).add(PART.fullmatch(name)["writer"])
    assert set(writers) == {"a", "b"} and not writers["a"] & writers["b"]
    stored = read_feedback(log_dir)
    assert sorted(stored[["request_id", "label"]].values.tolist()) == sorted(
        [[ids_a[0], "Square"], [ids_b[1], "Circle"]])

    # The drift command reads the S3 prefix: the requests of both replicas.
    workspace = tmp_path / "ws"
    (workspace / "dataset").mkdir(parents=True)
    pd.DataFrame({"Class": CLASSES * 2, "Split": ["test"] * 6, "Width": [48] * 6,
                  "Height": [40] * 6}).to_parquet(workspace / "dataset" / "crops.parquet")
    monkeypatch.setenv("OPENIMAGER_MODEL_NAME", "replicas-none-promoted")
    assert main(["drift", "--workspace", str(workspace), "--log-dir", log_dir]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(ids_a + more_a + ids_b)} requests to any model since the "
                          "log began"), out
    assert "feedback: 2 labelled requests" in out
    kept_uploads_of_both_reach_a_replay_elsewhere(log_dir, tmp_path / "retrain-tmp")


def kept_uploads_of_both_reach_a_replay_elsewhere(log_dir: str, cache: Path) -> None:
    """What a retrain in another container replays: the uploads both replicas kept in the
    prefix, each under the hash of its bytes, the labelled ones with their feedback."""
    import hashlib

    from flows.watching.shadow import image_folder, kept_uploads

    uploads = kept_uploads(log_dir, None, 100)
    assert len(uploads) == 9  # nine different pictures, from both replicas
    assert sorted(uploads.label.dropna()) == ["Circle", "Square"]
    cache.mkdir()
    (cache / "left-from-an-earlier-replay.jpg").write_bytes(b"old")
    folder = image_folder(log_dir, list(uploads.name), cache)
    assert sorted(path.name for path in folder.iterdir()) == sorted(uploads.name)
    for row in uploads.itertuples():
        assert hashlib.sha256((folder / row.name).read_bytes()).hexdigest() == row.sha256


def read_log_part(local_s3, key: str) -> pd.DataFrame:
    import io

    import pyarrow.parquet as pq

    body = local_s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body)).to_pandas()

"""A command that reads log parts out of S3 and exits at once exits 0.

pyarrow's reader threads, left running over a part held in memory (a Python file object, as
S3 objects are read), can abort the interpreter at exit ("terminate called without an active
exception", exit 134): the readers of parts read without them. Each run is a fresh interpreter
that reads and exits, the shape that aborts. Before the fix the read_parts case failed here;
a narrow read such as read_answered's aborts less often (3 of 20 runs on 5,000 rows)."""

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from model.predictions import FEEDBACK_SCHEMA, LOG_SCHEMA
from service.predlog import parquet

ROOT = Path(__file__).resolve().parent.parent
RUNS = 6

pytestmark = pytest.mark.integration

READERS = {
    "model.predictions.read_parts": """
from model.predictions import FEEDBACK_SCHEMA, read_parts
assert read_parts(sys.argv[1], FEEDBACK_SCHEMA).num_rows == 500
""",
    "service.review.read_answered and read_kept": """
import io, boto3
from service.review import read_answered, read_kept
bucket, _, key = sys.argv[1].removeprefix("s3://").partition("/")
body = lambda name: io.BytesIO(boto3.client("s3").get_object(
    Bucket=bucket, Key=f"{key}/{name}")["Body"].read())
assert len(read_answered(body("part-1.parquet"))) == 500
assert read_kept(body("log.parquet")) == []
""",
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_reading_parts_from_s3_then_exiting_exits_0(reader, registry_env, tmp_path):
    client = boto3.client("s3")
    bucket = registry_env.removeprefix("s3://")
    feedback = [{"request_id": f"r{i}", "label": "Car", "time": None, "model": "m"}
                for i in range(500)]
    client.put_object(Bucket=bucket, Key="logs/part-1.parquet",
                      Body=parquet(feedback, FEEDBACK_SCHEMA))
    client.put_object(Bucket=bucket, Key="logs/log.parquet", Body=parquet([], LOG_SCHEMA))
    script = tmp_path / "read.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{READERS[reader]}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    codes = [subprocess.run([sys.executable, str(script), f"{registry_env}/logs"], env=env,
                            capture_output=True, text=True, timeout=120).returncode
             for _ in range(RUNS)]
    assert codes == [0] * RUNS

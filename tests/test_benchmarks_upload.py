"""The upload benchmark runs end to end in its quick mode (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_quick_upload_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "upload.py"), "--quick"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    decodes = [line for line in lines if line.startswith("decode ")]
    assert len(decodes) == 7 and all("s CPU, peak" in line for line in decodes)
    summary = json.loads(next(line for line in lines if line.startswith("{")))
    assert {d["format"].split()[0] for d in summary["decodes"]} == {
        "JPEG", "PNG", "GIF", "BMP", "WebP"}
    server = summary["server"]
    assert server["failed"] == 0 and server["large_failed"] == 0
    assert server["requests_alone"] > 0 and server["requests_beside"] > 0
    assert server["large_uploads"] > 0
    assert lines[-1].startswith("upload: worst decode ")

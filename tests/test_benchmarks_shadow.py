"""The shadow replay benchmark runs end to end in its quick mode (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_quick_shadow_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shadow.py"), "--quick"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    summary = json.loads(lines[0])
    (result,) = summary["results"]
    assert result["uploads"] == 30  # every kept upload was replayed on both models
    assert result["replay_ips"] > 0 and result["model_ips"] > 0
    assert result["command_peak_mb"] > 0 and result["baseline_peak_mb"] > 0
    assert lines[1].startswith("shadow seed-cnn 64px, 30 uploads: replay ")

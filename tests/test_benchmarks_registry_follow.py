"""The registry-follow benchmark runs end to end in its quick mode: two replicas under load
follow promotions and rollbacks with no 5xx (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_quick_registry_follow_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "registry_follow.py"),
                           "--quick"], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    summary = json.loads(lines[0])
    assert lines[1].startswith("registry_follow: ")
    assert summary["server_errors_5xx"] == 0 and summary["connection_errors"] == 0, summary
    assert summary["writes"] >= 2 and summary["ok"] > 0
    assert sorted(summary["models_seen"]) == sorted(summary["tags"])

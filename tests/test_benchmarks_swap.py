"""The swap benchmark runs end to end in its quick mode: a promotion and a restart under load
fail no request (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_quick_swap_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "swap.py"), "--quick"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[0])
    assert done.stdout.splitlines()[1].startswith("swap: ")
    assert summary["server_errors_5xx"] == 0 and summary["other_connection_errors"] == 0, summary
    assert summary["new_tag"] in summary["models_seen"] and len(summary["models_seen"]) == 2
    assert summary["promotion_to_new_model_s"] is not None

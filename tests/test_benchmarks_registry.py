"""The registry benchmark runs end to end in its quick mode (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_quick_registry_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "registry.py"), "--quick"],
                          capture_output=True, text=True, timeout=900, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("registry start after")]
    assert [int(line.split()[3]) for line in lines] == [1, 3, 5]
    requests = [int(re.search(r"\((\d+) requests", line)[1]) for line in lines]
    assert requests[0] < requests[1] < requests[2]  # the old log grows with every publish
    old_mb, new_mb = (float(m) for m in re.findall(r"([\d.]+) MB", lines[-1]))
    assert new_mb < old_mb  # reads are not kept

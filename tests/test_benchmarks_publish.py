"""The publish benchmark runs end to end in its quick mode (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_publish_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "publish.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("publish ")]
    assert len(lines) == 3
    first, again = (line.rsplit(" ", 1)[1] for line in lines[:2])
    assert first == again  # an unchanged bundle is the same version
    assert " 0.000 MB uploaded" in lines[1]

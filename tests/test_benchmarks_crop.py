"""The crop benchmark runs end to end in its quick mode (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_crop_benchmark(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crop.py"), "--quick",
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("crop       seed:") and lines[1].startswith("crop openimager:")
    assert lines[2].startswith("crop ratio openimager/seed per core:")

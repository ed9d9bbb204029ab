"""The metadata benchmark runs end to end in its quick mode (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_metadata_benchmark(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metadata.py"), "--quick",
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=True)
    lines = done.stdout.splitlines()
    cases = [line.split(":")[0] for line in lines if "peak RSS" in line]
    assert cases == [f"metadata {c:>6}" for c in ("seed", "cold", "build", "warm2", "warm20")]
    assert "rows equal True" in lines[-1]

"""The serving benchmark runs end to end in its quick mode (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_quick_serving_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("raw model.predict") and "img/s" in lines[0]
    cases = [re.match(r"(\w+)\s+c=(\d+)", line).groups() for line in lines if " req/s " in line]
    assert cases == [("openimager", "1"), ("openimager", "4"), ("naive", "1"), ("naive", "4"),
                     ("logged", "4"), ("unlogged", "4")]
    assert all("p99" in line and "errors 0" in line for line in lines if " req/s " in line)
    assert all("memory per worker" in line for line in lines
               if " req/s " in line and "logged" not in line)
    assert re.fullmatch(r"prediction log c=4: logged/unlogged throughput \d+\.\d+x .*",
                        lines[-1])
    assert [line.split(":")[0] for line in lines if line.startswith("ratios")] == [
        "ratios c=1", "ratios c=4"]

"""The download benchmark runs end to end in its quick mode (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_download_benchmark(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "download.py"), "--quick",
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=True)
    lines = done.stdout.splitlines()
    cases = [line.split(":")[0] for line in lines if "images/s" in line and "CPU" in line]
    assert cases == [f"download {c:>10}" for c in ("seed", "pool20", "openimager", "cvdf", "boto3")]
    assert all(" 60/60 images" in line for line in lines if line.startswith("download"))
    assert lines[-3].startswith("ratios: openimager/seed")
    assert lines[-2].startswith("CPU per image: openimager (verified) / pool20 (unverified)")
    assert lines[-1].startswith("image check: structure")
    assert "caught: structure 12/12, draft decode 12/12" in lines[-1]

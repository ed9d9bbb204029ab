"""The scale benchmark runs end to end in its quick mode (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_scale_benchmark_prints_every_line():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick"],
                          capture_output=True, text=True, timeout=1800, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("scale ")]
    for layout in ("shards", "files"):
        for case in ("first publish", "+1 % publish"):
            line = next(x for x in lines if f" {layout} " in x and case in x)
            assert re.search(r"[\d.]+ MB +\d+ requests +manifest +[\d.]+ kB +\d+ entries +peak",
                             line)
        assert any(f" {layout} training input:" in x for x in lines)
        assert any(f" {layout} cold training input:" in x for x in lines)
    entries = {layout: int(re.search(r"(\d+) entries", next(
        x for x in lines if f" {layout} " in x and "first publish" in x)).group(1))
        for layout in ("shards", "files")}
    assert entries["shards"] < 200 < 4000 < entries["files"]  # shards, not crops
    assert any("shards/files: first publish time per crop" in x for x in lines)
    for where in ("in the page cache", "from the disk"):
        assert any(re.search(rf"training input {where}, paired by round, median \(range\): "
                             r"wall [\d.]+ \([\d.]+-[\d.]+\), CPU [\d.]+", x) for x in lines)

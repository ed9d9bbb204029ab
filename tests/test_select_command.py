"""`python -m flows select`: the counts it prints, and that it loads no other stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def test_select_prints_the_counts_of_its_file_and_loads_no_other_stage(mirror, tmp_path):
    probe = ("import sys; from flows.__main__ import main; code = main(sys.argv[1:]); "
             "print('loaded:', sorted(m for m in ('flows.stages', 'prefect', 'quilt3', "
             "'tensorflow', 'bentoml') if m in sys.modules)); sys.exit(code)")
    done = subprocess.run(
        [sys.executable, "-c", probe, "select", "--classes", "Hamburger", "Sandwich",
         "--workspace", "ws", "--metadata-url", mirror.url],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    table = pd.read_parquet(tmp_path / "ws" / "selection.parquet")
    for name, rows in table.groupby("Class"):
        line = next(x for x in done.stdout.splitlines() if x.startswith(f"{name} "))
        assert line.split()[-2:] == [str(len(rows)), str(rows.ImageID.nunique())]
    assert f"{len(table)} boxes on {table.ImageID.nunique()} images" in done.stderr

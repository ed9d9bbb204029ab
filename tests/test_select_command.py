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
    probe = ("import sys; from flows.commands.main import main; code = main(sys.argv[1:]); "
             "print('loaded:', sorted(m for m in ('flows.pipeline.stages', 'prefect', 'quilt3', "
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


def select_loads(tmp_path: Path, url: str, cache: bool, *flags: str) -> str:
    """Which of pandas, requests and pydantic-settings `python -m flows select` loaded, in
    a fresh process."""
    probe = ("import sys; from flows.commands.main import main; code = main(sys.argv[1:]); "
             "print('loaded:', sorted(m for m in ('pandas', 'requests', 'pydantic_settings') "
             "if m in sys.modules)); "
             "sys.exit(code)")
    done = subprocess.run(
        [sys.executable, "-c", probe, "select", "--classes", "Hamburger", "Sandwich",
         "--workspace", "ws", "--metadata-url", url, *flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OPENIMAGER_SPLITS": "train",
             "OPENIMAGER_METADATA_CACHE": str(cache).lower(), "OPENIMAGER_MIN_BOX_FRACTION":
             "0.01", "OPENIMAGER_BOX_SOURCE": "xclick", "OPENIMAGER_CHECK_UPSTREAM": "false"})
    assert done.returncode == 0, done.stderr
    return done.stdout.split("loaded: ")[1].splitlines()[0]


def test_a_selection_from_local_files_loads_no_library_it_does_not_use(tmp_path):
    # pandas was 0.2 s, requests 0.06 s and pydantic-settings 0.07 s of CPU of a warm
    # selection: pyarrow loads pandas as soon as pa.array, pa.scalar or to_numpy meets a
    # Python or numpy value.
    local = f"file://{ROOT / 'data' / 'sample' / 'openimages'}"
    select_loads(tmp_path, local, True)  # copies the files and builds the cache
    assert select_loads(tmp_path, local, True, "--max-images-per-class", "5") == "[]"
    assert select_loads(tmp_path, local, False) == "[]"

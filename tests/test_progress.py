"""Progress of long steps: a bar on a terminal, one line per step with its duration elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from flows.openimages.metadata import Metadata
from flows.openimages.select import Filters, select_boxes
from flows.run.progress import amount, step, stepper
from tests.conftest import ROOT

LINE = re.compile(r"^metadata: (?P<what>.+?)(?: \((?P<amount>[^)]+)\))? in \d+\.\d s$")

SCRIPT = """
import sys
from flows.run.progress import step
with step("verifying MD5 of x.csv", total=3_000_000, done="verified x.csv",
          stage="metadata") as advance:
    for _ in range(3):
        advance(1_000_000)
"""


def test_off_a_terminal_each_step_is_one_line_with_its_duration():
    out = io.StringIO()
    with step("verifying MD5 of x.csv", total=2_258_447_590, done="verified x.csv",
              stage="metadata", stream=out) as advance:
        advance(2_000_000_000)
        advance(258_447_590)
    with step("building the cache", unit="rows", stage="metadata", stream=out) as advance:
        advance(14_610_229)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (LINE.match(line) for line in lines)
    assert first["what"] == "verified x.csv" and first["amount"] == "2.3 GB"
    assert second["what"] == "building the cache" and second["amount"] == "14,610,229 rows"


def test_a_failed_step_says_so_in_its_line():
    out = io.StringIO()
    with pytest.raises(ValueError), step("parsing x.csv", stage="metadata", stream=out):
        raise ValueError("line 3")
    assert re.fullmatch(r"metadata: parsing x\.csv failed after \d+\.\d s\n", out.getvalue())


def test_a_forced_bar_draws_tqdm():
    out = io.StringIO()
    with step("downloading x.csv", total=1000, stream=out, bar=True) as advance:
        advance(1000)
    assert "100%" in out.getvalue() and "\r" in out.getvalue()


def test_amounts_read_like_people_write_them():
    assert amount(999, "B") == "999 B"
    assert amount(2_258_447_590, "B") == "2.3 GB"
    assert amount(12_011, "B") == "12.0 kB"
    assert amount(1234, "boxes") == "1,234 boxes"


def run_with_stderr(stderr) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=stderr, timeout=120)
    assert done.returncode == 0
    return done.stdout.decode()


def test_a_terminal_gets_a_bar_and_a_pipe_gets_one_line():
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        run_with_stderr(follower)
        os.close(follower)
        drawn = b""
        while True:
            try:
                block = os.read(leader, 4096)
            except OSError:  # the terminal closed once the child ended
                break
            if not block:
                break
            drawn += block
    finally:
        os.close(leader)
    assert b"\r" in drawn and b"3.00M/3.00M" in drawn and b"100%" in drawn
    assert b"metadata: verified x.csv: 100%" in drawn  # the finished bar names the step done

    piped = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert LINE.fullmatch(piped.stderr.strip())["amount"] == "3.0 MB"
    assert "\r" not in piped.stderr and piped.stdout == ""


def test_a_refresh_reports_download_verify_cache_and_selection(mirror, tmp_path):
    out = io.StringIO()
    store = Metadata(mirror.url, tmp_path, splits=("validation",),
                     progress=stepper("metadata", stream=out)).refresh()
    select_boxes(store, store.ontology(), ["Hamburger"], Filters())
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    steps = [LINE.match(line)["what"] for line in lines]
    name = "validation-annotations-bbox.csv"
    assert f"downloaded {name}" in steps and f"computed MD5 of {name}" in steps
    assert f"parsed {name} into the cache" in steps
    assert "selected boxes of 1 label in validation from the cache" in steps  # a leaf class
    assert any(s.startswith("looked up info of") for s in steps)
    size = amount((tmp_path / "v5" / name).stat().st_size, "B")
    assert any(line.startswith(f"metadata: downloaded {name} ({size}) in ") for line in lines)

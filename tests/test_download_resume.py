"""Resuming the image download: after kill -9, after Ctrl-C, and from the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from flows.openimages import manifest as mf
from flows.servers.local import TELEMETRY_OFF
from tests.downloadkit import catalog, image_id, image_table, jpeg, store_files
from tests.imageserver import Faults, ImageServer

ROOT = Path(__file__).resolve().parent.parent
KEPT = ["ImageID", "Subset", "Source", "Status", "Path", "Bytes", "MD5", "Error"]


def bodies(first: int, count: int) -> dict[str, bytes]:
    return {image_id(n): jpeg(n) for n in range(first, first + count)}


# Ctrl-C as a terminal delivers it: a child inherits an ignored SIGINT, and a test process
# (a suite worker did, after other tests ran in it) may ignore it.
RUNNER = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
import pandas as pd
from flows.openimages.download import download_images
download_images(pd.read_parquet(sys.argv[1]), Path(sys.argv[2]), sources=("flickr",),
                workers=4, per_host=4, progress=False)
"""


def run_download(table: Path, store: Path) -> subprocess.Popen:
    env = {**os.environ, **TELEMETRY_OFF, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(table), str(store)], cwd=ROOT,
                            env=env)


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    images = bodies(1, 160)
    keys = list(images)
    files = catalog(images)
    for key in keys[::40]:  # a few gone upstream, so the manifest holds more than "ok"
        del files[f"/original/{key}.jpg"]
    with ImageServer(files, Faults(latency=0.05)) as server:
        table = tmp_path / "images.parquet"
        image_table(server.url, images).to_parquet(table)
        killed, clean = tmp_path / "killed", tmp_path / "clean"
        process = run_download(table, killed)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            journals = list((killed / mf.JOURNALS).glob("*.jsonl"))
            if journals and sum(p.read_bytes().count(b"\n") for p in journals) >= 40:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the download finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert not (killed / mf.MANIFEST).exists()  # only journals held the results so far
        assert run_download(table, killed).wait(60) == 0
        assert run_download(table, clean).wait(60) == 0
    assert store_files(killed) == store_files(clean)
    assert not list(killed.rglob("*.part"))
    after_kill, uninterrupted = mf.read_manifest(killed), mf.read_manifest(clean)
    assert after_kill[KEPT].equals(uninterrupted[KEPT])
    assert after_kill.Status.value_counts().to_dict() == {"ok": 156, "gone": 4}


def test_ctrl_c_stops_at_the_images_in_flight(tmp_path):
    images = bodies(1, 200)
    with ImageServer(catalog(images), Faults(latency=0.05)) as server:
        table = tmp_path / "images.parquet"
        image_table(server.url, images).to_parquet(table)
        process = run_download(table, tmp_path / "store")
        journal = tmp_path / "store" / mf.JOURNALS
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                p.stat().st_size for p in journal.glob("*.jsonl")):
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        assert process.wait(15) != 0
        done = sum(len(mf.read_journal(p)) for p in journal.glob("*.jsonl"))
        assert 0 < done < len(images)
        assert run_download(table, tmp_path / "store").wait(60) == 0
    assert (mf.read_manifest(tmp_path / "store").Status == "ok").sum() == len(images)


def test_command_line_download_resumes_and_verifies(local_s3, mirror, tmp_path, capsys):
    from flows.commands.main import main

    args = ["download", "--workspace", str(tmp_path), "--metadata-url", mirror.url,
            "--image-endpoint-url", local_s3.endpoint_url, "--classes", "Hamburger"]
    assert main(args) == 0
    downloads = pd.read_parquet(tmp_path / "downloads.parquet")
    assert set(downloads.Status) <= {"ok", "gone"} and (downloads.Status == "ok").sum() > 50
    victim = Path(downloads[downloads.Status == "ok"].Path.iloc[0])
    good = victim.read_bytes()
    victim.write_bytes(good[:100] + bytes(len(good) - 100))  # same size, ruined
    assert main(args) == 0 and victim.read_bytes() != good  # unread: trusted as verified
    assert main([*args, "--verify"]) == 0 and victim.read_bytes() == good
    assert '"downloads"' in capsys.readouterr().out

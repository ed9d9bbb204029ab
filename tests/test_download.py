"""The image download against a fault-injecting server on 127.0.0.1 (no Prefect here)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from flows.openimages import downloader
from flows.openimages import manifest as mf
from flows.openimages.download import DownloadOptions, download_images
from flows.openimages.sources import HostGate, retry_after
from tests.downloadkit import (
    BUCKET,
    catalog,
    decodes,
    image_id,
    image_table,
    jpeg,
    palette_png,
    store_files,
)
from tests.imageserver import Faults, ImageServer

ROOT = Path(__file__).resolve().parent.parent
FAST = DownloadOptions(workers=8, per_host=8, retries=3, backoff=0.01, backoff_max=5.0,
                       connect_timeout=2.0, read_timeout=0.6, deadline=1.5, progress=False)
KEPT = ["ImageID", "Subset", "Source", "Status", "Path", "Bytes", "MD5", "Error"]


def bodies(first: int, count: int) -> dict[str, bytes]:
    return {image_id(n): jpeg(n) for n in range(first, first + count)}


def assert_store_clean(store: Path, manifest: pd.DataFrame) -> None:
    """Only complete, decodable files, exactly those of the ok rows, no temp files."""
    assert not list(store.rglob("*.part"))
    files = store_files(store)
    ok = manifest[manifest.Status == "ok"]
    assert sorted(files) == sorted(f"{r.Subset}/{r.ImageID}.jpg" for r in ok.itertuples())
    for row in ok.itertuples():
        body = files[f"{row.Subset}/{row.ImageID}.jpg"]
        assert decodes(body) and len(body) == row.Bytes
        assert hashlib.md5(body).hexdigest() == row.MD5
    assert (manifest[manifest.Status != "ok"].Error.str.len() > 0).all()


def fault_catalog(faults: dict[str, str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Images named after the fault each one meets, plus a grayscale and a palette image."""
    images = {image_id(1000 + i): jpeg(1000 + i) for i in range(len(faults))}
    images[image_id(1)] = jpeg(1, mode="L")
    images[image_id(2)] = palette_png(2)
    return images, dict(zip(list(images)[: len(faults)], faults, strict=True))


FLICKR_FAULTS = ["503", "500", "429:1", "reset", "truncate", "trickle:4", "stall:3",
                 "503*5", "404*", "403*", "placeholder*", "placeholder-bytes*", "corrupt*"]


def install(server: ImageServer, route: str, plan: dict[str, str]) -> None:
    """Faults per image: "x" once, "x*n" n times, "x*" always."""
    for key, fault in plan.items():
        path = f"{route}/{key}.jpg"
        kind, star, times = fault.partition("*")
        if star and not times:
            server.faults.always[path] = kind
        else:
            server.faults.script[path] = [kind] * int(times or 1)


def test_flickr_faults_are_retried_recorded_and_converge(tmp_path):
    images, plan = fault_catalog(FLICKR_FAULTS)
    by_fault = {fault: key for key, fault in plan.items()}
    with ImageServer(catalog(images)) as server:
        install(server, "/original", plan)
        table = image_table(server.url, images)
        placeholder = hashlib.md5(server.placeholder).hexdigest()
        options = DownloadOptions(**{**FAST.__dict__, "sources": ("flickr",),
                                     "placeholder_md5s": (placeholder,)})
        first = download_images(table, tmp_path, options).set_index("ImageID")
        assert_store_clean(tmp_path, first.reset_index())
        hits = {fault: server.faults.hits(f"/original/{key}.jpg")
                for fault, key in by_fault.items()}
        second = download_images(table, tmp_path, options).set_index("ImageID")

    status = first.Status.to_dict()
    for fault in ("503", "500", "429:1", "reset", "truncate", "trickle:4", "stall:3"):
        assert status[by_fault[fault]] == "ok", (fault, first.loc[by_fault[fault]].Error)
        assert first.loc[by_fault[fault]].Attempts == 2
    assert status[image_id(1)] == status[image_id(2)] == "ok"  # grayscale, palette: real images
    assert "http 503 (4 attempts)" in first.loc[by_fault["503*5"]].Error
    assert status[by_fault["503*5"]] == "failed"
    reasons = {"404*": ("gone", "http 404"), "403*": ("failed", "http 403"),
               "placeholder*": ("gone", "photo unavailable (redirect"),
               "placeholder-bytes*": ("gone", "placeholder image"),
               "corrupt*": ("failed", "differs from OriginalMD5")}
    for fault, (expected, reason) in reasons.items():
        assert status[by_fault[fault]] == expected and reason in first.loc[by_fault[fault]].Error
        assert len(hits[fault]) == 1  # permanent answers are not retried
    gap = hits["429:1"][1][0] - hits["429:1"][0][0]
    assert gap >= 0.95  # Retry-After: 1 honoured

    # The second run retries only what failed; ok only grows; what still fails is permanent.
    assert set(second.index[second.Status == "ok"]) >= set(first.index[first.Status == "ok"])
    assert second.loc[by_fault["503*5"]].Status == "ok"
    assert set(second.index[second.Status == "failed"]) == {by_fault["403*"], by_fault["corrupt*"]}
    assert second.Status.value_counts().to_dict() == {"ok": 10, "gone": 3, "failed": 2}
    assert_store_clean(tmp_path, second.reset_index())
    assert (first.loc[second.Status == "ok"].Time <= second.loc[second.Status == "ok"].Time).all()


def test_cvdf_faults_through_boto3(tmp_path):
    faults = ["503", "429:1", "reset", "truncate", "trickle:4", "404*", "403*", "corrupt*"]
    images, plan = fault_catalog(faults)
    by_fault = {fault: key for key, fault in plan.items()}
    with ImageServer(catalog(images)) as server:
        install(server, f"/{BUCKET}/train", plan)
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url})
        result = download_images(image_table(server.url, images), tmp_path, options)
        hits = {fault: server.faults.hits(f"/{BUCKET}/train/{key}.jpg")
                for fault, key in by_fault.items()}
    row = result.set_index("ImageID")
    for fault in ("503", "429:1", "reset", "truncate", "trickle:4"):
        assert row.loc[by_fault[fault]].Status == "ok", (fault, row.loc[by_fault[fault]].Error)
        assert len(hits[fault]) == 2
    assert hits["429:1"][1][0] - hits["429:1"][0][0] >= 0.95
    assert row.loc[by_fault["404*"]].Status == "gone"
    assert "NoSuchKey" in row.loc[by_fault["404*"]].Error
    assert row.loc[by_fault["403*"]].Status == "failed"
    assert "AccessDenied 403" in row.loc[by_fault["403*"]].Error
    assert "not a decodable image" in row.loc[by_fault["corrupt*"]].Error
    assert [len(hits[f]) for f in ("404*", "403*", "corrupt*")] == [1, 1, 1]
    assert set(result[result.Status == "ok"].Source) == {"cvdf"}
    assert_store_clean(tmp_path, result)


def test_fallback_sources_in_order(tmp_path):
    images = bodies(1, 4)
    keys = list(images)
    files = catalog(images)
    del files[f"/{BUCKET}/train/{keys[0]}.jpg"]  # not in the bucket: Flickr has it
    for key in keys[1:3]:  # nowhere
        del files[f"/{BUCKET}/train/{key}.jpg"], files[f"/original/{key}.jpg"]
    with ImageServer(files) as server:
        table = image_table(server.url, images)
        table.loc[2, "OriginalURL"] = None
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url,
                                     "sources": ("cvdf", "flickr")})
        result = download_images(table, tmp_path, options).set_index("ImageID")
    assert result.loc[keys[0]].Status == "ok" and result.loc[keys[0]].Source == "flickr"
    assert result.loc[keys[3]].Source == "cvdf"
    assert result.loc[keys[1]].Status == "gone"
    assert result.loc[keys[1]].Error == "cvdf: s3 NoSuchKey 404; flickr: http 404"
    assert result.loc[keys[2]].Status == "gone"  # the only source it has says gone
    assert "flickr: no OriginalURL" in result.loc[keys[2]].Error


def test_store_is_shared_and_reruns_read_nothing(tmp_path, monkeypatch):
    hamburgers, sandwiches = bodies(1, 6), bodies(4, 6)  # three images in both
    with ImageServer(catalog({**hamburgers, **sandwiches})) as server:
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url})
        download_images(image_table(server.url, hamburgers), tmp_path, options)
        server.faults.requests.clear()
        both = download_images(image_table(server.url, sandwiches), tmp_path, options)
        fetched = {path.rsplit("/", 1)[1][:-4] for _, path, _ in server.faults.requests}
        assert fetched == set(sandwiches) - set(hamburgers)
        assert (both.Status == "ok").all() and set(both.ImageID) == set(sandwiches)

        def no_reading(*args: object) -> None:
            raise AssertionError("a verified image was read again")

        monkeypatch.setattr(downloader, "check_image", no_reading)
        server.faults.requests.clear()
        again = download_images(image_table(server.url, {**hamburgers, **sandwiches}),
                                tmp_path, options)
        assert server.faults.requests == [] and (again.Status == "ok").all()
    whole = mf.read_manifest(tmp_path)
    assert whole.ImageID.is_unique and len(whole) == 9


def test_verify_rechecks_files_on_disk(tmp_path):
    images = bodies(1, 4)
    keys = list(images)
    with ImageServer(catalog(images)) as server:
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url})
        table = image_table(server.url, images)
        first = download_images(table, tmp_path, options)
        damaged = tmp_path / "train" / f"{keys[0]}.jpg"
        body = bytearray(damaged.read_bytes())
        body[len(body) // 2: len(body) // 2 + 64] = bytes(64)  # same size, other bytes
        damaged.write_bytes(bytes(body))
        (tmp_path / "train" / f"{keys[1]}.jpg").unlink()
        server.faults.requests.clear()
        download_images(table, tmp_path, options)  # no verify: only the missing file comes back
        assert [p for _, p, _ in server.faults.requests] == [f"/{BUCKET}/train/{keys[1]}.jpg"]
        server.faults.requests.clear()
        checked = download_images(table, tmp_path, DownloadOptions(
            **{**options.__dict__, "verify": True}))
        assert [p for _, p, _ in server.faults.requests] == [f"/{BUCKET}/train/{keys[0]}.jpg"]
    assert damaged.read_bytes() == images[keys[0]]
    assert (checked.Status == "ok").all()
    assert checked.drop(columns=["Seconds", "Time", "Attempts"]).equals(
        first.drop(columns=["Seconds", "Time", "Attempts"]))


def test_per_host_limit_and_retry_after_pause(tmp_path, monkeypatch):
    grants: list[tuple[float, float]] = []  # (slot asked for, slot granted), client clock
    pauses: list[tuple[float, float, float]] = []  # (seconds, registered, pause ends)
    real_slot, real_pause = HostGate.slot, HostGate.pause

    @contextmanager
    def slot(self, host):
        asked = time.monotonic()
        with real_slot(self, host):
            grants.append((asked, time.monotonic()))
            yield

    def pause(self, host, seconds):
        real_pause(self, host, seconds)
        pauses.append((seconds, time.monotonic(), self._until[host]))

    monkeypatch.setattr(HostGate, "slot", slot)
    monkeypatch.setattr(HostGate, "pause", pause)
    images = bodies(1, 12)
    first = f"/{BUCKET}/train/{next(iter(images))}.jpg"
    with ImageServer(catalog(images), Faults(latency=0.1, script={first: ["429:1"]})) as server:
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url,
                                     "per_host": 3, "workers": 12})
        result = download_images(image_table(server.url, images), tmp_path, options)
        assert server.peak == 3 and (result.Status == "ok").all()
        told = server.faults.hits(first)[0][0]
    # Once the host asked to wait, no request asked for after that is let through before the
    # pause ends (a request already past the gate may still go out), and one did wait for it.
    [(seconds, registered, ends)] = pauses
    assert seconds == 1.0  # the Retry-After of the 429
    later = [granted for asked, granted in grants if asked > registered]
    assert later and min(later) >= ends
    assert max(t - told for t, _, _ in server.faults.requests) >= 1.0  # the retry


def test_retry_after_forms():
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = time.time() + 30
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(later))
    assert 27 <= retry_after(http_date) <= 31


def test_a_torn_journal_line_and_dead_temp_files_are_survived(tmp_path):
    images = bodies(1, 2)
    (tmp_path / "train").mkdir(parents=True)
    (tmp_path / mf.JOURNALS).mkdir()
    (tmp_path / mf.JOURNALS / "dead.jsonl").write_text(
        '{"ImageID": "x", "Subset": "train", "Status": "ok", "Time": "1"}\n{"ImageID": "y", "Su')
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / "train" / f".{image_id(1)}.jpg.{mf.HOST}.{dead}.0.part"
    stale.write_bytes(b"half an image")
    with ImageServer(catalog(images)) as server:
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url})
        result = download_images(image_table(server.url, images), tmp_path, options)
    assert (result.Status == "ok").all() and not stale.exists()
    assert set(mf.read_manifest(tmp_path).ImageID) == {"x", *images}
    assert not list((tmp_path / mf.JOURNALS).iterdir())


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_a_cut_body_never_lands_even_without_retries(tmp_path, kind):
    images = bodies(1, 1)
    key = next(iter(images))
    with ImageServer(catalog(images)) as server:
        server.faults.always[f"/original/{key}.jpg"] = kind
        options = DownloadOptions(**{**FAST.__dict__, "sources": ("flickr",), "retries": 0})
        result = download_images(image_table(server.url, images), tmp_path, options)
    assert result.Status.tolist() == ["failed"] and result.Attempts.tolist() == [1]
    assert not store_files(tmp_path) and not list(tmp_path.rglob("*.part"))


def test_large_or_unannounced_bodies_stream_to_the_file(tmp_path, monkeypatch):
    from flows.openimages import sources

    body = jpeg(7) * 3
    for length, limit in ((None, sources.IN_MEMORY), (len(body), 100)):
        monkeypatch.setattr(sources, "IN_MEMORY", limit)
        pieces = iter([body[i:i + 1000] for i in range(0, len(body), 1000)] + [b""])
        dest = tmp_path / f"{length}.part"
        fetched = sources.copy_body(lambda _, p=pieces: next(p), dest, length,
                                    time.monotonic() + 9, 1000)
        assert fetched.body is None and dest.read_bytes() == body
        assert fetched.md5 == hashlib.md5(body).hexdigest() and fetched.size == len(body)
    pieces = iter([body[:500], b""])
    with pytest.raises(sources.Transient, match="short body: 500 of"):
        sources.copy_body(lambda _: next(pieces), dest, len(body), time.monotonic() + 9, 1000)


def test_a_manifest_of_the_earlier_format_is_taken_over(tmp_path):
    images = bodies(1, 3)
    keys = list(images)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / f"{keys[0]}.jpg").write_bytes(images[keys[0]])
    pd.DataFrame([  # the columns and statuses the first version wrote
        {"ImageID": keys[0], "Subset": "train", "Source": "cvdf", "Status": "ok",
         "Path": str(tmp_path / "train" / f"{keys[0]}.jpg"), "Bytes": len(images[keys[0]]),
         "Error": "", "Seconds": 0.1},
        {"ImageID": keys[1], "Subset": "train", "Source": "cvdf", "Status": "missing",
         "Path": "", "Bytes": 0, "Error": "s3 404", "Seconds": 0.1},
    ]).to_parquet(tmp_path / mf.MANIFEST)
    with ImageServer(catalog(images)) as server:
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url})
        result = download_images(image_table(server.url, images), tmp_path, options)
        assert [p for _, p, _ in server.faults.requests] == [f"/{BUCKET}/train/{keys[2]}.jpg"]
    assert result.Status.tolist() == ["ok", "gone", "ok"]
    assert result.Path.tolist()[0] == str(tmp_path / "train" / f"{keys[0]}.jpg")

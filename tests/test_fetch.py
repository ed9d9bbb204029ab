"""Metadata fetching against a local HTTP mirror: verify, resume, refresh only on change."""

import hashlib
import os

import pytest
import requests

from flows.openimages.fetch import ChecksumError, ensure, fetch, read_stamp
from flows.servers.mirror import StaticHTTP


@pytest.fixture
def upstream(tmp_path):
    root = tmp_path / "upstream"
    root.mkdir()
    body = os.urandom(300_000)
    (root / "boxes.csv").write_bytes(body)
    with StaticHTTP(root) as server:
        yield server, body


def test_fetch_verifies_and_stamps(upstream, tmp_path):
    server, body = upstream
    md5 = hashlib.md5(body).hexdigest()
    stamp = fetch(f"{server.url}/boxes.csv", tmp_path / "out" / "boxes.csv", len(body), md5)
    assert (tmp_path / "out" / "boxes.csv").read_bytes() == body
    assert stamp.md5 == md5 and stamp.etag and read_stamp(tmp_path / "out" / "boxes.csv") == stamp


def test_mismatch_names_file_and_values_and_keeps_the_verified_copy(upstream, tmp_path):
    server, body = upstream
    dest = tmp_path / "boxes.csv"
    ensure(f"{server.url}/boxes.csv", dest)
    with pytest.raises(ChecksumError) as error:
        ensure(f"{server.url}/boxes.csv", dest, md5="0" * 32)
    message = str(error.value)
    assert "boxes.csv" in message and "0" * 32 in message
    assert hashlib.md5(body).hexdigest() in message
    with pytest.raises(ChecksumError, match=f"expected 5 bytes, got {len(body)}"):
        fetch(f"{server.url}/boxes.csv", dest, size=5)
    assert dest.read_bytes() == body  # the earlier verified file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.csv", "boxes.csv.stamp.json",
                                                          "upstream"]


def test_an_interrupted_download_resumes_with_a_range_request(upstream, tmp_path):
    server, body = upstream
    server.faults.cut_after["/boxes.csv"] = 100_000
    dest = tmp_path / "boxes.csv"
    with pytest.raises(requests.RequestException):
        fetch(f"{server.url}/boxes.csv", dest, len(body))
    assert not dest.exists()
    kept = (tmp_path / "boxes.csv.part").stat().st_size
    assert 0 < kept <= 100_000
    server.faults.requests.clear()
    fetch(f"{server.url}/boxes.csv", dest, len(body), hashlib.md5(body).hexdigest())
    assert dest.read_bytes() == body
    assert server.faults.requests == [("GET", "/boxes.csv", f"bytes={kept}-")]
    assert not (tmp_path / "boxes.csv.part").exists()


def test_refresh_downloads_again_only_when_upstream_changed(upstream, tmp_path):
    server, body = upstream
    dest = tmp_path / "boxes.csv"
    url = f"{server.url}/boxes.csv"
    ensure(url, dest)
    server.faults.requests.clear()
    ensure(url, dest)
    assert [method for method, _, _ in server.faults.requests] == ["HEAD"]
    changed = body[::-1]
    (server.root / "boxes.csv").write_bytes(changed)
    ensure(url, dest)
    assert dest.read_bytes() == changed
    assert read_stamp(dest).md5 == hashlib.md5(changed).hexdigest()


def test_an_unreachable_upstream_falls_back_to_the_verified_copy(upstream, tmp_path, caplog):
    server, body = upstream
    dest = tmp_path / "boxes.csv"
    url = f"{server.url}/boxes.csv"
    ensure(url, dest)
    server.__exit__()
    assert ensure(url, dest).size == len(body)
    assert "using the verified copy" in caplog.text

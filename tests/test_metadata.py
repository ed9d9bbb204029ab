"""Fetching metadata over HTTP with verification, and streaming box selection."""

import hashlib

import pytest

from flows.openimages.metadata import V6_FILES, ChecksumError, fetch, fetch_metadata, read_boxes

HAMBURGER, CAR = "/m/0cdn1", "/m/0k4j"


def test_fetch_verifies_size_and_md5(mirror, tmp_path):
    url = f"{mirror.url}/v5/class-descriptions-boxable.csv"
    body = (mirror.root / "v5" / "class-descriptions-boxable.csv").read_bytes()
    dest = fetch(url, tmp_path / "ok.csv", len(body), hashlib.md5(body).hexdigest())
    assert dest.read_bytes() == body
    with pytest.raises(ChecksumError, match=r"expected MD5 0+, got"):
        fetch(url, tmp_path / "bad.csv", len(body), "0" * 32)
    with pytest.raises(ChecksumError, match="expected 1 bytes"):
        fetch(url, tmp_path / "short.csv", 1)
    # A failed download leaves neither the file nor a partial one behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.csv"]


def test_fetch_metadata_gets_every_file_once(mirror, tmp_path):
    paths = fetch_metadata(mirror.url, tmp_path, verify=False)
    assert set(paths) == {(f.kind, f.split) for f in V6_FILES}
    stamp = paths[("boxes", "train")].stat().st_mtime_ns
    fetch_metadata(mirror.url, tmp_path, verify=False)
    assert paths[("boxes", "train")].stat().st_mtime_ns == stamp


def test_read_boxes_keeps_only_requested_labels_in_both_layouts(mirror):
    train = read_boxes(mirror.root / "v6" / "oidv6-train-annotations-bbox.csv", [HAMBURGER])
    assert train.num_rows > 0
    assert set(train.column("LabelName").to_pylist()) == {HAMBURGER}
    test = read_boxes(mirror.root / "v5" / "test-annotations-bbox.csv", [HAMBURGER, CAR])
    assert set(test.column("LabelName").to_pylist()) == {HAMBURGER, CAR}
    assert test.column_names == train.column_names

"""A changed upstream file replaces the verified copy only once it is verified too."""

from __future__ import annotations

import logging
import shutil

import pytest
import requests

from flows.openimages import cache
from flows.openimages.csvread import MetadataError
from flows.openimages.fetch import read_stamp, rejected_path, transient
from flows.openimages.metadata import Metadata
from flows.openimages.select import Filters, select_boxes
from flows.servers.mirror import StaticHTTP
from tests.conftest import SAMPLE

BOXES = "v5/validation-annotations-bbox.csv"
IMAGES = "2018_04/validation/validation-images-with-rotation.csv"


@pytest.fixture
def upstream(tmp_path):
    root = tmp_path / "upstream"
    shutil.copytree(SAMPLE / "openimages", root)
    with StaticHTTP(root) as server:
        yield server


def store(server, root, **options) -> Metadata:
    return Metadata(server.url, root, splits=("validation",), **options)


def truncate_mid_line(path):
    body = path.read_bytes()
    cut = body.rindex(b"\n", 0, len(body) - 1) + 25  # inside the last line, before its fields
    path.write_bytes(body[:cut])


def cut_a_row_short(path):
    lines = path.read_text().splitlines(keepends=True)
    lines[10] = lines[10][:30] + "\n"
    path.write_text("".join(lines))


def corrupt_a_value(path):
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[10].split(",")
    fields[4] = "left"  # XMin, a float column
    lines[10] = ",".join(fields)
    path.write_text("".join(lines))


def cut_inside_the_last_field(path):
    path.write_bytes(path.read_bytes()[:-1].rstrip(b"0123456789") + b"0")  # still 13 columns


BREAKS = {"truncated": (truncate_mid_line, "no newline (truncated file?)"),
          "short-row": (cut_a_row_short, "line 11: expected 13 columns, got 3"),
          "malformed": (corrupt_a_value, "left"),
          "cut-last-field": (cut_inside_the_last_field, "no newline")}


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("broken", BREAKS)
def test_a_broken_new_version_keeps_the_verified_copy(upstream, tmp_path, caplog, broken,
                                                      use_cache):
    root = tmp_path / "meta"
    first = store(upstream, root, use_cache=use_cache).refresh()
    dest = first.files[("boxes", "validation")]
    good, stamp = dest.read_bytes(), read_stamp(dest)
    onto = first.ontology()
    before = select_boxes(first, onto, ["Hamburger"], Filters())
    breaker, reason = BREAKS[broken]
    breaker(upstream.root / BOXES)

    with caplog.at_level(logging.WARNING):
        again = store(upstream, root, use_cache=use_cache).refresh()
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "validation-annotations-bbox.csv" in warning[0]
    assert warning[0].startswith(f"validation-annotations-bbox.csv from {upstream.url}/{BOXES}: ")
    assert reason in warning[0] and "still using the verified copy" in warning[0]
    assert dest.read_bytes() == good and read_stamp(dest) == stamp
    assert not dest.with_name(dest.name + ".part").exists()
    if use_cache:
        assert cache.is_fresh(again.cache_path("boxes", "validation"), stamp)
    assert select_boxes(again, onto, ["Hamburger"], Filters()).equals(before)

    # The rejected version is remembered: later runs only ask whether it changed.
    upstream.faults.requests.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        store(upstream, root, use_cache=use_cache).refresh()
    assert {m for m, _, _ in upstream.faults.requests} == {"HEAD"}
    assert "failed verification" in caplog.text
    assert store(upstream, root, check_upstream=False, use_cache=use_cache).refresh()

    # A repaired upstream is taken at once.
    fixed = good.replace(b"xclick", b"activemil", 1)
    (upstream.root / BOXES).write_bytes(fixed)
    store(upstream, root, use_cache=use_cache).refresh()
    assert dest.read_bytes() == fixed and not rejected_path(dest).exists()


def test_without_a_verified_copy_a_broken_file_fails_in_one_line(upstream, tmp_path):
    cut_a_row_short(upstream.root / IMAGES)
    root = tmp_path / "meta"
    with pytest.raises(MetadataError) as error:
        store(upstream, root).refresh()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("validation-images-with-rotation.csv from http://127.0.0.1")
    assert "expected 12 columns, got" in message and ".part" not in message
    assert not (root / IMAGES).exists() and not (root / (IMAGES + ".part")).exists()
    assert not (root / "cache").exists() or not list((root / "cache").rglob("images-*"))


def test_a_broken_hierarchy_from_a_mirror_is_refused(upstream, tmp_path):
    hierarchy = upstream.root / "2018_04" / "bbox_labels_600_hierarchy.json"
    hierarchy.write_bytes(hierarchy.read_bytes()[:-40])
    with pytest.raises(MetadataError, match=r"hierarchy\.json from .*not valid JSON"):
        store(upstream, tmp_path / "meta").refresh(kinds=("classes", "hierarchy"))


def test_a_short_body_is_a_network_error_to_retry(upstream, tmp_path):
    root = tmp_path / "meta"
    store(upstream, root).refresh()
    dest = root / BOXES
    good = dest.read_bytes()
    (upstream.root / BOXES).write_bytes(good.replace(b"xclick", b"activemil", 1))
    upstream.faults.cut_after["/" + BOXES] = 500
    with pytest.raises(requests.RequestException) as error:
        store(upstream, root).refresh()
    assert transient(error.value)
    assert dest.read_bytes() == good
    store(upstream, root).refresh()  # resumes and verifies
    assert b"activemil" in dest.read_bytes()


def test_only_network_errors_and_server_errors_are_transient():
    def http_error(status):
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(response=response)

    assert transient(requests.ConnectionError("reset"))
    assert transient(requests.Timeout("slow"))
    assert transient(http_error(503)) and transient(http_error(429))
    assert not transient(http_error(404)) and not transient(http_error(403))
    assert not transient(MetadataError("x.csv: line 3: expected 13 columns, got 4"))
    assert not transient(ValueError("unknown Open Images class"))
    assert not transient(None)


def test_a_local_copy_damaged_since_says_how_to_recover(upstream, tmp_path):
    root = tmp_path / "meta"
    store(upstream, root, use_cache=False).refresh()
    cut_a_row_short(root / BOXES)  # the stamp still vouches for it
    with pytest.raises(MetadataError, match=f"line 11: .*; delete {root / BOXES} to fetch it"):
        store(upstream, root).refresh()
    (root / BOXES).unlink()
    store(upstream, root).refresh()
    assert read_stamp(root / BOXES).size == (upstream.root / BOXES).stat().st_size

"""A release's metadata through the local mirror: file sets, cache and CSV paths agree."""

import pandas as pd
import pytest

from flows.openimages.metadata import Metadata
from flows.openimages.releases import release_files
from flows.openimages.select import Filters, select_boxes


def test_release_file_sets():
    v6 = {(f.kind, f.split): f.path for f in release_files("v6")}
    assert v6[("boxes", "train")] == "v6/oidv6-train-annotations-bbox.csv"
    assert v6[("boxes", "test")] == "v5/test-annotations-bbox.csv"
    assert {f.kind for f in release_files("2018_04")} == {"boxes", "images", "classes",
                                                          "hierarchy"}
    assert [f.split for f in release_files("v7", ("test",)) if f.kind == "boxes"] == ["test"]
    with pytest.raises(ValueError, match="unknown Open Images version 'v9'; known: v4"):
        release_files("v9")
    with pytest.raises(ValueError, match="unknown split"):
        release_files("v6", ("training",))


@pytest.fixture(scope="module")
def stores(mirror, tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    cached = Metadata(mirror.url, root).refresh()
    streamed = Metadata(mirror.url, root, use_cache=False).refresh()
    return cached, streamed


def test_cache_and_csv_give_the_same_selection(stores):
    cached, streamed = stores
    onto = cached.ontology()
    a = select_boxes(cached, onto, ["Hamburger", "Sandwich"], Filters())
    b = select_boxes(streamed, onto, ["Hamburger", "Sandwich"], Filters())
    pd.testing.assert_frame_equal(a, b)
    assert set(a.Subset) == {"train", "validation", "test"}
    assert a.OriginalURL.notna().all()


def test_label_counts_come_from_the_cache(stores):
    cached, _ = stores
    counts = cached.label_counts()
    assert counts["/m/0cdn1"] > 50 and "/m/01g317" in counts


def test_a_second_refresh_only_asks_upstream(mirror, stores):
    cached, _ = stores
    mirror.faults.requests.clear()
    cached.refresh()
    assert {method for method, _, _ in mirror.faults.requests} == {"HEAD"}


def test_a_cache_of_the_previous_format_is_rebuilt(mirror, stores, tmp_path):
    import json

    import pyarrow.parquet as pq

    from flows.openimages import cache

    _, streamed = stores
    store = Metadata(mirror.url, tmp_path).refresh()
    path = store.cache_path("boxes", "train")
    # Format 1 held no BoxKey and sorted rows by label only.
    pq.write_table(pq.read_table(path).drop_columns(["BoxKey"]).sort_by("LabelName"), path)
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "format": 1}))
    old = cache.boxes_from_cache(path, ["/m/0cdn1"])  # read directly, ids are computed
    assert old["BoxKey"].to_pylist() == cache.box_numbers(old).tolist()
    store.refresh()
    assert cache.cache_info(path)["format"] == cache.FORMAT == 2
    assert "BoxKey" in pq.read_schema(path).names
    onto = store.ontology()
    pd.testing.assert_frame_equal(
        select_boxes(store, onto, ["Hamburger", "Sandwich"], Filters()),
        select_boxes(streamed, onto, ["Hamburger", "Sandwich"], Filters()))

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

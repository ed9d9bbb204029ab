"""Class selection on generated boxes: every filter, limits by image, ontology options."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.openimages.csvread import BOX_COLUMNS, BOX_TYPES
from flows.openimages.ontology import load_ontology
from flows.openimages.select import (
    EmptySelection,
    Filters,
    box_ids,
    select_batches,
    select_boxes,
    select_table,
    summary,
    write_selection,
)
from tests.test_ontology import META

HAMBURGER, SANDWICH, SUBMARINE, CAR = "/m/0cdn1", "/m/0l515", "/m/06pcq", "/m/0k4j"


class FakeSource:
    """Boxes and image info held in memory, in the cache's schema."""

    def __init__(self, rows: list[dict]):
        frame = pd.DataFrame(rows)
        for column, default in [("Source", "xclick"), ("XMin", 0.1), ("XMax", 0.6), ("YMin", 0.1),
                                ("YMax", 0.6), ("IsOccluded", 0), ("IsTruncated", 0),
                                ("IsGroupOf", 0), ("IsDepiction", 0), ("IsInside", 0)]:
            frame[column] = frame[column].fillna(default) if column in frame else default
        self.table = pa.Table.from_pandas(frame[BOX_COLUMNS], preserve_index=False).cast(
            pa.schema([(c, BOX_TYPES[c]) for c in BOX_COLUMNS]))

    def boxes(self, mids):
        mask = pa.compute.is_in(self.table["LabelName"], value_set=pa.array(mids))
        return {"train": self.table.filter(mask)}

    def images(self, ids):
        return pa.table({"ImageID": ids, "OriginalURL": ids, "OriginalLandingURL": ids,
                         "Thumbnail300KURL": ids, "Rotation": [0.0] * len(ids),
                         "OriginalMD5": ids, "OriginalSize": [1] * len(ids), "License": ids,
                         "Author": ids, "AuthorProfileURL": ids})


@pytest.fixture(scope="module")
def onto():
    return load_ontology(META / "v5" / "class-descriptions-boxable.csv",
                         META / "2018_04" / "bbox_labels_600_hierarchy.json")


def img(n: int) -> str:
    return f"{n:016x}"


def test_each_flag_rule_treats_unknown_as_not_flagged(onto):
    rows = [{"ImageID": img(i), "LabelName": CAR, "IsOccluded": flag}
            for i, flag in enumerate([1, 0, -1])]
    source = FakeSource(rows)
    def kept(**rules):
        return sorted(select_boxes(source, onto, ["Car"], Filters(**rules)).IsOccluded)
    assert kept(occluded="any") == [-1, 0, 1]
    assert kept(occluded="exclude") == [-1, 0]
    assert kept(occluded="only") == [1]


@pytest.mark.parametrize("option,column", [("depiction", "IsDepiction"), ("group_of", "IsGroupOf"),
                                           ("truncated", "IsTruncated"), ("inside", "IsInside")])
def test_every_flag_has_a_rule(onto, option, column):
    source = FakeSource([{"ImageID": img(i), "LabelName": CAR, column: i} for i in (0, 1)])
    assert select_boxes(source, onto, ["Car"], Filters(**{option: "only"}))[column].tolist() == [1]
    assert select_boxes(source, onto, ["Car"], Filters(**{option: "exclude"}))[column].tolist() == [
        0]


def test_depictions_and_groups_are_excluded_by_default(onto):
    source = FakeSource([{"ImageID": img(0), "LabelName": CAR, "IsDepiction": 1},
                         {"ImageID": img(1), "LabelName": CAR, "IsGroupOf": 1},
                         {"ImageID": img(2), "LabelName": CAR}])
    assert select_boxes(source, onto, ["Car"], Filters()).ImageID.tolist() == [img(2)]


def test_source_and_minimum_box_size(onto):
    source = FakeSource([{"ImageID": img(0), "LabelName": CAR, "Source": "activemil"},
                         {"ImageID": img(1), "LabelName": CAR, "XMax": 0.12},
                         {"ImageID": img(2), "LabelName": CAR}])
    assert select_boxes(source, onto, ["Car"], Filters(source="xclick")).ImageID.tolist() == [
        img(1), img(2)]
    assert select_boxes(source, onto, ["Car"], Filters(min_box_fraction=0.05)).ImageID.tolist() == [
        img(0), img(2)]


def test_nesting_exclusion_and_relabelling(onto):
    source = FakeSource([{"ImageID": img(i), "LabelName": label}
                         for i, label in enumerate([HAMBURGER, SANDWICH, SUBMARINE])])
    both = select_boxes(source, onto, ["Hamburger", "Sandwich"], Filters())
    assert dict(zip(both.LabelName, both.Class, strict=True)) == {
        HAMBURGER: "Hamburger", SANDWICH: "Sandwich", SUBMARINE: "Sandwich"}
    without = select_boxes(source, onto, ["Sandwich"], Filters(exclude_classes=("Hamburger",)))
    assert set(without.LabelName) == {SANDWICH, SUBMARINE}
    food = select_boxes(source, onto, ["Food"], Filters())
    assert set(food.Class) == {"Food"}
    own = select_boxes(source, onto, ["Food"], Filters(relabel=False))
    assert set(own.Class) == {"Hamburger", "Sandwich", "Submarine sandwich"}
    with pytest.raises(ValueError, match="both requested and excluded"):
        select_boxes(source, onto, ["Hamburger"], Filters(exclude_classes=("Sandwich",)))


def test_limits_keep_whole_images_and_are_seeded(onto):
    rows = [{"ImageID": img(i), "LabelName": CAR, "XMin": x} for i in range(40)
            for x in (0.1, 0.2)]
    rows += [{"ImageID": img(100 + i), "LabelName": HAMBURGER} for i in range(10)]
    source = FakeSource(rows)
    picked = select_boxes(source, onto, ["Car", "Hamburger"], Filters(max_images_per_class=5))
    counts = summary(picked).set_index("Class")
    assert counts.loc["Car", "images"] == 5 and counts.loc["Car", "boxes"] == 10
    again = select_boxes(source, onto, ["Car", "Hamburger"], Filters(max_images_per_class=5))
    other = select_boxes(source, onto, ["Car", "Hamburger"],
                         Filters(max_images_per_class=5, seed=1))
    assert picked.ImageID.tolist() == again.ImageID.tolist()
    assert picked.ImageID.tolist() != other.ImageID.tolist()
    balanced = summary(select_boxes(source, onto, ["Car", "Hamburger"], Filters(balance=True)))
    assert balanced.images.tolist() == [10, 10]


def test_an_image_with_two_classes_counts_for_both(onto):
    rows = [{"ImageID": img(i), "LabelName": label} for i in range(6) for label in (CAR, HAMBURGER)]
    picked = select_boxes(FakeSource(rows), onto, ["Car", "Hamburger"],
                          Filters(max_images_per_class=3))
    assert summary(picked).images.tolist() == [3, 3]
    assert picked.ImageID.nunique() == 3


def test_an_empty_selection_says_why(onto):
    source = FakeSource([{"ImageID": img(0), "LabelName": CAR, "IsDepiction": 1}])
    with pytest.raises(EmptySelection, match="no boxes of \\['Car'\\]"):
        select_boxes(source, onto, ["Car"], Filters())


def reference_selection(table: pa.Table, info: pa.Table, mids: list[str]) -> pd.DataFrame:
    """The same filter the pandas way, with the BoxIDs as every earlier release wrote them."""
    boxes = table.to_pandas()
    boxes = boxes[boxes.LabelName.isin(mids) & (boxes.IsDepiction != 1) & (boxes.IsGroupOf != 1)]
    boxes = boxes.merge(info.to_pandas(), on="ImageID", how="left")
    keys = (boxes.ImageID + "|" + boxes.LabelName + "|" + boxes.XMin.map("{:.6f}".format) + "|"
            + boxes.XMax.map("{:.6f}".format) + "|" + boxes.YMin.map("{:.6f}".format) + "|"
            + boxes.YMax.map("{:.6f}".format))
    boxes["BoxID"] = keys.map(lambda k: hashlib.sha1(k.encode()).hexdigest()[:10])
    return boxes.sort_values(["ImageID", "BoxID"], kind="stable").reset_index(drop=True)


def test_a_big_class_matches_pandas_row_for_row_with_the_same_box_ids(onto):
    rng = np.random.default_rng(5)
    n = 60_000
    # Coordinates of every kind: random float32, ties at the sixth decimal (k/128), 0 and 1.
    x0 = rng.random(n, dtype=np.float32) * 0.5
    x0[:2000] = (2 * rng.integers(0, 40, 2000) + 1) / 128
    x0[2000:2100] = 0.0
    x1 = np.minimum(x0 + np.float32(0.25), np.float32(1.0))
    rows = {"ImageID": [img(i) for i in rng.integers(0, 20_000, n)],
            "LabelName": rng.choice([CAR, HAMBURGER, SANDWICH], n, p=[0.9, 0.05, 0.05]),
            "XMin": x0, "XMax": x1, "YMin": x0[::-1].copy(), "YMax": x1[::-1].copy(),
            "IsDepiction": rng.integers(-1, 2, n), "IsGroupOf": rng.integers(-1, 2, n)}
    source = FakeSource(pd.DataFrame(rows).to_dict("records"))
    got = select_boxes(source, onto, ["Car"], Filters(include_subclasses=False))
    info = source.images(pc.unique(source.table["ImageID"]))
    want = reference_selection(source.table, info, [CAR])
    assert len(got) > 20_000
    pd.testing.assert_frame_equal(got[list(want.columns)], want, check_dtype=False)
    assert (got.Class == "Car").all() and (got.Subset == "train").all()


def test_box_ids_are_the_ones_crops_were_named_after():
    boxes = pa.table({"ImageID": ["000a1249af2bc5f0", "0000048549557964"],
                      "LabelName": ["/m/0cdn1", "/m/0l515"],
                      "XMin": pa.array([0.0078125, 0.1], pa.float32()),
                      "XMax": pa.array([0.5, 1.0], pa.float32()),
                      "YMin": pa.array([0.25, 0.333333], pa.float32()),
                      "YMax": pa.array([0.75, 0.999999], pa.float32())})
    expected = [hashlib.sha1(k.encode()).hexdigest()[:10] for k in (
        "000a1249af2bc5f0|/m/0cdn1|0.007812|0.500000|0.250000|0.750000",
        "0000048549557964|/m/0l515|0.100000|1.000000|0.333333|0.999999")]
    assert box_ids(boxes).to_pylist() == expected
    assert box_ids(boxes.to_pandas()).to_pylist() == expected


def test_the_selection_runs_without_importing_pandas_itself():
    # pyarrow may load pandas on its own; the selection code must not need it.
    done = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "import flows.openimages.select as s\n"
        "print('pandas' in {n.split('.')[0] for n in sys.modules})")],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_batches_of_any_size_make_the_same_selection_and_file(onto, tmp_path):
    rows = [{"ImageID": img(i % 97), "LabelName": [CAR, HAMBURGER, SUBMARINE][i % 3],
             "XMin": (i % 50) / 100} for i in range(1000)]
    source = FakeSource(rows)
    whole = select_table(source, onto, ["Car", "Sandwich"], Filters())
    batches = list(select_batches(source, onto, ["Car", "Sandwich"], Filters(), rows=7))
    assert max(b.num_rows for b in batches) == 7
    assert pa.concat_tables(batches).equals(whole)
    dest = tmp_path / "selection.parquet"
    assert write_selection(iter(batches), dest) == whole.num_rows
    assert pq.read_table(dest).equals(whole)


def test_a_selection_that_fails_midway_leaves_no_file(onto, tmp_path):
    source = FakeSource([{"ImageID": img(i), "LabelName": CAR} for i in range(20)])

    def broken():
        yield from select_batches(source, onto, ["Car"], Filters(), rows=5)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_selection(broken(), tmp_path / "selection.parquet")
    assert list(tmp_path.iterdir()) == []


class IndexedSource(FakeSource):
    """A source whose image lookups are cheap, as the cache's are: asked once per batch."""

    indexed = True

    def __init__(self, rows):
        super().__init__(rows)
        self.lookups = []

    def image_rows(self, keys):
        self.lookups.append(len(keys))
        return super().images(pa.array([f"{k:016x}" for k in keys.tolist()]))

    def images(self, ids):
        raise AssertionError("an indexed source is asked for rows, not for all images at once")


def test_an_indexed_source_is_asked_for_the_images_of_one_batch_at_a_time(onto):
    rows = [{"ImageID": img(i % 97), "LabelName": [CAR, HAMBURGER][i % 2],
             "XMin": (i % 50) / 100} for i in range(1000)]
    whole = select_table(FakeSource(rows), onto, ["Car", "Hamburger"], Filters())
    source = IndexedSource(rows)
    batches = list(select_batches(source, onto, ["Car", "Hamburger"], Filters(), rows=100))
    assert pa.concat_tables(batches).equals(whole)
    assert source.lookups == [100] * 10  # the image keys of each batch's boxes


def test_boxes_with_stored_ids_in_any_order_make_the_same_selection(onto):
    rows = [{"ImageID": img(i % 31), "LabelName": [CAR, HAMBURGER][i % 2],
             "XMin": (i % 50) / 100} for i in range(300)]
    plain = FakeSource(rows)
    stored = FakeSource(rows)
    table = stored.table.append_column("BoxKey", pa.array(
        [int(b, 16) for b in box_ids(stored.table).to_pylist()], pa.uint64()))
    stored.table = table.take(pa.array(np.random.default_rng(0).permutation(300)))
    assert select_table(stored, onto, ["Car", "Hamburger"], Filters()).equals(
        select_table(plain, onto, ["Car", "Hamburger"], Filters()))


@pytest.mark.parametrize("rows", [1, 7, 100, 5000])
def test_the_tally_of_a_written_selection_agrees_with_pandas(rows):
    from flows.pipeline.selection import Tally

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"ImageID": [img(i) for i in np.sort(rng.integers(0, 300, 2000))],
                          "Class": rng.choice(["Car", "Hamburger", "Sandwich"], 2000)})
    frame.loc[:40, "ImageID"] = img(0)  # an image whose boxes span several tables
    frame["ClassMID"] = frame.Class.map({"Car": CAR, "Hamburger": HAMBURGER,
                                         "Sandwich": SANDWICH})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    tally = Tally()
    passed = list(tally.count(table.slice(i, rows) for i in range(0, len(frame), rows)))
    assert pa.concat_tables(passed).equals(table)
    want = frame.groupby(["Class", "ClassMID"]).agg(
        boxes=("ImageID", "size"), images=("ImageID", "nunique")).reset_index()
    assert tally.table().to_pandas().equals(want)
    assert tally.distinct_images == frame.ImageID.nunique()

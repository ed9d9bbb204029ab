"""The columnar cache: same rows as the CSVs, laid out so few classes read little, kept fresh."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.openimages import cache, csvread
from flows.openimages.boxid import box_numbers
from flows.openimages.csvread import (
    IMAGE_COLUMNS,
    IMAGE_TYPES,
    MetadataError,
    image_keys,
    read_boxes,
    read_images,
    stream,
)
from flows.openimages.fetch import Stamp
from tests.csvfiles import box_row, write_boxes, write_images

LABELS = [f"/m/{c}{n}" for c in "abcdefgh" for n in range(5)]


def stamp_of(path):
    return Stamp(url="file://x", size=path.stat().st_size, md5=str(path.stat().st_mtime_ns))


@pytest.fixture
def box_csv(tmp_path):
    rows = [box_row(f"{i:016x}", LABELS[(i * 7) % len(LABELS)], flags=(i % 3 - 1, 0, 0, 0, 0))
            for i in range(4000)]
    rows.append(box_row("00000000000000aa", "/m/a0", box=(0.5, 0.4, 0.1, 0.2)))  # XMin > XMax
    rows.append(box_row("00000000000000ab", "/m/a0", box=(0.1, 1.4, 0.1, 0.2)))  # outside 0..1
    return write_boxes(tmp_path / "boxes.csv", rows)


def test_box_cache_holds_the_csv_rows_sorted_by_label(box_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "ROW_GROUP", 100)
    dest = tmp_path / "boxes.parquet"
    info = cache.build_box_cache(box_csv, stamp_of(box_csv), dest)
    assert info["rows"] == 4000 and info["skipped_invalid_boxes"] == 2
    assert sum(info["label_counts"].values()) == 4000
    labels = pq.read_table(dest, columns=["LabelName"]).column(0).to_pylist()
    assert labels == sorted(labels)
    wanted = ["/m/c3", "/m/h1"]
    from_cache = cache.boxes_from_cache(dest, wanted).sort_by([("ImageID", "ascending")])
    streamed, skipped = read_boxes(box_csv, wanted)
    assert skipped == 0
    streamed = streamed.sort_by([("ImageID", "ascending")])
    assert from_cache.drop_columns(["BoxKey"]).equals(streamed)
    # The stored box ids are the ones a selection computes from the CSV's rows.
    assert from_cache["BoxKey"].to_pylist() == box_numbers(streamed).tolist()
    assert from_cache.schema.field("IsOccluded").type == pa.int8()
    # Selecting two labels of forty reads a handful of the forty row groups.
    meta = pq.ParquetFile(dest).metadata
    column = meta.schema.names.index("LabelName")
    hit = [g for g in range(meta.num_row_groups)
           if any(meta.row_group(g).column(column).statistics.min <= w
                  <= meta.row_group(g).column(column).statistics.max for w in wanted)]
    assert meta.num_row_groups == 40 and len(hit) <= 4


def test_image_cache_looks_up_scattered_ids(tmp_path):
    ids = [f"{(i * 2654435761) % 2**64:016x}" for i in range(3000)]
    csv = write_images(tmp_path / "images.csv", ids)
    dest = tmp_path / "images.arrow"
    assert cache.build_image_cache(csv, stamp_of(csv), dest)["rows"] == 3000
    wanted = pa.array([ids[5], ids[2999], ids[17], "ffffffffffffffff"])
    found = cache.images_from_cache(dest, wanted).sort_by("ImageID")
    assert found.equals(read_images(csv, wanted).sort_by("ImageID"))
    assert found.num_rows == 3


def test_a_changed_source_makes_the_cache_stale(box_csv, tmp_path):
    dest = tmp_path / "boxes.parquet"
    first = stamp_of(box_csv)
    cache.build_box_cache(box_csv, first, dest)
    assert cache.is_fresh(dest, first)
    assert not cache.is_fresh(dest, Stamp("file://x", first.size + 1, first.md5))
    assert not cache.is_fresh(dest, Stamp("file://x", first.size, "other"))


def test_a_short_row_is_an_error_naming_file_and_line(tmp_path):
    rows = [box_row(f"{i:016x}", "/m/a0") for i in range(10)]
    rows[6] = rows[6].rsplit(",", 3)[0]  # truncated mid-row
    csv = write_boxes(tmp_path / "broken.csv", rows)
    with pytest.raises(MetadataError, match=r"broken.csv: line 8: expected 21 columns, got 18"):
        cache.build_box_cache(csv, stamp_of(csv), tmp_path / "b.parquet")
    assert not (tmp_path / "b.parquet").exists()


def test_image_ids_must_be_hex():
    assert image_keys(pa.array(["000000000000000f", "ffffffffffffffff"])).tolist() == [
        15, 2**64 - 1]
    with pytest.raises(MetadataError, match="16 hexadecimal"):
        image_keys(pa.array(["not-an-image-id!"]))


def test_boxes_from_cache_reads_only_the_row_groups_of_the_labels(box_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "ROW_GROUP", 100)
    dest = tmp_path / "boxes.parquet"
    cache.build_box_cache(box_csv, stamp_of(box_csv), dest)
    read = []
    original = pq.ParquetFile.read_row_groups

    def recorded(self, groups, **options):
        read.extend(groups)
        return original(self, groups, **options)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", recorded)
    found = cache.boxes_from_cache(dest, ["/m/h1", "/m/c3"])
    assert set(found["LabelName"].to_pylist()) == {"/m/c3", "/m/h1"}
    assert found.num_rows == 200 and 2 <= len(read) <= 4


@pytest.mark.parametrize("style", ["plain", "quoted", "crlf", "no final newline"])
def test_image_lookup_scans_bytes_and_agrees_with_a_full_parse(tmp_path, style):
    ids = [f"{(i * 2654435761) % 2**64:016x}" for i in range(2000)]
    csv = write_images(tmp_path / "images.csv", ids)
    text = csv.read_text()
    if style == "quoted":  # every field in quotes, as some CSV writers do
        text = "\n".join([text.splitlines()[0]] + [",".join(f'"{f}"' for f in line.split(","))
                                                    for line in text.splitlines()[1:]]) + "\n"
    elif style == "crlf":
        text = text.replace("\n", "\r\n")
    elif style == "no final newline":
        text = text.rstrip("\n")
    csv.write_text(text)
    wanted = pa.array([ids[0], ids[1999], ids[700], "ffffffffffffffff"])
    scanned = read_images(csv, wanted).sort_by("ImageID")
    parsed = pa.Table.from_batches(
        list(stream(csv, IMAGE_COLUMNS, IMAGE_TYPES))).sort_by("ImageID")
    assert scanned.num_rows == 3
    assert scanned.equals(parsed.filter(pc.is_in(parsed["ImageID"], value_set=wanted)))


def test_image_lookup_parses_everything_when_a_record_spans_lines(tmp_path, monkeypatch):
    ids = [f"{i:016x}" for i in range(50)]
    csv = write_images(tmp_path / "images.csv", ids)
    csv.write_text(csv.read_text().replace("title 7,", '"a title\nover two lines",'))
    scans = []
    monkeypatch.setattr(csvread, "stream", lambda *a, **k: scans.append(a) or stream(*a, **k))
    found = read_images(csv, pa.array([ids[7], ids[8]])).sort_by("ImageID")
    assert found["Title"].to_pylist() == ["a title\nover two lines", "title 8"]
    assert scans  # the byte scan saw the open quote and handed over to the parser


def test_a_build_in_many_small_passes_writes_the_same_cache(box_csv, tmp_path, monkeypatch):
    ids = [f"{(i * 2654435761) % 2**64:016x}" for i in range(3000)]
    image_csv = write_images(tmp_path / "images.csv", ids)

    def build(name):
        return (cache.build_box_cache(box_csv, stamp_of(box_csv), tmp_path / f"{name}.parquet"),
                cache.build_image_cache(image_csv, stamp_of(image_csv), tmp_path / f"{name}.arrow"))

    whole = build("a")
    passes = []
    original = cache._passes
    monkeypatch.setattr(cache, "_passes", lambda spool, masks: passes.append(len(masks))
                        or original(spool, masks))
    monkeypatch.setattr(cache, "PASS_BYTES", 20_000)  # a few hundred rows a pass
    assert build("b") == whole
    assert min(passes) > 5
    assert pq.read_table(tmp_path / "b.parquet").equals(pq.read_table(tmp_path / "a.parquet"))
    read = [pa.ipc.open_file(pa.memory_map(str(tmp_path / f"{n}.arrow"))).read_all()
            for n in "ab"]
    assert read[1].equals(read[0]) and read[0]["Key"].to_pylist() == sorted(
        int(i, 16) for i in ids)


def test_image_rows_come_one_per_box_in_order_with_nulls_for_unknown_images(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(cache, "ROW_GROUP", 100)  # thirty mapped batches
    ids = sorted(f"{(i * 2654435761) % 2**64:016x}" for i in range(1, 3001))
    csv = write_images(tmp_path / "images.csv", ids)
    dest = tmp_path / "images.arrow"
    cache.build_image_cache(csv, stamp_of(csv), dest)
    known = image_keys(pa.array(ids))
    # Repeats (boxes of one image), unknown keys before, between and after the batches.
    ends = np.array([0, 2**64 - 1], dtype=np.uint64)
    wanted = np.sort(np.concatenate([known[::7], known[::7], known[1500:1700], ends,
                                     known[[99, 100, 2000]] + np.uint64(1)]))
    got = cache.image_rows_from_cache(dest, wanted)
    by_id = {r["ImageID"]: r for r in read_images(csv, pa.array(ids)).to_pylist()}
    want = [by_id.get(f"{k:016x}") for k in wanted.tolist()]
    assert got.num_rows == len(wanted) and sum(w is None for w in want) == 5
    assert got.to_pylist() == [w or dict.fromkeys(got.column_names) for w in want]
    assert cache.image_rows_from_cache(dest, np.zeros(0, np.uint64)).num_rows == 0


@pytest.mark.parametrize("block", [37, 4096])
def test_byte_scans_agree_with_a_full_parse_whatever_the_block_size(tmp_path, monkeypatch,
                                                                     block):
    # 37 bytes: shorter than every line, so the reused buffer grows and carries lines over.
    monkeypatch.setattr(csvread, "SCAN_BLOCK", block)
    ids = [f"{(i * 2654435761) % 2**64:016x}" for i in range(300)]
    images = write_images(tmp_path / "images.csv", ids)
    images.write_text(images.read_text().rstrip("\n"))  # no newline after the last line
    wanted = pa.array([ids[0], ids[150], ids[299]])
    parsed = pa.Table.from_batches(list(stream(images, IMAGE_COLUMNS, IMAGE_TYPES)))
    assert read_images(images, wanted).sort_by("ImageID").equals(
        parsed.filter(pc.is_in(parsed["ImageID"], value_set=wanted)).sort_by("ImageID"))
    boxes = write_boxes(tmp_path / "boxes.csv", [box_row(i, LABELS[n % 7])
                                                 for n, i in enumerate(ids)])
    found, _ = read_boxes(boxes, ["/m/a1", "/m/b0"])
    assert sorted(found["ImageID"].to_pylist()) == sorted(
        i for n, i in enumerate(ids) if LABELS[n % 7] in ("/m/a1", "/m/b0"))

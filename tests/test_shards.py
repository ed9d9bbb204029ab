"""The dataset as Parquet shards: immutable, grown by new shards, compacted when it pays, and
readable as it is by pandas, pyarrow and DuckDB."""

import json

import duckdb
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from flows.openimages.compaction import compact
from flows.openimages.crop import CropOptions
from flows.openimages.cropjobs import run_chunk
from flows.openimages.dataset import build_dataset
from flows.openimages.shards import read_images

LIVE = """SELECT count(*), count(DISTINCT s.BoxID)
FROM read_parquet('{shards}/*.parquet', filename = true, file_row_number = true) s
JOIN '{table}' t ON parse_filename(s.filename) = t.Shard AND s.file_row_number = t.Row"""


def photos(folder, ids):
    """A downloads manifest of small JPEG photos."""
    rows = []
    for n, image_id in enumerate(ids):
        path = folder / f"{image_id}.jpg"
        Image.new("RGB", (64, 48), (n * 7 % 255, 90, 200)).save(path)
        rows.append({"ImageID": image_id, "Status": "ok", "Path": str(path),
                     "Bytes": path.stat().st_size})
    return pd.DataFrame(rows)


def selection(ids):
    """Two boxes per photo, of two classes, with every column the crops table keeps."""
    return pd.DataFrame([{
        "BoxID": f"{i}-{n}", "ImageID": i, "Class": "Car" if n else "Bus",
        "ClassMID": "/m/car" if n else "/m/bus", "LabelName": "/m/car" if n else "/m/bus",
        "XMin": 0.5 * n, "XMax": 0.5 * n + 0.5, "YMin": 0.0, "YMax": 1.0, "IsOccluded": 0,
        "IsTruncated": 0, "IsInside": 0, "Rotation": 0.0, "Author": f"author {i}",
        "License": "https://creativecommons.org/licenses/by/2.0/",
        "OriginalLandingURL": f"https://example.invalid/{i}"} for i in ids for n in (0, 1)])


def build(tmp_path, ids, **kwargs):
    (tmp_path / "photos").mkdir(exist_ok=True)
    return build_dataset(selection(ids), photos(tmp_path / "photos", ids), tmp_path / "data",
                         CropOptions(size=32), run_chunks=in_process, **kwargs)[0]


def in_process(chunks):
    return [run_chunk(c) for c in chunks]


def stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}


def test_new_crops_go_into_new_shards_and_old_photos_keep_their_splits(tmp_path):
    ids = [f"{n:04x}" for n in range(40)]
    first = build(tmp_path, ids, chunk_images=20)
    shards = tmp_path / "data" / "shards"
    assert len(first) == 80 and first.Shard.nunique() == 2
    before = stamps(shards)
    grown = build(tmp_path, [*ids, "f001", "f002"], chunk_images=20)
    after = stamps(shards)
    assert {k: after[k] for k in before} == before  # old shards untouched
    assert len(after) == 3 and len(grown) == 84
    old = grown.set_index("BoxID").loc[first.BoxID]
    assert old.Split.tolist() == first.Split.tolist()
    assert old.Shard.tolist() == first.Shard.tolist() and old.Row.tolist() == first.Row.tolist()


def test_gone_crops_leave_the_live_table_and_mostly_dead_shards_are_rewritten(tmp_path):
    ids = [f"{n:04x}" for n in range(40)]
    first = build(tmp_path, ids, chunk_images=20)
    shards = tmp_path / "data" / "shards"
    kept = build(tmp_path, ids[:-2], chunk_images=20)  # two photos of the second shard gone
    assert len(kept) == 76 and set(kept.Shard) == set(first.Shard)
    assert len(stamps(shards)) == 2  # recorded as gone, nothing rewritten
    few = build(tmp_path, ids[:25], chunk_images=20)  # the second shard is mostly dead
    assert len(few) == 50 and len(stamps(shards)) == 2
    survivor = few[few.ImageID == ids[24]]
    assert survivor.Shard.iloc[0] not in set(first.Shard)
    assert read_images(shards, survivor.Shard.tolist(), survivor.Row.tolist())[0][:2] == \
        b"\xff\xd8"


def test_small_shards_are_merged_once_enough_have_piled_up(tmp_path):
    ids = [f"{n:04x}" for n in range(9)]
    table = build(tmp_path, ids, chunk_images=1)
    assert table.Shard.nunique() == 1  # nine small shards: merged into one while building
    shards = tmp_path / "data" / "shards"
    assert list(stamps(shards)) == [table.Shard.iloc[0]]
    assert sorted(table.Row) == list(range(18))
    assert compact(table, shards).equals(table)  # one whole shard: left as it is


def test_the_shards_read_with_pandas_duckdb_and_as_a_hugging_face_image_column(tmp_path):
    table = build(tmp_path, [f"{n:04x}" for n in range(6)])
    shards = tmp_path / "data" / "shards"
    frame = pd.read_parquet(shards)
    assert len(frame) == 12 and frame.image[0]["bytes"][:2] == b"\xff\xd8"
    assert set(frame.Split) == set(table.Split) and frame.Author.notna().all()
    counts = duckdb.sql(f"SELECT Class, count(*) AS n FROM '{shards}/*.parquet' "
                        "GROUP BY Class ORDER BY Class").fetchall()
    assert counts == [("Bus", 6), ("Car", 6)]
    # The live rows: the shards joined to the live table on (file, row number).
    live = duckdb.sql(LIVE.format(shards=shards, table=tmp_path / "data" / "crops.parquet"))
    assert live.fetchall() == [(12, 12)]
    schema = pq.read_schema(next(shards.glob("*.parquet")))
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert schema.field("image").type.names == ["bytes", "path"]


def test_boxes_left_out_are_listed_with_why_and_the_selection_is_not_copied(tmp_path):
    ids = [f"{n:04x}" for n in range(6)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "selection.parquet").write_bytes(b"left by an older version")
    (tmp_path / "photos").mkdir()
    found = photos(tmp_path / "photos", ids)
    (tmp_path / "photos" / f"{ids[0]}.jpg").write_bytes(b"not a jpeg")
    boxes = selection(ids)
    boxes.loc[boxes.BoxID == f"{ids[1]}-1", ["XMin", "XMax"]] = [0.5, 0.51]  # 1 px wide
    build_dataset(boxes, found, tmp_path / "data", CropOptions(size=32), run_chunks=in_process)
    skipped = pd.read_parquet(tmp_path / "data" / "skipped.parquet")
    assert list(skipped.columns) == ["ImageID", "BoxID", "Class", "Status", "Error"]
    assert dict(zip(skipped.BoxID, skipped.Status, strict=True)) == {
        f"{ids[0]}-0": "unreadable", f"{ids[0]}-1": "unreadable", f"{ids[1]}-1": "too-small"}
    assert skipped.Error.str.len().gt(0).tolist() == [True, True, False]
    assert not (tmp_path / "data" / "selection.parquet").exists()

    before = (tmp_path / "data" / "skipped.parquet").read_bytes()
    build_dataset(boxes, found, tmp_path / "data", CropOptions(size=32), run_chunks=in_process)
    assert (tmp_path / "data" / "skipped.parquet").read_bytes() == before  # not sent again

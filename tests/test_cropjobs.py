"""Cropping a selection in chunks: reruns reuse what still holds, chunks travel as JSON."""

import io
import json

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from flows.openimages.crop import CropOptions
from flows.openimages.cropjobs import CropChunk, crop_boxes, plan, run_chunk


def scene(path, width=200, height=100):
    image = Image.new("RGB", (width, height), (0, 128, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    image.save(path)
    return path


def selection(ids, rotation=0.0):
    return pd.DataFrame([{"BoxID": f"{i}-{n}", "ImageID": i, "Class": "Car", "XMin": x,
                          "XMax": x + 0.5, "YMin": 0.0, "YMax": 0.5, "Rotation": rotation}
                         for i in ids for n, x in enumerate((0.0, 0.5))])


def manifest(tmp_path, ids):
    rows = []
    for i in ids:
        path = scene(tmp_path / f"{i}.jpg")
        rows.append({"ImageID": i, "Status": "ok", "Path": str(path),
                     "Bytes": path.stat().st_size})
    return pd.DataFrame(rows)


def test_a_rerun_crops_only_what_is_missing_or_changed(tmp_path):
    ids = ["a", "b"]
    found, boxes, out = manifest(tmp_path, ids), selection(ids), tmp_path / "shards"
    first = crop_boxes(boxes, found, out, CropOptions(), run_chunks=in_process,
                       chunk_images=1)
    assert (first.Status == "ok").all() and len(first) == 4
    assert first.Shard.nunique() == 2 and sorted(p.name for p in out.iterdir()) == sorted(
        first.Shard.unique())
    saved = first.drop(columns=["Status", "Error"])  # as the crops table is written
    again = crop_boxes(boxes, found, out, CropOptions(), previous=saved, run_chunks=refuse)
    assert again[["CropPath", "Shard", "Row"]].equals(first[["CropPath", "Shard", "Row"]])
    (out / first.Shard[0]).unlink()  # the shard of image a is gone: a alone is cropped again
    redone = crop_boxes(boxes, found, out, CropOptions(), previous=saved,
                        run_chunks=in_process, chunk_images=1)
    assert set(redone.Shard) == set(first.Shard)  # the same crops: the same content name
    changed = crop_boxes(boxes, found, out, CropOptions(quality=70), previous=saved,
                         run_chunks=in_process)
    assert not set(changed.Shard) & set(first.Shard)


def test_a_shard_holds_the_crops_with_their_rows_and_can_travel_back(tmp_path):
    ids = ["a", "b"]
    boxes = selection(ids).assign(Split="test", Author="ann", License="cc")
    chunks = plan(boxes, manifest(tmp_path, ids).set_index("ImageID"), None, CropOptions(),
                  chunk_images=2)
    report = run_chunk(CropChunk.from_json(json.loads(json.dumps(chunks[0].to_json()))))
    shard = pq.read_table(io.BytesIO(report["shard"])).to_pandas()
    assert [r["Row"] for r in report["rows"]] == [0, 1, 2, 3]
    assert shard.BoxID.tolist() == [r["BoxID"] for r in report["rows"]]
    assert set(shard.Split) == {"test"} and set(shard.Author) == {"ann"}
    assert shard.image[0]["bytes"][:2] == b"\xff\xd8"  # a JPEG
    assert not (tmp_path / "crops").exists()


def test_chunks_hold_whole_images_and_survive_json(tmp_path):
    ids = [f"{n:04d}" for n in range(5)]
    found = manifest(tmp_path, ids).set_index("ImageID")
    chunks = plan(selection(ids, rotation=float("nan")), found, tmp_path / "crops",
                  CropOptions(size=32), chunk_images=2)
    assert [len(c.images) for c in chunks] == [2, 2, 1]
    assert all(len(records) == 2 for c in chunks for _, _, records, _ in c.images)
    travelled = CropChunk.from_json(json.loads(json.dumps(chunks[0].to_json())))
    assert travelled == chunks[0] and travelled.images[0][1] is None  # NaN Rotation: EXIF
    report = run_chunk(travelled)
    assert report["images"] == 2 and [r["Status"] for r in report["rows"]] == ["ok"] * 4


def test_the_default_runner_is_a_process_pool(tmp_path):
    ids = ["a", "b", "c"]
    table = crop_boxes(selection(ids), manifest(tmp_path, ids), tmp_path / "crops",
                       CropOptions(size=32), chunk_images=1)
    assert (table.Status == "ok").all() and len(table) == 6
    assert 0.75 * 32 <= max(table.Width) <= 32  # at least min_detail of the crop size


def in_process(chunks):
    return [run_chunk(c) for c in chunks]


def refuse(chunks):
    raise AssertionError(f"nothing should be cropped again, got {len(chunks)} chunks")

"""The prediction log's writer, store and reader, without a server."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from model.predictions import LOG_SCHEMA, read_feedback, read_log
from service import predlog as predlog_module
from service.config import PredictionLogging
from service.predlog import Answered, PredictionLog, describe
from tests.servicekit import CLASSES, encoded, picture


def upload(tmp_path: Path, seed: int = 0, fmt: str = "PNG") -> Path:
    path = tmp_path / f"up-{seed}.{fmt.lower()}"
    path.write_bytes(encoded(picture(seed), fmt))
    return path


def answered(uploads, endpoint: str = "classify") -> Answered:
    probs = np.random.default_rng(len(uploads)).dirichlet(np.ones(len(CLASSES)), len(uploads))
    return Answered(datetime.now(UTC), endpoint, [uuid.uuid4().hex for _ in uploads],
                    list(uploads), "tiny:1", tuple(CLASSES), probs.astype(np.float32), 12.5)


def writer(tmp_path: Path, **settings) -> PredictionLog:
    base = PredictionLogging(directory=str(tmp_path / "predictions"), part_seconds=3600)
    return PredictionLog(replace(base, **settings))


def test_rows_go_to_parts_of_n_rows_and_the_rest_on_close(tmp_path):
    log = writer(tmp_path, part_rows=3)
    log.start()
    item = describe(upload(tmp_path), 0)
    # A part takes whole requests: 3 rows, then 1 + a batch of 2, then the last on close.
    sent = ([answered([item]) for _ in range(4)] + [answered([item, item], "classify_batch")]
            + [answered([item])])
    for one in sent:
        log.add(one)
    log.close()
    parts = sorted((tmp_path / "predictions" / "log").iterdir())
    assert [p.name.startswith("part-") and p.suffix == ".parquet" for p in parts] == [True] * 3
    rows = read_log(tmp_path / "predictions")
    assert list(rows.columns) == LOG_SCHEMA.names
    assert list(rows.request_id) == [i for one in sent for i in one.request_ids]
    assert list(rows.endpoint) == ["classify"] * 4 + ["classify_batch"] * 2 + ["classify"]
    assert (rows.width == 48).all() and (rows.height == 40).all() and (rows.format == "PNG").all()
    assert np.allclose([sum(p) for p in rows.probabilities], 1, atol=1e-5)
    assert all(list(c) == CLASSES for c in rows.classes)
    assert list(rows.top_label) == [CLASSES[int(np.argmax(p))] for p in rows.probabilities]
    assert not rows.kept.any()


def test_a_part_is_written_after_part_seconds_without_close(tmp_path):
    log = writer(tmp_path, part_seconds=0.05)
    log.start()
    log.add(answered([describe(upload(tmp_path), 0)]))
    deadline = time.monotonic() + 30
    while read_log(tmp_path / "predictions").empty and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_log(tmp_path / "predictions")) == 1
    log.close()


def test_the_size_bound_evicts_the_oldest_parts_and_images(tmp_path):
    probe = writer(tmp_path / "probe", part_rows=1)
    probe.flush(probe.rows(answered([describe(upload(tmp_path), 0)])))
    part_size = next((tmp_path / "probe" / "predictions" / "log").iterdir()).stat().st_size
    log = writer(tmp_path, part_rows=1, max_mb=3.5 * part_size / 2**20)
    items = [answered([describe(upload(tmp_path), i)]) for i in range(8)]
    for item in items:
        log.flush(log.rows(item))
    kept = read_log(tmp_path / "predictions")
    assert list(kept.request_id) == [i.request_ids[0] for i in items[-3:]]

    image_size = upload(tmp_path, 0).stat().st_size
    bound = 2.5 * (part_size + image_size) / 2**20
    images = writer(tmp_path / "img", part_rows=1, sample_rate=1, max_mb=bound)
    for seed in range(6):
        images.flush(images.rows(answered([describe(upload(tmp_path, seed, "PNG"), 1)])))
    folder = tmp_path / "img" / "predictions"
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= bound * 2**20
    assert len(list((folder / "images").iterdir())) < 6  # the oldest images went too
    newest = read_log(folder).iloc[-1]
    assert (folder / "images" / f"{newest.sha256}.png").exists() and newest.kept


def test_kept_uploads_have_their_own_bounds_of_count_bytes_and_age(tmp_path):
    import os

    def keep(log: PredictionLog, seeds: range) -> Path:
        for seed in seeds:
            log.flush(log.rows(answered([describe(upload(tmp_path, seed), 1)])))
        return tmp_path / "predictions" / "images"

    def shas(folder: Path) -> set[str]:
        return {p.stem for p in folder.iterdir()}

    log = writer(tmp_path, part_rows=1, sample_rate=1, kept_max_images=3)
    folder = keep(log, range(5))
    newest = set(read_log(tmp_path / "predictions").sha256.iloc[-3:])
    assert shas(folder) == newest  # the count: the oldest two went
    assert len(read_log(tmp_path / "predictions")) == 5  # the log rows stay

    size = max(p.stat().st_size for p in folder.iterdir())
    small = writer(tmp_path, part_rows=1, sample_rate=1, kept_max_mb=2.5 * size / 2**20)
    keep(small, range(5, 7))
    assert len(shas(folder)) == 2  # the bytes: at most two of these images fit

    aged = writer(tmp_path, part_rows=1, sample_rate=1, kept_max_days=1)
    old = next(iter(folder.iterdir()))
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    keep(aged, range(7, 8))
    assert not old.exists() and len(shas(folder)) == 2  # the age: two days old went


def test_a_full_queue_drops_rows_without_waiting(tmp_path, monkeypatch):
    monkeypatch.setattr(predlog_module, "QUEUE_ITEMS", 2)
    log = writer(tmp_path)  # not started: nothing empties the queue
    item = describe(upload(tmp_path), 0)
    for _ in range(4):
        log.add(answered([item, item]))
    assert log.dropped == 4 and len(log.pending) == 2


def test_logging_off_writes_nothing(tmp_path):
    log = writer(tmp_path, enabled=False)
    log.start()
    one = answered([describe(upload(tmp_path), 0)])
    log.add(one)
    log.close()
    assert not (tmp_path / "predictions").exists()
    assert log.answered_by(one.request_ids[0]) is None


def test_request_ids_are_found_in_memory_then_on_disk_and_feedback_is_read(tmp_path):
    log = writer(tmp_path)
    log.start()
    one = answered([describe(upload(tmp_path), 0)])
    log.add(one)
    log.close()
    assert log.answered_by(one.request_ids[0]) == ("tiny:1", tuple(CLASSES))
    log.recent.clear()  # as if forgotten long ago: the parts on disk answer
    assert log.answered_by(one.request_ids[0]) == ("tiny:1", tuple(CLASSES))
    assert log.answered_by(uuid.uuid4().hex) is None
    log.feedback(one.request_ids[0], "Square", "tiny:1")
    feedback = read_feedback(tmp_path / "predictions")
    assert feedback[["request_id", "label", "model"]].values.tolist() == [
        [one.request_ids[0], "Square", "tiny:1"]]
    assert str(feedback.time.dtype) == "datetime64[us, UTC]"


def test_unfinished_files_are_not_read_and_empty_logs_have_columns(tmp_path):
    assert read_log(tmp_path).empty and "probabilities" in read_log(tmp_path).columns
    assert list(read_feedback(tmp_path).columns) == ["request_id", "label", "time", "model"]
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / ".part-20260101T000000-1-0.parquet.1.tmp").write_bytes(b"half")
    assert read_log(tmp_path).empty


@pytest.mark.integration
def test_an_s3_prefix_holds_the_log(tmp_path, monkeypatch, local_s3):
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    local_s3.create_bucket("predlog", versioned=False)
    log = PredictionLog(PredictionLogging(directory="s3://predlog/served", part_rows=1,
                                          sample_rate=1))
    one = answered([describe(upload(tmp_path), 1)])
    log.flush(log.rows(one))
    log.recent.clear()
    assert log.answered_by(one.request_ids[0]) == ("tiny:1", tuple(CLASSES))
    listed = local_s3.client().list_objects_v2(Bucket="predlog", Prefix="served/")["Contents"]
    assert sorted(o["Key"].split("/")[1] for o in listed) == ["images", "log"]
    # A part another replica evicted meanwhile reads as a missing file, as in a folder.
    with pytest.raises(FileNotFoundError):
        log.store.source("log/part-20260101T000000-0123456789abcdef-000000.parquet")


@pytest.mark.parametrize(("name", "value"), [
    ("OPENIMAGER_PREDICTION_LOG", "maybe"), ("OPENIMAGER_PREDICTION_SAMPLE_RATE", "2"),
    ("OPENIMAGER_PREDICTION_LOG_ROWS", "many"), ("OPENIMAGER_KEPT_MAX_DAYS", "-1"),
    ("OPENIMAGER_KEPT_MAX_IMAGES", "lots")])
def test_bad_settings_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        PredictionLogging.from_env()


def test_the_folder_defaults_under_the_workspace(monkeypatch):
    monkeypatch.delenv("OPENIMAGER_PREDICTION_LOG_DIR", raising=False)
    monkeypatch.setenv("OPENIMAGER_WORKSPACE", "/data/ws")
    assert PredictionLogging.from_env().directory == "/data/ws/predictions"
    monkeypatch.setenv("OPENIMAGER_PREDICTION_LOG", "false")
    assert not PredictionLogging.from_env().enabled


def test_small_uploads_are_described_in_place_and_large_or_missing_ones_in_a_thread(tmp_path):
    small = upload(tmp_path)
    large = tmp_path / "large.bin"
    large.write_bytes(b"\0" * (predlog_module.INLINE_BYTES + 1))
    assert predlog_module.small_uploads([small, small])
    assert not predlog_module.small_uploads([small, large])
    assert not predlog_module.small_uploads([tmp_path / "gone.png"])
    assert predlog_module.describe_all([tmp_path / "gone.png"], 0) is None


def replica_answer(tmp_path: Path, seed: int = 0) -> Answered:
    """An answer with a request id as the service makes them (its time inside)."""
    one = answered([describe(upload(tmp_path, seed), 0)])
    return replace(one, request_ids=[predlog_module.new_request_id()])


def test_request_ids_carry_their_time_and_older_ids_none():
    before = time.time()
    ids = [predlog_module.new_request_id() for _ in range(1000)]
    after = time.time()
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert all(uuid.UUID(hex=i).version == 7 for i in ids)
    assert all(before - 0.001 <= predlog_module.request_time(i) <= after for i in ids)
    assert predlog_module.request_time(uuid.uuid4().hex) is None
    assert predlog_module.request_time("0" * 32) is None
    assert predlog_module.request_time("z" * 12 + "7" + "0" * 3 + "8" + "0" * 15) is None


def test_two_writers_of_one_process_in_one_second_never_share_a_part_name(tmp_path):
    # Two replicas in two containers may both have pid 1: the pid cannot tell their parts
    # apart, so here both writers even share one.
    first, second = writer(tmp_path, part_rows=1), writer(tmp_path, part_rows=1)
    assert first.writer != second.writer
    sent = [replica_answer(tmp_path, seed) for seed in range(8)]
    for one, log in zip(sent, [first, second] * 4, strict=True):
        log.flush(log.rows(one))  # all within a second or two: the same stamps
    names = [p.name for p in (tmp_path / "predictions" / "log").iterdir()]
    assert len(names) == 8
    writers = {name.split("-")[2] for name in names}
    assert writers == {first.writer, second.writer}
    rows = read_log(tmp_path / "predictions")
    assert sorted(rows.request_id) == sorted(one.request_ids[0] for one in sent)
    # One writer's parts of a second sort in the order they were written.
    mine = sorted(n for n in names if first.writer in n)
    assert [int(n.split("-")[3].split(".")[0]) for n in mine] == [0, 1, 2, 3]


def test_feedback_on_one_worker_waits_for_the_part_of_another(tmp_path):
    import anyio

    answering = writer(tmp_path, part_seconds=1)
    other = writer(tmp_path)  # another worker or replica on the same store
    answering.start()
    one = replica_answer(tmp_path)
    answering.add(one)
    # Not written yet: the other worker waits for the part instead of answering 404.
    found = anyio.run(other.find, one.request_ids[0])
    answering.close()
    assert found == ("tiny:1", tuple(CLASSES))
    assert other.recent[one.request_ids[0]] == found and other.waiting == 0


def test_feedback_for_ids_that_cannot_appear_any_more_does_not_wait(tmp_path, monkeypatch):
    import anyio

    log = writer(tmp_path, part_seconds=1)  # every worker's parts are written within 1 s
    log.start()
    log.add(replica_answer(tmp_path))
    log.close()
    looks = []
    search = log.search
    monkeypatch.setattr(log, "search", lambda *args: looks.append(args) or search(*args))
    hour_ago = f"{int((time.time() - 3600) * 1000):012x}7abc8{'0' * 15}"
    future = f"{int((time.time() + 3600) * 1000):012x}7abc8{'0' * 15}"
    assert anyio.run(log.find, hour_ago) is None
    assert anyio.run(log.find, uuid.uuid4().hex) is None  # an id of an older version
    assert len(looks) == 2  # one look each, no polling
    assert anyio.run(log.find, future) is None and len(looks) == 2  # not even one

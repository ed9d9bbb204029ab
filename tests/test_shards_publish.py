"""A published sharded dataset: the package's manifest grows with shards, not crops, a
republish with a few more crops sends one new shard, and plain quilt3 installs data that
pandas and DuckDB read."""

import json
import os

import duckdb
import pandas as pd
import pytest

from flows.publishing.lineage import git_commit
from tests.test_shards import LIVE, build

META = {"package": "test/sharded", "registry": "s3://x", "classes": ["Bus", "Car"],
        "class_mids": {"Bus": "/m/bus", "Car": "/m/car"},
        "crops_per_class": {"Bus": 1, "Car": 1}, "dataset_id": "d",
        "metrics": {"accuracy": 1.0, "macro_f1": 1.0, "test_examples": 1},
        "model_tag": "openimager-classifier:test"}


class Sent:
    """Records the S3 requests sent, and the shards that PUT requests carry."""

    def __init__(self) -> None:
        self.shards: list[str] = []
        self.requests: list[str] = []

    def __call__(self, request, **_) -> None:
        self.requests.append(f"{request.method} {request.url.split('//', 1)[1].split('/', 1)[1]}")
        if request.method == "PUT" and "/data/shards/" in request.url:
            self.shards.append(request.url.split("?")[0].rsplit("/", 1)[1])

    def clear(self) -> None:
        self.shards.clear()
        self.requests.clear()


@pytest.mark.integration
def test_a_published_dataset_is_a_few_shards_that_plain_quilt3_installs(
        tmp_path, registry_env, monkeypatch):
    import quilt3
    from botocore.session import Session

    from flows.publishing.bundle import publish

    sent, original = Sent(), Session.create_client

    def hooked(self, *args, **kwargs):
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-send.s3", sent)
        return client

    monkeypatch.setattr(Session, "create_client", hooked)
    ids = [f"{n:04x}" for n in range(60)]
    table = build(tmp_path, ids, chunk_images=30)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.keras").write_bytes(os.urandom(1000))
    (model / "metrics.json").write_text(json.dumps(META["metrics"]))
    meta = {**META, "git_commit": git_commit()}
    first = publish(tmp_path / "data", model, meta, "test/sharded", registry_env, "one")
    assert sorted(sent.shards) == sorted(table.Shard.unique())
    package = quilt3.Package.browse("test/sharded", registry=registry_env,
                                    top_hash=first.top_hash)
    data_keys = [key for key, _ in package.walk() if key.startswith("data/")]
    assert len(data_keys) <= table.Shard.nunique() + 8  # shards, tables and the card

    sent.clear()
    grown = build(tmp_path, [*ids, "f001"], chunk_images=30)
    second = publish(tmp_path / "data", model, meta, "test/sharded", registry_env, "two")
    new = set(grown.Shard) - set(table.Shard)
    assert len(new) == 1 and set(sent.shards) == new  # only the new shard travels
    # Of the data, the new shard and the live table; the table of skipped boxes is unchanged.
    data_puts = {r.split("?")[0].split("/data/", 1)[1] for r in sent.requests
                 if r.startswith("PUT") and "/data/" in r}
    assert data_puts == {f"shards/{name}" for name in new} | {"crops.parquet"}, sent.requests
    # The fixed cost of a republish: the last version read with two GETs, no LIST.
    reads = [r for r in sent.requests if "/.quilt/named_packages/" in r
             or "/.quilt/packages/" in r or "list-type" in r]
    assert [r.split("/.quilt/")[1].split("/")[0] for r in reads if r.startswith("GET")] == [
        "named_packages", "packages"], sent.requests
    assert all(r.startswith("PUT") for r in reads[2:]), sent.requests

    dest = tmp_path / "installed"
    quilt3.Package.install("test/sharded", registry=registry_env, top_hash=second.top_hash,
                           dest=str(dest))
    shards, live_table = dest / "data" / "shards", dest / "data" / "crops.parquet"
    frame = pd.read_parquet(shards)
    live = pd.read_parquet(live_table)
    assert len(live) == 122 and len(frame) >= len(live)
    assert frame.image.iloc[0]["bytes"][:2] == b"\xff\xd8"
    assert duckdb.sql(LIVE.format(shards=shards, table=live_table)).fetchall() == [(122, 122)]
    loaded_with_datasets(shards, tmp_path / "hf", monkeypatch, len(frame), table)


def loaded_with_datasets(shards, home, monkeypatch, rows: int, table: pd.DataFrame) -> None:
    """The installed shards as docs/publishing.md loads them with Hugging Face `datasets`:
    every row, the image column decoded to PIL images, the other columns plain values. Its
    caches go under home and it is told it is offline (it reads only these files)."""
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets
    from PIL import Image

    loaded = datasets.load_dataset("parquet", data_files=f"{shards}/*.parquet", split="train")
    assert len(loaded) == rows
    assert loaded.features["image"] == datasets.Image()
    first = loaded[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size[0] > 0
    assert first["Class"] in set(table.Class) and first["Split"] in set(table.Split)


@pytest.mark.integration
def test_a_multipart_file_already_in_the_registry_is_not_sent_again(tmp_path, registry_env,
                                                                    monkeypatch):
    import quilt3
    from botocore.session import Session

    puts, original = [], Session.create_client

    def hooked(self, *args, **kwargs):
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-send.s3", lambda request, **_: puts.append(
            request.url) if request.method == "PUT" and "big.bin" in request.url else None)
        return client

    monkeypatch.setattr(Session, "create_client", hooked)
    files = tmp_path / "files"
    files.mkdir()
    (files / "big.bin").write_bytes(os.urandom(9 * 2**20))  # above 8 MiB: multipart
    sent = []
    for run in range(2):
        (files / "small.txt").write_text(f"run {run}")
        quilt3.Package().set_dir("/", str(files)).push("test/big", registry=registry_env,
                                                       force=True)
        sent.append(len(puts))
    assert sent[0] >= 2 and sent[1] == sent[0]  # the second push sent no part of it

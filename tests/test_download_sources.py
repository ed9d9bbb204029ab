"""The pieces of the download that its CPU per image rests on: bodies asked for whole, the
bucket's URLs for plain GETs, the worker threads and the manifest lookup."""

from __future__ import annotations

import base64
import hashlib
import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import urlsplit

import pandas as pd
import pytest

from flows.openimages import sources
from flows.openimages.download import among
from flows.openimages.downloader import Chunk, Downloader, DownloadOptions
from tests.downloadkit import catalog, image_id, image_table, jpeg
from tests.imageserver import ImageServer


def test_a_body_of_known_length_is_asked_for_whole(tmp_path):
    body = bytes(range(256)) * 40
    asked: list[int] = []
    pieces = iter([body[:1000], body[1000:]])

    def read1(n: int) -> bytes:
        asked.append(n)
        return next(pieces)

    dest = tmp_path / "x.part"
    fetched = sources.copy_body(read1, dest, len(body), time.monotonic() + 9, 64)
    # Whatever has arrived, up to the rest of the body: not one block at a time, and no
    # further read once the announced length is in.
    assert asked == [len(body), len(body) - 1000]
    assert dest.read_bytes() == body == fetched.body
    assert fetched.md5 == hashlib.md5(body).hexdigest() and fetched.size == len(body)


@pytest.mark.parametrize(("endpoint", "bucket", "expected"), [
    (None, "open-images-dataset", "https://open-images-dataset.s3.amazonaws.com/"),
    ("https://s3.amazonaws.com", "open-images-dataset",
     "https://open-images-dataset.s3.amazonaws.com/"),
    ("https://s3.eu-west-1.amazonaws.com/", "open-images-dataset",
     "https://open-images-dataset.s3.eu-west-1.amazonaws.com/"),
    ("https://s3.amazonaws.com", "dotted.bucket", "https://s3.amazonaws.com/dotted.bucket/"),
    ("http://127.0.0.1:9000", "open-images-dataset", "http://127.0.0.1:9000/open-images-dataset/"),
    ("https://minio.example.org/s3/", "images", "https://minio.example.org/s3/images/"),
])
def test_bucket_urls_are_virtual_hosted_on_aws_and_path_style_elsewhere(endpoint, bucket,
                                                                        expected):
    assert sources.bucket_url(bucket, endpoint) == expected


def test_plain_gets_reuse_one_connection_pool_per_host(tmp_path):
    images = {image_id(n): jpeg(n) for n in range(1, 9)}
    with ImageServer(catalog(images)) as server:
        (tmp_path / "train").mkdir()
        options = DownloadOptions(sources=("cvdf",), endpoint_url=server.url,
                                  workers=4, per_host=4, progress=False)
        downloader = Downloader(options)
        table = image_table(server.url, images)
        items = table.assign(Check=False, Prior=None).to_dict("records")
        counts = downloader.run([Chunk(str(tmp_path), "c", items)])
        bucket = downloader.source("cvdf")
        assert counts[0].get("ok") == len(images), counts
        assert list(bucket.pools) == [("http", f"127.0.0.1:{server.port}")]
        assert bucket.pools[("http", f"127.0.0.1:{server.port}")][0].num_connections <= 4


class ForwardProxy(BaseHTTPRequestHandler):
    """A forward HTTP proxy on 127.0.0.1 that relays GETs and notes their targets."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, str]]] = []  # target, User-Agent, Proxy-Authorization

    def do_GET(self) -> None:
        ForwardProxy.seen.append((self.path, self.headers.get("User-Agent", ""),
                                  self.headers.get("Proxy-Authorization", "")))
        target = urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.netloc, timeout=5)
        upstream.request("GET", target.path)
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        for name in ("Content-Type", "ETag"):
            if answer.getheader(name):
                self.send_header(name, answer.getheader(name))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        upstream.close()

    def log_message(self, *args: object) -> None:
        pass


def test_http_proxy_from_the_environment_is_used_with_its_credentials(tmp_path, monkeypatch):
    images = {image_id(n): jpeg(n) for n in range(1, 4)}
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), ForwardProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    for name in ("HTTP_PROXY", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://me:secret@127.0.0.1:{proxy.server_port}")
    ForwardProxy.seen = []
    try:
        with ImageServer(catalog(images)) as server:
            (tmp_path / "train").mkdir()
            options = DownloadOptions(endpoint_url=server.url, workers=2, progress=False)
            items = image_table(server.url, images).assign(Check=False).to_dict("records")
            counts = Downloader(options).run([Chunk(str(tmp_path), "c", items)])
    finally:
        proxy.shutdown()
    assert counts[0].get("ok") == len(images), counts
    auth = "Basic " + base64.b64encode(b"me:secret").decode()
    assert sorted(ForwardProxy.seen) == sorted(
        (f"{server.url}/open-images-dataset/train/{key}.jpg", sources.USER_AGENT, auth)
        for key in images)


def test_a_worker_that_breaks_stops_the_others_and_the_error_reaches_the_caller(tmp_path,
                                                                              monkeypatch):
    calls, lock = [], threading.Lock()

    def one(self, store, item, journal):
        with lock:
            calls.append(item["ImageID"])
            if len(calls) == 5:
                raise RuntimeError("broken")
        time.sleep(0.01)
        return {"Status": "ok"}

    monkeypatch.setattr(Downloader, "one", one)
    items = [{"ImageID": image_id(n), "Subset": "train"} for n in range(200)]
    with pytest.raises(RuntimeError, match="broken"):
        Downloader(DownloadOptions(workers=4, progress=False)).run(
            [Chunk(str(tmp_path), "c", items)])
    assert len(calls) < 20  # the others stopped at the images in hand


def test_among_is_isin():
    ids = pd.Series(["a", "b", "c", "d"], dtype="str")
    for wanted in (pd.Series(["b", "d", "x"]), pd.Series([], dtype="str"),
                   pd.Series(["c", None], dtype=object)):
        assert among(ids, wanted).tolist() == ids.isin(wanted).tolist()
    assert among(pd.Series([], dtype="str"), ids).tolist() == []

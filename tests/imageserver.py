"""An image server on 127.0.0.1 that injects faults, for the download tests and benchmark.

It answers plain GETs (Flickr or thumbnail style URLs) and S3 path-style GETs
(`/<bucket>/<subset>/<id>.jpg`, as boto3 sends them to an `endpoint_url`), with keep-alive,
an added latency, and per-path faults: 5xx, 429 with Retry-After, 403/404, connection resets
mid-body, bodies cut short under a full Content-Length, slow trickles, stalls, Flickr's
"photo unavailable" redirect or bytes, and corrupt bodies.

    python -m tests.imageserver --kb 150 --latency 0.05   # prints its URL, then serves
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PLACEHOLDER_PATH = "/images/photo_unavailable.png"
ERROR_CODES = {403: "AccessDenied", 404: "NoSuchKey", 429: "TooManyRequests",
               500: "InternalError", 503: "SlowDown"}
REASONS = {200: "OK", 302: "Found", 403: "Forbidden", 404: "Not Found",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Faults:
    """What to break: `script` faults are used up one per request, `always` ones never.

    A fault is "500", "503", "429:<retry-after s>", "403", "404", "reset", "truncate",
    "trickle:<seconds>", "stall:<seconds>", "placeholder", "placeholder-bytes" or "corrupt".
    """

    latency: float = 0.0
    script: dict[str, list[str]] = field(default_factory=dict)
    always: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # time, path, fault
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, path: str) -> str:
        """The fault for this request to path ("" for none), recording the request."""
        with self.lock:
            queued = self.script.get(path)
            fault = queued.pop(0) if queued else self.always.get(path, "")
            self.requests.append((time.monotonic(), path, fault))
        return fault

    def hits(self, path: str) -> list[tuple[float, str]]:
        """The times and faults of the requests to path so far."""
        with self.lock:
            return [(t, f) for t, p, f in self.requests if p == path]


def placeholder_png() -> bytes:
    """A small grey PNG standing in for Flickr's "photo unavailable" image."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (500, 374), 230)
    ImageDraw.Draw(image).text((150, 180), "This photo is no longer available", fill=90)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class SyntheticImages:
    """JPEGs of about `kb` KB for any 16-hex-digit id, each unique (its id in a comment)."""

    ID = re.compile(r"/([0-9a-f]{16})\.jpg$")

    def __init__(self, kb: int = 150, variants: int = 8, seed: int = 7) -> None:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.bases: list[bytes] = []
        for _ in range(variants):
            coarse = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            pixels = np.asarray(coarse.resize((1024, 768), Image.BICUBIC), dtype=np.int16)
            noisy = np.clip(pixels + rng.normal(0, 9, pixels.shape), 0, 255).astype(np.uint8)
            quality = 85
            while True:  # settle the quality that gives about the size asked for
                buffer = io.BytesIO()
                Image.fromarray(noisy).save(buffer, "JPEG", quality=quality)
                if buffer.tell() <= kb * 1024 or quality <= 30:
                    break
                quality -= 5
            self.bases.append(buffer.getvalue())

    def image(self, number: int) -> bytes:
        """The JPEG of image `number`: a base with a COM segment naming it after the SOI."""
        note = f"openimager synthetic {number:016x}".encode()
        base = self.bases[number % len(self.bases)]
        return base[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + base[2:]

    def __call__(self, path: str) -> bytes | None:
        match = self.ID.search(path)
        return self.image(int(match.group(1), 16)) if match else None


Content = Callable[[str], "bytes | None"]


class ImageServer:
    """Serves content(path) over HTTP/1.1 on a free loopback port; a context manager that runs
    the event loop in a thread."""

    def __init__(self, content: Content | dict[str, bytes], faults: Faults | None = None,
                 port: int = 0) -> None:
        self.content: Content = content.get if isinstance(content, dict) else content
        self.faults = faults or Faults()
        self.port = port
        self.placeholder = placeholder_png()
        self._etags: dict[str, str] = {}
        self.active = self.peak = 0  # requests being answered now, and at most so far
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task | None] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port,
                                                  backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._tasks.add(asyncio.current_task())
        writer.transport.set_write_buffer_limits(0)  # drain() then means "on the wire"
        try:
            while True:
                line = await reader.readline()
                if not line.strip():
                    break
                method, target = line.decode("latin-1").split()[:2]
                while (await reader.readline()).strip():  # headers: nothing here needs them
                    pass
                if not await self._answer(method, target.split("?")[0], writer):
                    break
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that hung up or spoke nonsense
        finally:
            self._writers.discard(writer)
            self._tasks.discard(asyncio.current_task())
            writer.close()

    def _head(self, status: int, length: int, extra: dict[str, str] | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
                 f"Content-Length: {length}", *(f"{k}: {v}" for k, v in (extra or {}).items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _error(self, writer: asyncio.StreamWriter, status: int, method: str,
                     extra: dict[str, str] | None = None) -> bool:
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{ERROR_CODES[status]}"
                f"</Code><Message>injected</Message></Error>").encode()
        headers = {"Content-Type": "application/xml", **(extra or {})}
        writer.write(self._head(status, len(body), headers) + (body if method != "HEAD" else b""))
        await writer.drain()
        return True

    async def _answer(self, method: str, path: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one request, counting those in progress; False closes the connection."""
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self._respond(method, path, writer)
        finally:
            self.active -= 1

    async def _respond(self, method: str, path: str, writer: asyncio.StreamWriter) -> bool:
        fault = self.faults.take(path)
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        kind, _, arg = fault.partition(":")
        if kind.isdigit() and int(kind) != 429:
            return await self._error(writer, int(kind), method)
        if kind == "429":
            return await self._error(writer, 429, method, {"Retry-After": arg or "1"})
        if kind == "placeholder":
            writer.write(self._head(302, 0, {"Location": PLACEHOLDER_PATH}))
            await writer.drain()
            return True
        key = PLACEHOLDER_PATH if kind == "placeholder-bytes" else path
        body = self.placeholder if key == PLACEHOLDER_PATH else self.content(path)
        if body is None:
            return await self._error(writer, 404, method)
        if key not in self._etags:  # the MD5, as S3 gives for single-part objects
            self._etags[key] = hashlib.md5(body).hexdigest()
        headers = {"Content-Type": "image/png" if body[:4] == b"\x89PNG" else "image/jpeg",
                   "ETag": f'"{self._etags[key]}"'}
        if kind == "corrupt":  # the right length and header, then noise
            body = body[:200] + bytes(range(256)) * ((len(body) - 200) // 256 + 1)
            body = body[: len(self.content(path) or body)]
            headers["ETag"] = f'"{hashlib.md5(body).hexdigest()}"'
        writer.write(self._head(200, len(body), headers))
        if method == "HEAD":
            await writer.drain()
            return True
        return await self._body(writer, body, kind, float(arg or 0))

    async def _body(self, writer: asyncio.StreamWriter, body: bytes, kind: str,
                    seconds: float) -> bool:
        half = len(body) // 2
        if kind in ("reset", "truncate"):
            writer.write(body[:half])
            await writer.drain()
            await asyncio.sleep(0.02)
            if kind == "reset":  # linger 0: close() sends RST instead of FIN
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            return False
        if kind == "stall":  # half the body, then silence
            writer.write(body[:half])
            await writer.drain()
            await asyncio.sleep(seconds)
            writer.write(body[half:])
        elif kind == "trickle":  # always a little data, never a silence long enough to time out
            pieces = 50
            step = len(body) // pieces + 1
            for start in range(0, len(body), step):
                writer.write(body[start:start + step])
                await writer.drain()
                await asyncio.sleep(seconds / pieces)
        else:
            writer.write(body)
        await writer.drain()
        return True

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = [t for t in self._tasks if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> ImageServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="imageserver")
        self._thread.start()
        ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _serve_forever(server: ImageServer) -> None:
    await server.start()
    print(server.url, flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """Serve synthetic images until killed, printing the URL first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=int, default=150, help="size of each synthetic JPEG")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added per request")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--until-stdin-closes", action="store_true",
                        help="exit when stdin closes, so the server dies with its parent")
    args = parser.parse_args(argv)
    if args.until_stdin_closes:
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True,
                         name="parent-watch").start()
    server = ImageServer(SyntheticImages(args.kb), Faults(latency=args.latency), args.port)
    asyncio.run(_serve_forever(server))


if __name__ == "__main__":
    sys.exit(main())

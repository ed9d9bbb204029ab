"""A static HTTP mirror on 127.0.0.1 that behaves like the metadata host: ETag, Range, HEAD."""

from __future__ import annotations

import email.utils
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    """Failures to inject, for tests: cut a response to a path after some bytes, once."""

    cut_after: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range


class MirrorHandler(SimpleHTTPRequestHandler):
    """Serves files with ETag and Last-Modified validators and single byte-range requests."""

    faults: Faults

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _validators(self, stat: os.stat_result) -> dict[str, str]:
        return {"ETag": f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"',
                "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
                "Accept-Ranges": "bytes"}

    def send_head(self):  # type: ignore[override]
        self.faults.requests.append((self.command, self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        stat = path.stat()
        validators = self._validators(stat)
        start, end = 0, stat.st_size - 1
        wanted = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        partial_ok = wanted.startswith("bytes=") and if_range in (None, validators["ETag"])
        if partial_ok:
            first, _, last = wanted[6:].partition("-")
            start = int(first or 0)
            end = min(int(last), end) if last else end
            if start > end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{stat.st_size}")
                self.end_headers()
                return None
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end}/{stat.st_size}")
        else:
            self.send_response(HTTPStatus.OK)
        for name, value in validators.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        handle = path.open("rb")
        handle.seek(start)
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        limit = self.faults.cut_after.pop(self.path, None)
        remaining = self._remaining if limit is None else min(limit, self._remaining)
        while remaining > 0:
            block = source.read(min(1 << 16, remaining))
            if not block:
                break
            outputfile.write(block)
            remaining -= len(block)
        if limit is not None:
            self.close_connection = True  # the client sees a short body, as on a dropped link


@dataclass
class StaticHTTP:
    """Serves a folder over HTTP on a free loopback port; use as a context manager."""

    root: Path
    faults: Faults = field(default_factory=Faults)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StaticHTTP:
        handler = type("Handler", (MirrorHandler,), {"faults": self.faults})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0),
                                          partial(handler, directory=str(self.root)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

"""An ASGI middleware that checks uploads before BentoML parses them, answering 4xx JSON.

BentoML 1.4 turns several bad uploads into 500s (a file in a text field is json-decoded,
a malformed body raises inside Starlette, an over-long file name fails the temp file) and
fetches a URL sent in place of a file. This guard reads the body within a size limit,
parses the multipart structure with the same parser Starlette uses, and lets the request
through only when BentoML's own parsing cannot fail: known fields, real non-empty files,
valid text values. Images are decoded later, in the API, with their own checks.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.responses import JSONResponse

from service.config import Limits

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_FACTOR = 4  # read and drop up to this many times the limit so the client sees the 413
MAX_FILENAME = 200
UPLOAD_STATE = "openimager_filenames"  # scope["state"] key: the files' names, in order
TOP_VALUE = re.compile(r"[0-9]{1,4}")  # `top`, as a form field or (service.rawbody) a query


@dataclass(frozen=True)
class Rule:
    """What one upload endpoint accepts."""

    file_field: str
    max_files: int
    max_file_bytes: int
    max_body_bytes: int
    text_fields: dict[str, re.Pattern[str]] = field(default_factory=dict)
    other_form: str = ""  # how else the endpoint takes an image, for the 415 message


class Rejected(Exception):
    """A request refused with status and a JSON body {"error", "code"}."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        """The JSON answer."""
        return JSONResponse({"error": self.message, "code": self.code}, status_code=self.status)


def mib(size: int) -> str:
    """A size in MiB for messages."""
    return f"{size / 2**20:g} MiB"


def default_rules(limits: Limits) -> dict[str, Rule]:
    """The rules of /classify and /classify_batch under the given limits."""
    top = {"top": TOP_VALUE}
    single = Rule("image", 1, limits.max_upload_bytes, limits.max_upload_bytes + 64 * 1024, top,
                  "as the request body (Content-Type image/jpeg, image/png, ...), or ")
    batch = Rule("images", limits.max_batch_images, limits.max_upload_bytes,
                 limits.max_batch_upload_bytes, top)
    return {"/classify": single, "/classify_batch": batch}


@dataclass
class Part:
    """One multipart part as seen by the parser."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    name: str | None = None
    filename: str | None = None
    size: int = 0
    text: bytearray = field(default_factory=bytearray)


def decode_name(raw: bytes) -> str:
    """Decode a header parameter the way Starlette does (UTF-8, else Latin-1)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_parts(body: bytes, boundary: bytes, max_parts: int) -> list[Part]:
    """The parts of a multipart body, or Rejected when it is malformed or incomplete."""
    parts: list[Part] = []
    header = [b"", b""]
    state = {"ended": False}

    def begin() -> None:
        if len(parts) >= max_parts:
            raise Rejected(400, "too_many_fields", f"more than {max_parts} form fields")
        parts.append(Part())

    def header_end() -> None:
        parts[-1].headers.append((header[0].lower(), header[1]))
        header[0] = header[1] = b""

    def headers_done() -> None:
        part = parts[-1]
        disposition = dict(part.headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise Rejected(400, "malformed_multipart", "a form part has no name")
        part.name = decode_name(options[b"name"])
        part.filename = decode_name(options[b"filename"]) if b"filename" in options else None

    def data(chunk: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.size += end - start
        if part.filename is None and len(part.text) < 1024:
            part.text += chunk[start:min(end, start + 1024)]

    callbacks = {
        "on_part_begin": begin, "on_part_data": data, "on_header_end": header_end,
        "on_header_field": lambda d, s, e: header.__setitem__(0, header[0] + d[s:e]),
        "on_header_value": lambda d, s, e: header.__setitem__(1, header[1] + d[s:e]),
        "on_headers_finished": headers_done, "on_end": lambda: state.update(ended=True),
    }
    try:
        MultipartParser(boundary, callbacks).write(body)  # type: ignore[arg-type]
    except FormParserError:
        raise Rejected(400, "malformed_multipart", "the multipart body is malformed") from None
    if not state["ended"]:
        raise Rejected(400, "malformed_multipart", "the multipart body is incomplete")
    return parts


def check_parts(parts: list[Part], rule: Rule) -> list[str]:
    """Check fields against the rule; return the uploaded files' names in order."""
    files = []
    seen_text: set[str] = set()
    for part in parts:
        if part.name == rule.file_field:
            if part.filename is None:
                raise Rejected(400, "not_a_file", f"field '{part.name}' must be a file upload")
            if len(part.filename) > MAX_FILENAME or any(ord(c) < 32 for c in part.filename):
                raise Rejected(400, "bad_filename", "the file name is over 200 characters "
                               "or has control characters")
            if part.size == 0:
                raise Rejected(400, "empty_file", f"the uploaded file '{part.filename}' is empty")
            if part.size > rule.max_file_bytes:
                raise Rejected(413, "file_too_large", f"file '{part.filename}' is over the "
                               f"{mib(rule.max_file_bytes)} limit")
            files.append(part.filename)
        elif part.name in rule.text_fields:
            pattern = rule.text_fields[part.name]
            text = part.text.decode("utf-8", "replace").strip()
            if part.filename is not None or part.name in seen_text or not pattern.fullmatch(text):
                raise Rejected(400, "bad_field", f"field '{part.name}' must be one whole "
                               "number, sent as a plain form value")
            seen_text.add(part.name)
        else:
            raise Rejected(400, "unexpected_field", f"unexpected form field '{part.name}': "
                           f"send the image as a file in a field named '{rule.file_field}'")
    if not files:
        raise Rejected(400, "no_file", f"no file: send the image as multipart/form-data in a "
                       f"field named '{rule.file_field}'")
    if len(files) > rule.max_files:
        hint = " (use /classify_batch for several)" if rule.max_files == 1 else ""
        raise Rejected(413, "too_many_images", f"{len(files)} images, at most "
                       f"{rule.max_files} per request{hint}")
    return files


class UploadGuard:
    """ASGI middleware: refuse bad uploads to the rule paths with 4xx JSON, pass the rest."""

    def __init__(self, app: ASGIApp, rules: dict[str, Rule] | None = None) -> None:
        self.app = app
        # Built when the server builds its app, in each worker, never at import.
        self.rules = rules if rules is not None else default_rules(Limits.from_env())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.rules.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        try:
            scope, body = await self.checked(scope, receive, rule)
        except Rejected as error:
            await error.response()(scope, receive, send)
            return
        except ClientGone:
            return
        await self.app(scope, replay(body, receive), send)

    async def checked(self, scope: Scope, receive: Receive, rule: Rule) -> tuple[Scope, bytes]:
        """Read and check the request; return the scope to pass on and the body."""
        if scope["method"] != "POST":
            raise Rejected(405, "method_not_allowed", f"use POST for {scope['path']}")
        headers = {k.lower(): v for k, v in scope["headers"]}
        raw_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type, options = parse_options_header(raw_type)
        if media_type != b"multipart/form-data":
            raise Rejected(415, "unsupported_media_type", f"send the image {rule.other_form}as "
                           f"multipart/form-data in a field named '{rule.file_field}'")
        boundary = options.get(b"boundary", b"")
        if not 1 <= len(boundary) <= 200:
            raise Rejected(400, "malformed_multipart", "the multipart boundary is missing")
        body = await read_body(scope, receive, headers, rule)
        parts = parse_parts(body, boundary, rule.max_files + len(rule.text_fields) + 1)
        filenames = check_parts(parts, rule)
        # BentoML picks its parser by the exact media type: pass it on in canonical spelling.
        params = raw_type[raw_type.index(";"):]  # a boundary was found, so there is a ";"
        canonical = ("multipart/form-data" + params).encode("latin-1")
        new_headers = [(k, canonical if k.lower() == b"content-type" else v)
                       for k, v in scope["headers"]]
        state = {**scope.get("state", {}), UPLOAD_STATE: filenames}
        return {**scope, "headers": new_headers, "state": state}, body


class ClientGone(Exception):
    """The client disconnected before sending the whole body."""


async def read_body(scope: Scope, receive: Receive, headers: dict[bytes, bytes],
                    rule: Rule) -> bytes:
    """The request body, or 413 when it is over the limit (read on so the client sees it)."""
    limit = rule.max_body_bytes
    # A single upload is limited by its file size (the form around it has some slack).
    nominal = rule.max_file_bytes if rule.max_files == 1 else limit
    too_large = Rejected(413, "upload_too_large", f"the upload is over the {mib(nominal)} limit")
    declared = headers.get(b"content-length", b"").strip()
    size = int(declared) if declared.isdigit() else 0
    waits = headers.get(b"expect", b"").lower() == b"100-continue"
    if size > limit and (waits or size > DRAIN_FACTOR * limit):
        raise too_large  # the client waits for our answer, or is not worth reading
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            raise too_large
        if not message.get("more_body", False):
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable that hands the buffered body over once, then defers to the client."""
    sent = False

    async def inner() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return inner

"""The local S3 server: moto's, with state kept on disk and version ids that never change.

With --state-dir, the buckets and object versions live in that folder (flows.servers.s3state)
and come back at the next start; quilt3 manifests pin objects by version id, so the ids are
stored as they were. A registry kept in the older format (every request moto's recorder saw,
in s3-state.jsonl) is replayed once, in-process, into the new format; the old file stays
beside it as s3-state.jsonl.migrated. One server at a time owns a state folder.

moto draws version ids at random; here the id is a hash of the bucket, the key, the content's
ETag and the number of earlier versions of that key, so replaying an old recording gives the
ids it gave the first time. moto 5.2 also leaves the checksum out of its answer to
CompleteMultipartUpload, which quilt3 8 reads for every file above 8 MB, and answers HEAD
with a multipart object's composite checksum without its part count ("-N"), so quilt3 never
finds such a file already there and uploads it again: both are put right here. moto checks
a write's If-Match / If-None-Match and then stores it with no lock between, while this server
answers each request in a thread: conditional writes go one at a time here, so that of two
writers of one read only one wins, as on S3 (the registry's promotion state relies on it).

    python -m flows.servers.s3server -H 127.0.0.1 -p 9000 --state-dir workspace/registry
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flows.servers.s3state import StateStore, write_atomic

LEGACY = "s3-state.jsonl"  # the request log the registry was kept in before
COMPACT_AFTER = 2000  # journal lines that trigger a new snapshot while running


def deterministic_version_ids() -> None:
    """Patch moto's S3 backend so a put's version id depends only on its history."""
    from moto.s3.models import S3Backend

    put_object = S3Backend.put_object

    def put(self: Any, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
        key = put_object(self, bucket_name, key_name, *args, **kwargs)
        if key.version_id != "null":
            earlier = len(self.get_bucket(bucket_name).keys.getlist(key_name, [])) - 1
            seed = f"{bucket_name}\0{key_name}\0{key.etag}\0{earlier}".encode()
            key._version_id = hashlib.sha256(seed).hexdigest()[:32]
        return key

    S3Backend.put_object = put


def serialised_recording() -> None:
    """Let one request at a time append to the recording: threads interleaved their lines."""
    from moto.moto_api._internal.recorder.models import Recorder

    record = Recorder._record_request
    lock = threading.Lock()

    def locked(self: Any, *args: Any, **kwargs: Any) -> None:
        with lock:
            record(self, *args, **kwargs)

    Recorder._record_request = locked


def multipart_checksums() -> None:
    """Answer CompleteMultipartUpload and HEAD with the object's composite checksum and its
    part count, as S3 does."""
    from moto.s3.responses import S3Response

    serialized = S3Response.serialized

    def with_checksum(self: Any, action_result: Any) -> Any:
        result = action_result.result
        if self.data.get("Action") == "CompleteMultipartUpload" and isinstance(result, dict):
            key = self.backend.get_object(result["Bucket"], result["Key"])
            if key is not None and key.checksum_algorithm and key.checksum_value:
                value = key.checksum_value
                if key.checksum_type == "COMPOSITE":
                    value = f"{value}-{key.checksum_parts}"
                result[f"Checksum{key.checksum_algorithm.upper()}"] = value
                result["ChecksumType"] = key.checksum_type
        return serialized(self, action_result)

    S3Response.serialized = with_checksum
    head = S3Response.head_object

    def head_with_parts(self: Any, bucket_name: str, query: dict, key_name: str,
                        headers: dict) -> Any:
        status, answer, body = head(self, bucket_name, query, key_name, headers)
        version = query.get("versionId", [None])[0]
        key = self.backend.get_object(bucket_name, key_name, version_id=version) \
            if status == 200 else None
        if key is not None and key.checksum_type == "COMPOSITE" and key.checksum_parts:
            name = f"x-amz-checksum-{str(key.checksum_algorithm).lower()}"
            if name in answer and "-" not in str(answer[name]):
                answer[name] = f"{answer[name]}-{key.checksum_parts}"
        return status, answer, body

    S3Response.head_object = head_with_parts


def replay_legacy(app: Any, log: Path) -> int:
    """Send every request of an old recording to app in-process; return how many."""
    from werkzeug.test import Client

    client = Client(app)
    count = 0
    for line in log.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # the torn last line of a killed server
            break
        body = entry.get("body") or b""
        if entry.get("body_encoded"):
            body = base64.b64decode(body)
        headers = {k: v for k, v in entry["headers"].items() if k != "Transfer-Encoding"}
        url = urlsplit(entry["url"])
        client.open(url.path, method=entry["method"], query_string=url.query,
                    headers=headers, data=body)
        count += 1
    return count


def open_state(folder: Path, app: Any) -> StateStore:
    """Load the state of folder into moto, migrating an old recording first; compact it."""
    from moto.s3.models import s3_backends

    store = StateStore(folder / "s3")
    legacy = folder / LEGACY
    if not store.exists and legacy.exists():
        replay_legacy(app, legacy)
        store.record(s3_backends)
    else:
        store.load()
        store.restore(s3_backends)
    store.compact()
    if legacy.exists():  # only now that the snapshot holds everything it did
        os.replace(legacy, legacy.with_name(LEGACY + ".migrated"))
    return store


def scope(environ: dict) -> tuple[str | None, str | None]:
    """The bucket and key a path-style request names (None, None when it names neither)."""
    host = environ.get("HTTP_HOST", "").split(":")[0]
    if host not in {"127.0.0.1", "localhost"}:  # a virtual-host style name: look everywhere
        return None, None
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or bucket == "moto-api":
        return None, None
    return bucket, key or None


def persisting(app: Any, store: StateStore, compact_after: int) -> Any:
    """Wrap the WSGI app so each write is on disk before its answer leaves."""
    from moto.s3.models import s3_backends

    lock = threading.Lock()

    def wsgi(environ: dict, start_response: Any) -> Any:
        response = app(environ, start_response)
        if environ["REQUEST_METHOD"] not in {"GET", "HEAD", "OPTIONS"}:
            with lock:
                # Looking at the one key written keeps a write's cost flat as versions pile up.
                store.record(s3_backends, *scope(environ))
                if store.journal_lines > compact_after:
                    store.record(s3_backends)  # everything, in case a path named it otherwise
                    store.compact()
        return response

    return wsgi


CONDITIONS = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")


def atomic_conditions(app: Any) -> Any:
    """Wrap the WSGI app so writes carrying If-Match or If-None-Match run one at a time:
    otherwise two threads can both pass moto's check before either stores. Every other
    request, unconditional writes included, stays concurrent."""
    lock = threading.Lock()

    def wsgi(environ: dict, start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] in {"PUT", "POST", "DELETE"} \
                and any(environ.get(name) for name in CONDITIONS):
            with lock:  # moto answers within the call: its response is already built
                return app(environ, start_response)
        return app(environ, start_response)

    return wsgi


def own(folder: Path) -> Any:
    """Lock folder for this process, or exit saying which server holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / "lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        endpoint = (folder / "endpoint").read_text().strip() if (folder / "endpoint"
                                                                   ).exists() else "?"
        sys.exit(f"error: the registry in {folder} is already served at {endpoint}")
    return handle


SERVER_HEADER = "X-Openimager-Server"  # every answer names the pid of the server giving it


def identified(app: Any) -> Any:
    """Wrap the WSGI app so every answer carries SERVER_HEADER: whoever started this server
    can tell it from another one answering on the same port."""
    pid = str(os.getpid())

    def wsgi(environ: dict, start_response: Any) -> Any:
        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            return start_response(status, [*headers, (SERVER_HEADER, pid)], exc_info)

        return app(environ, start)

    return wsgi


def listen(host: str, port: int, app: Any) -> Any:
    """A threaded server bound to host:port, or exit in one line when the port is taken."""
    from moto.server import MotoRequestHandler
    from werkzeug.serving import make_server

    # Bound here, not by werkzeug, which prints two lines of its own and the advice to stop
    # the other program.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        sys.exit(f"error: cannot listen on {host}:{port}: {error.strerror or error}")
    with sock:  # the server holds a duplicate of the socket
        return make_server(host, port, identified(app), threaded=True,
                           request_handler=MotoRequestHandler, fd=sock.fileno())


def serve(host: str, port: int, folder: Path, compact_after: int) -> None:
    """Serve S3 on host:port with its state kept in folder."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    held = own(folder)
    # One line per request would make the log outgrow the state it serves; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    (folder / "endpoint").unlink(missing_ok=True)  # a last run's port, until this one listens
    app = DomainDispatcherApplication(create_backend_app)
    store = open_state(folder, app)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(0))
    try:
        server = listen(host, port, atomic_conditions(persisting(app, store, compact_after)))
        # Written only once the port is this server's: never the address of another one.
        write_atomic(folder / "endpoint", f"http://{host}:{port}\n".encode())
        server.serve_forever()
    finally:
        held.close()


def serve_stateless(host: str, port: int) -> None:
    """moto's own server (as `moto_server`), with SERVER_HEADER and a one-line busy port."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    os.environ.setdefault("MOTO_PORT", str(port))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # as moto's main() has it
    listen(host, port, atomic_conditions(app)).serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Run moto's server with the patches applied, its state in --state-dir if given."""
    parser = argparse.ArgumentParser(prog="python -m flows.servers.s3server")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=9000)
    parser.add_argument("--state-dir", type=Path, default=os.environ.get("S3SERVER_STATE_DIR"),
                        help="keep the state here (default: $S3SERVER_STATE_DIR)")
    parser.add_argument("--compact-after", type=int, default=COMPACT_AFTER)
    args = parser.parse_args(argv)
    deterministic_version_ids()
    multipart_checksums()
    serialised_recording()
    if args.state_dir:
        serve(args.host, args.port, args.state_dir, args.compact_after)
        return
    serve_stateless(args.host, args.port)


if __name__ == "__main__":
    main(sys.argv[1:])

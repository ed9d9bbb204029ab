"""The local S3 server: moto's, with version ids that come back the same after a replay.

moto draws object version ids at random, so replaying its request log after a restart would
give every object a new id, and quilt3 manifests, which pin objects by version id, would point
at nothing. Here the id is a hash of the bucket, the key, the content's ETag and the number of
earlier versions of that key: the same history replayed gives the same ids. The recording
itself is serialised, as moto's threaded server otherwise interleaves lines of the log.

    python -m flows.servers.s3server -H 127.0.0.1 -p 9000
"""

from __future__ import annotations

import hashlib
import sys
import threading
from typing import Any


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


def main(argv: list[str] | None = None) -> None:
    """Run moto's server with the patches applied."""
    deterministic_version_ids()
    serialised_recording()
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])

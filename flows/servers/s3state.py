"""The embedded registry's state on disk: a snapshot plus the changes made since.

A state folder holds

    snapshot.json   every bucket (versioning, policy) and every object version in order, with
                    the fields S3 clients see: version id, ETag, checksums, metadata, time
    journal.jsonl   one line per change since the snapshot: a version added or gone, a bucket
    blobs/<sha256>  object contents, once however many versions share them

Only changes are written, so the folder grows with the data, not with the requests; a start
loads the snapshot and the few journal lines in-process, then folds them into a new snapshot.
Every file is replaced by rename or appended line by line after its blobs are on disk, so a
kill -9 at any point leaves a state that loads (a torn last journal line is dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

SNAPSHOT, JOURNAL, BLOBS = "snapshot.json", "journal.jsonl", "blobs"
FORMAT = 1
# The fields of moto's FakeKey that a client can observe; the rest is rebuilt by its constructor.
KEY_FIELDS = ("_etag", "_version_id", "_is_versioned", "_storage_class", "checksum_algorithm",
              "checksum_value", "checksum_type", "checksum_parts", "encryption", "kms_key_id",
              "website_redirect_location", "lock_mode", "lock_legal_status", "lock_until")

Id = tuple[str, str, str]  # bucket, key, version id


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path through a synced temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class StateStore:
    """The persisted view of an S3 backend, and the files that hold it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.blobs = folder / BLOBS
        self.buckets: dict[str, dict[str, Any]] = {}
        self.objects: dict[Id, dict[str, Any]] = {}  # insertion order = version order
        self.journal_lines = 0

    @property
    def exists(self) -> bool:
        return (self.folder / SNAPSHOT).exists()

    def load(self) -> None:
        """Read the snapshot, then the journal on top of it."""
        snapshot = json.loads((self.folder / SNAPSHOT).read_text()) if self.exists else {}
        if snapshot and snapshot.get("format") != FORMAT:
            raise ValueError(f"{self.folder / SNAPSHOT}: unknown format {snapshot.get('format')}")
        self.buckets = snapshot.get("buckets", {})
        self.objects = {(r["bucket"], r["key"], r["version_id"]): r
                        for r in snapshot.get("objects", [])}
        self.journal_lines = 0
        for change in self._journal():
            self._apply(change)
            self.journal_lines += 1

    def _journal(self) -> Iterator[dict]:
        path = self.folder / JOURNAL
        if not path.exists():
            return
        for line in path.read_bytes().splitlines():
            try:
                yield json.loads(line)
            except ValueError:  # the torn last line of a killed writer: its change never was
                return

    def _apply(self, change: dict) -> None:
        op = change["op"]
        if op == "bucket":
            self.buckets[change["name"]] = change["config"]
        elif op == "drop_bucket":
            self.buckets.pop(change["name"], None)
        elif op == "put":
            record = change["record"]
            ident = (record["bucket"], record["key"], record["version_id"])
            self.objects.pop(ident, None)  # a rewritten "null" version moves to the end
            self.objects[ident] = record
        elif op == "drop":
            self.objects.pop(tuple(change["id"]), None)

    def compact(self) -> None:
        """Fold the journal into a new snapshot, then drop blobs nothing refers to."""
        self.folder.mkdir(parents=True, exist_ok=True)
        snapshot = {"format": FORMAT, "buckets": self.buckets,
                    "objects": list(self.objects.values())}
        write_atomic(self.folder / SNAPSHOT, json.dumps(snapshot, separators=(",", ":")).encode())
        # Replaying a journal over a snapshot that already holds it changes nothing, so a
        # kill between these two writes is harmless.
        write_atomic(self.folder / JOURNAL, b"")
        self.journal_lines = 0
        used = {r["blob"] for r in self.objects.values() if r.get("blob")}
        for blob in self.blobs.glob("*") if self.blobs.exists() else ():
            if blob.name not in used:
                blob.unlink()

    def record(self, backends: dict, bucket: str | None = None, key: str | None = None) -> int:
        """Append the differences between the backends and the persisted view, looking only at
        one bucket or one key of it when given; return how many there were."""
        while True:
            try:
                buckets, objects = scan(backends, bucket, key)
                break
            except RuntimeError:  # another request changed a dict mid-scan: look again
                continue

        def inside(ident: Id) -> bool:
            return (bucket is None or ident[0] == bucket) and (key is None or ident[1] == key)

        changes = [{"op": "bucket", "name": n, "config": c} for n, c in buckets.items()
                   if self.buckets.get(n) != c]
        changes += [{"op": "drop_bucket", "name": n} for n in self.buckets
                    if n not in buckets and bucket in (None, n)]
        changes += [{"op": "drop", "id": list(i)} for i in self.objects
                    if i not in objects and inside(i)]
        for ident, (fingerprint, version) in objects.items():
            if self.objects.get(ident, {}).get("fingerprint") != fingerprint:
                changes.append({"op": "put", "record": self._stored(ident, fingerprint, version)})
        if changes:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / JOURNAL, "a") as journal:
                journal.write("".join(json.dumps(c, separators=(",", ":")) + "\n"
                                      for c in changes))
                journal.flush()
                os.fsync(journal.fileno())
            for change in changes:
                self._apply(change)
            self.journal_lines += len(changes)
        return len(changes)

    def _stored(self, ident: Id, fingerprint: str, key: Any) -> dict:
        """The record of one object version, its content written to the blob store first."""
        marker = type(key).__name__ == "FakeDeleteMarker"
        owner = key.key if marker else key
        record = {"bucket": ident[0], "key": ident[1], "version_id": ident[2],
                  "fingerprint": fingerprint, "account": owner.account_id,
                  "region": owner.region_name, "last_modified": key.last_modified.isoformat()}
        if marker:
            return {**record, "delete_marker": True}
        value = key.value
        blob = hashlib.sha256(value).hexdigest()
        self.blobs.mkdir(parents=True, exist_ok=True)
        if not (self.blobs / blob).exists():
            write_atomic(self.blobs / blob, value)
        fields = {f: getattr(key, f, None) for f in KEY_FIELDS}
        return {**record, "blob": blob, "fields": fields, "metadata": dict(key._metadata)}

    def restore(self, backends: dict) -> None:
        """Put the persisted buckets and object versions into empty moto backends."""
        from moto.s3.models import FakeDeleteMarker, FakeKey

        for name, config in self.buckets.items():
            backend = backends[config["account"]][config["partition"]]
            bucket = backend.create_bucket(name, config["region"])
            bucket.versioning_status = config["versioning"]
            if config["policy"] is not None:
                bucket.policy = config["policy"].encode()
        for record in self.objects.values():
            bucket = backends[record["account"]][self.buckets[record["bucket"]]["partition"]
                                                 ].get_bucket(record["bucket"])
            if record.get("delete_marker"):
                stub = FakeKey(record["key"], b"", record["account"], record["region"])
                key = FakeDeleteMarker(stub)
            else:
                value = (self.blobs / record["blob"]).read_bytes()
                key = FakeKey(record["key"], value, record["account"], record["region"],
                              bucket_name=record["bucket"])
                key.__dict__.update(record["fields"])
                key._metadata.update(record["metadata"])
            key._version_id = record["version_id"]
            key.last_modified = datetime.fromisoformat(record["last_modified"])
            versions = bucket.keys.getlist(record["key"], [])
            bucket.keys.setlist(record["key"], [*versions, key])


def scan(backends: dict, only_bucket: str | None = None, only_key: str | None = None
         ) -> tuple[dict[str, dict], dict[Id, tuple[str, Any]]]:
    """The settings of every bucket and every object version in the backends (or in one bucket,
    or one key of it), with the fingerprints that tell a changed version."""
    buckets, objects = {}, {}
    for account, partitions in backends.items():
        for partition, backend in partitions.items():
            for name, bucket in list(backend.buckets.items()):
                if only_bucket not in (None, name):
                    continue
                policy = bucket.policy.decode() if isinstance(bucket.policy, bytes) else None
                buckets[name] = {"account": account, "partition": partition,
                                 "region": bucket.region_name,
                                 "versioning": bucket.versioning_status, "policy": policy}
                listed = ([(only_key, bucket.keys.getlist(only_key, []))] if only_key
                          else list(bucket.keys.iterlists()))
                for key_name, versions in listed:
                    for key in list(versions):
                        etag = getattr(key, "etag", "delete-marker")
                        fingerprint = f"{etag}|{key.last_modified.isoformat()}"
                        objects[(name, key_name, key.version_id)] = (fingerprint, key)
    return buckets, objects

"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _temp_beside(dest: str) -> tuple[int, str]:
    """Create a new empty file beside dest; return its open descriptor and path."""
    folder, name = os.path.split(dest)
    made_parent = False
    while True:
        # Plain strings, not pathlib: crops write thousands of small files a second.
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.part")
        try:
            # Mode 0o666 lets the kernel apply the umask (or a default ACL): the result gets
            # the permissions open() would give, with no chmod afterwards.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue  # another writer drew the same 48 random bits: draw again
        except FileNotFoundError:
            if made_parent:
                raise
            # Only on a miss: a mkdir before every write costs a syscall per small file.
            os.makedirs(folder or ".", exist_ok=True)
            made_parent = True


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside dest; rename it onto dest only if the block succeeds."""
    fd, tmp = _temp_beside(os.fspath(dest))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write data to dest atomically, through a single descriptor (cheap for many small files)."""
    fd, tmp = _temp_beside(os.fspath(dest))
    try:
        with open(fd, "wb") as sink:
            sink.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(dest: Path, text: str) -> None:
    """Write text to dest atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: Path, obj: Any) -> None:
    """Write obj as indented JSON to dest atomically."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(dest: Path, frame: Any) -> None:
    """Write a pandas DataFrame to dest as Parquet atomically."""
    with atomic_path(dest) as tmp:
        frame.to_parquet(tmp, index=False)

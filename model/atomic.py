"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import itertools
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_serial = itertools.count()
_token = (0, "")  # (pid, random hex) of the process that drew it


def _unique() -> str:
    """A name part no other writer uses: 48 random bits per process, then a count per file
    (one draw per file would cost a system call per crop)."""
    global _token
    if _token[0] != os.getpid():  # a forked child must not repeat its parent's names
        _token = (os.getpid(), secrets.token_hex(6))
    return f"{_token[1]}-{next(_serial)}"


def _temp_beside(dest: str) -> tuple[int, str]:
    """Create a new empty file beside dest; return its open descriptor and path."""
    folder, name = os.path.split(dest)
    made_parent = False
    while True:
        # Plain strings, not pathlib: crops write thousands of small files a second.
        tmp = os.path.join(folder, f".{name}.{_unique()}.part")
        try:
            # Mode 0o666 lets the kernel apply the umask (or a default ACL): the result gets
            # the permissions open() would give, with no chmod afterwards.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue  # another process drew the same 48 random bits: count on
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
        # os.write, not a file object: that would add three system calls per small file.
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest):]
        os.close(fd)
        fd = -1
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
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

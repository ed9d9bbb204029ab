"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside dest; rename it onto dest only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes owner-only files; give the result the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
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

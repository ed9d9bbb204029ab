"""Box ids: the first 10 hex digits of the SHA-1 of "ImageID|LabelName|XMin|XMax|YMin|YMax",
coordinates written as Python's "{:.6f}". Crops and datasets are named after them, so they
must never change; the cache stores their 40-bit numbers so a selection only reads them."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.openimages import arrow

COORDINATES = ("XMin", "XMax", "YMin", "YMax")
SLICE = 262_144  # keys turned into Python bytes at a time: 90 bytes of objects per box


def _fixed6(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Coordinates as Python's "{:.6f}" writes them.

    A float32 times 10**6 is exact in float64 (24 + 14 significant bits), so rint (half to
    even) rounds exactly as the formatting of the exact value does; other types and unusual
    values take Python's own formatting.
    """
    x = arrow.numpy(column).astype(np.float64)  # nulls become NaN, formatted as pandas did
    if column.type != pa.float32() or not (np.abs(x) < 1e9).all():
        return arrow.strings([f"{v:.6f}" for v in x.tolist()])
    scaled = np.rint(np.abs(x) * 1e6).astype(np.int64)
    if not np.signbit(x).any() and (scaled < 10_000_000).all():
        return _one_digit(scaled)
    whole, part = np.divmod(scaled, 1_000_000)
    sign = pc.if_else(arrow.array(np.signbit(x)), arrow.scalar("-"), arrow.scalar(""))
    return pc.binary_join_element_wise(
        sign, pc.cast(arrow.array(whole), pa.string()), arrow.scalar("."),
        pc.utf8_lpad(pc.cast(arrow.array(part), pa.string()), width=6, padding="0"),
        arrow.scalar(""))


def _one_digit(scaled: np.ndarray) -> pa.Array:
    """Values 0 <= v < 10 (as v * 10**6, rounded) as "d.dddddd": every box coordinate, all of
    the same width, so the text is built in numpy rather than by string kernels."""
    n = len(scaled)
    text = np.empty((n, 8), dtype=np.uint8)
    text[:, 1] = ord(".")
    for place, column in zip(range(6, -1, -1), (0, 2, 3, 4, 5, 6, 7), strict=True):
        text[:, column] = ord("0") + (scaled // 10**place) % 10
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(text)])


def _keys(boxes: pa.Table) -> pa.Array:
    keys = pc.binary_join_element_wise(
        boxes["ImageID"].cast(pa.string()), boxes["LabelName"].cast(pa.string()),
        *(_fixed6(boxes[c]) for c in COORDINATES), arrow.scalar("|"))
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def box_numbers(boxes: pa.Table) -> np.ndarray:
    """The box ids of a table's rows as 40-bit numbers (uint64)."""
    keys = _keys(boxes).cast(pa.binary())
    n = len(keys)
    sha1 = hashlib.sha1
    # One hash call per box is the only per-row Python: hashlib has no batch API.
    digests = b"".join([
        b"".join([sha1(k).digest()[:5] for k in keys.slice(start, SLICE).to_pylist()])
        for start in range(0, n, SLICE)])
    raw = np.zeros((n, 8), dtype=np.uint8)
    raw[:, 3:] = np.frombuffer(digests, dtype=np.uint8).reshape(n, 5)
    return raw.view(">u8").ravel().astype(np.uint64)


def box_id_text(numbers: np.ndarray) -> pa.Array:
    """40-bit box numbers as their 10 lowercase hex digits."""
    n = len(numbers)
    raw = np.ascontiguousarray(numbers, dtype=np.uint64).astype(">u8").view(np.uint8)
    digits = raw.reshape(n, 8)[:, 3:].tobytes().hex().encode()
    offsets = np.arange(0, 10 * n + 1, 10, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(digits)])

"""Arrow arrays and scalars from numpy arrays and Python values, without loading pandas.

pa.array() and pa.scalar(), and so every compute call handed a numpy array or a Python value,
first ask whether the value is a pandas object, which imports pandas: 0.2 s, a third of a
warm selection's whole process. These build the same values from buffers instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _bits(flags: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(flags.astype(bool, copy=False), bitorder="little"))


def array(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """A numeric or boolean numpy array as an Arrow array (null where mask is true), as
    pa.array(values, mask=mask) makes it."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D array, got shape {values.shape}")
    if values.dtype == np.bool_:
        kind, data = pa.bool_(), _bits(values)
    else:
        kind, data = pa.from_numpy_dtype(values.dtype), pa.py_buffer(values)
    if mask is None or not mask.any():
        return pa.Array.from_buffers(kind, len(values), [None, data], null_count=0)
    return pa.Array.from_buffers(kind, len(values), [_bits(~mask), data],
                                 null_count=int(np.count_nonzero(mask)))


def strings(values: Iterable[str]) -> pa.Array:
    """Python strings as an Arrow string array."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(value) for value in encoded], dtype=np.int64)
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                 null_count=0)


def scalar(value: str | bool | int | float, kind: pa.DataType | None = None) -> pa.Scalar:
    """A Python value as an Arrow scalar, for compute calls: of type kind if given, else
    string, bool, int64 or float64 (pc.fill_null wants the type of its values)."""
    found = strings([value])[0] if isinstance(value, str) else array(np.asarray([value]))[0]
    return found if kind is None else found.cast(kind)


def numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric Arrow array as numpy, as values.to_numpy() gives it (nulls as NaN): a view
    of its buffer where it can be."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return numpy(values.chunk(0))
        return np.concatenate([numpy(chunk) for chunk in values.chunks] or
                              [np.zeros(0, dtype=values.type.to_pandas_dtype())])
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise TypeError(f"expected a numeric array, got {values.type}")
    if values.null_count:
        kind = values.type if pa.types.is_floating(values.type) else pa.float64()
        values = pc.fill_null(values.cast(kind), array(np.array([np.nan]))[0].cast(kind))
    dtype = np.dtype(values.type.to_pandas_dtype())
    data = np.frombuffer(values.buffers()[1], dtype=dtype)
    return data[values.offset:values.offset + len(values)]

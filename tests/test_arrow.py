"""Arrow values built from buffers equal pyarrow's own conversions, without loading pandas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.openimages import arrow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint64, np.float32,
                                   np.float64, np.bool_])
def test_arrays_equal_pa_array_with_and_without_a_mask(dtype):
    values = (np.arange(37) % 5).astype(dtype)
    mask = np.arange(37) % 3 == 0
    for view in (values, values[3:30], values[::2]):
        assert arrow.array(view).equals(pa.array(view))
        assert arrow.array(view, mask=mask[:len(view)]).equals(
            pa.array(view, mask=mask[:len(view)]))
    assert arrow.array(values[:0]).equals(pa.array(values[:0]))


def test_strings_and_scalars_equal_pyarrow_s():
    for texts in ([], ["", "a"], ["Hamburger", "Ice cream", "Crème brûlée"]):
        assert arrow.strings(texts).equals(pa.array(texts, pa.string()))
    for value in ("-", "", 1, -1, 0.5, True):
        assert arrow.scalar(value).equals(pa.scalar(value))
    assert arrow.scalar(-1, pa.int8()).equals(pa.scalar(-1, pa.int8()))


def test_numpy_equals_to_numpy_for_slices_chunks_and_nulls():
    whole = pa.array(np.arange(20, dtype=np.uint64))
    assert (arrow.numpy(whole.slice(5, 7)) == whole.slice(5, 7).to_numpy()).all()
    chunked = pa.chunked_array([whole.slice(0, 3), whole.slice(10, 4)])
    assert (arrow.numpy(chunked) == chunked.to_numpy()).all()
    assert arrow.numpy(pa.chunked_array([], pa.uint64())).dtype == np.uint64
    with_nulls = pa.array([1.5, None, 2.0], pa.float32())
    assert np.array_equal(arrow.numpy(with_nulls), with_nulls.to_numpy(zero_copy_only=False),
                          equal_nan=True)
    ints = pa.array([1, None, 3], pa.int8())
    assert np.array_equal(arrow.numpy(ints), ints.to_numpy(zero_copy_only=False),
                          equal_nan=True)
    with pytest.raises(TypeError):
        arrow.numpy(pa.array(["a"]))


def test_none_of_them_loads_pandas_where_pyarrow_s_own_would():
    code = ("import sys, numpy as np, pyarrow.compute as pc\n"
            "from flows.openimages import arrow\n"
            "flags = arrow.array(np.array([1, 0, -1], np.int8), mask=np.array([0, 1, 0], bool))\n"
            "kept = pc.not_equal(pc.fill_null(flags, arrow.scalar(-1, flags.type)), "
            "arrow.scalar(1))\n"
            "arrow.numpy(flags); arrow.strings(['a']).take(arrow.array(np.array([0, 0])))\n"
            "print('pandas' in sys.modules, end=' ')\n"
            "pc.equal(flags, 1)\n"  # pyarrow's own conversion of a Python value
            "print('pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_compute_calls_take_them_as_they_take_python_values():
    flags = pa.array([1, None, 0, -1], pa.int8())
    assert pc.fill_null(flags, arrow.scalar(-1, flags.type)).equals(pc.fill_null(flags, -1))
    assert pc.equal(flags, arrow.scalar(1)).equals(pc.equal(flags, 1))

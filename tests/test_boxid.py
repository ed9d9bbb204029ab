"""Box ids: numbers stored by the cache and text written to selections match the SHA-1 ids
every earlier release wrote, for every kind of coordinate."""

import hashlib

import numpy as np
import pyarrow as pa

from flows.openimages.boxid import box_id_text, box_numbers


def reference(ids, labels, coordinates) -> list[str]:
    """The ids as the first releases computed them: Python formatting, one SHA-1 per box."""
    return [hashlib.sha1("|".join([i, label, *(f"{float(v):.6f}" for v in box)]).encode())
            .hexdigest()[:10] for i, label, box in zip(ids, labels, coordinates, strict=True)]


def table(ids, labels, columns, kind=None):
    return pa.table({"ImageID": ids, "LabelName": labels,
                     **{name: pa.array(values, kind or pa.float32()) for name, values in
                        zip(("XMin", "XMax", "YMin", "YMax"), columns, strict=True)}})


def test_numbers_and_text_match_the_sha1_of_every_kind_of_coordinate():
    rng = np.random.default_rng(3)
    n = 5000
    x = rng.random((4, n), dtype=np.float32)
    x[0, :500] = (2 * rng.integers(0, 64, 500) + 1) / 128  # ties at the sixth decimal
    x[1, :50], x[2, :50], x[3, :50] = 0.0, 1.0, np.float32(0.9999999)
    ids = [f"{k:016x}" for k in rng.integers(0, 2**63, n)]
    labels = rng.choice(["/m/0k4j", "/m/0cdn1", "/m/01g317"], n).tolist()
    got = box_id_text(box_numbers(table(ids, labels, x)))
    assert got.to_pylist() == reference(ids, labels, x.T)
    assert got.type == pa.string() and set(map(len, got.to_pylist())) == {10}


def test_values_outside_a_box_take_the_general_formatting():
    # Not in a valid box, but a table may hold them: -0.0, large, negative, double.
    columns = [[-0.0, 12.5], [-0.25, 3e8], [0.5, 0.1], [1.0, 0.7]]
    ids, labels = ["000000000000000a", "000000000000000b"], ["/m/a", "/m/b"]
    for kind in (pa.float32(), pa.float64()):
        values = np.array(columns, dtype=kind.to_pandas_dtype())
        got = box_id_text(box_numbers(table(ids, labels, values, kind))).to_pylist()
        assert got == reference(ids, labels, values.T)


def test_text_is_the_number_in_ten_hex_digits():
    numbers = np.array([0, 1, 0xABCDEF0123, 2**40 - 1], dtype=np.uint64)
    assert box_id_text(numbers).to_pylist() == ["0000000000", "0000000001", "abcdef0123",
                                                "ffffffffff"]
    assert box_id_text(np.zeros(0, dtype=np.uint64)).to_pylist() == []

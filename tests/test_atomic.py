"""Atomic writes: all or nothing, no temp files left, names no other writer uses."""

import os

import pytest

from model import atomic
from model.atomic import write_bytes


def test_write_bytes_makes_the_folder_and_leaves_nothing_else(tmp_path):
    dest = tmp_path / "Car" / "img_b0.jpg"
    write_bytes(str(dest), b"first")
    write_bytes(dest, b"second")
    assert dest.read_bytes() == b"second"
    assert os.listdir(dest.parent) == ["img_b0.jpg"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    dest = tmp_path / "img.jpg"
    write_bytes(dest, b"old")
    calls, real_write = [], os.write

    def short_then_fail(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_write(fd, data[:3])

    monkeypatch.setattr(atomic.os, "write", short_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_bytes(dest, b"new and longer")
    monkeypatch.undo()
    assert calls == [14, 11]  # a short write is continued, not taken as the end
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["img.jpg"]


def test_temp_names_are_unique_per_file_and_redrawn_in_a_child_process(monkeypatch):
    first, second = atomic._unique(), atomic._unique()
    assert first != second and first.split("-")[0] == second.split("-")[0]
    monkeypatch.setattr(atomic.os, "getpid", lambda: -1)  # as a forked child sees it
    assert atomic._unique().split("-")[0] != first.split("-")[0]

"""A pytest plugin for tests/test_testing.py: a collection also prints each selected test's
markers (those conftest.py adds included), so one collection of the whole suite answers what
any `-m` expression would select from it."""

from __future__ import annotations

import pytest

PREFIX = "markers\t"


def markers(item: pytest.Item) -> list[str]:
    return sorted({mark.name for mark in item.iter_markers()})


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        print(f"{PREFIX}{item.nodeid}\t{','.join(markers(item))}")

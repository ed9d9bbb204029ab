"""The in-worker batcher: concurrent requests share model calls, each gets its own rows."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import Batcher, Overloaded


class Model:
    """Echoes each image's first pixel; calls wait for `release` so requests pile up."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, str]:
        self.calls.append(len(batch))
        self.release.wait(10)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("model failed")
        return batch[:, 0, 0, 0].astype(np.float32), f"call {len(self.calls)}"


def images(first: int, n: int = 1) -> np.ndarray:
    out = np.zeros((n, 2, 2, 3), np.uint8)
    out[:, 0, 0, 0] = np.arange(first, first + n)
    return out


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def busy(model: Model, **options: float) -> tuple[Batcher, asyncio.Future]:
    """A batcher whose first call (one image) is running, held by the model."""
    batcher = Batcher(model, **options)
    first = asyncio.ensure_future(batcher(images(0)))
    await settle()
    return batcher, first


def test_requests_arriving_during_a_call_form_the_next_batch_and_get_their_own_rows():
    async def scenario():
        model, sizes = Model(), []
        batcher = Batcher(model, max_size=32, max_wait_seconds=30, observe=sizes.append)
        first = asyncio.ensure_future(batcher(images(1)))
        await settle()  # the first call runs alone, at once
        rest = [asyncio.ensure_future(batcher(images(10 * i, n))) for i, n in
                ((2, 1), (3, 3), (4, 2))]
        await settle()
        model.release.set()
        return await first, await asyncio.gather(*rest), model.calls, sizes

    first, rest, calls, sizes = asyncio.run(scenario())
    assert calls == sizes == [1, 6]
    assert first[0].tolist() == [1] and first[1] == "call 1"
    assert [r[0].tolist() for r in rest] == [[20], [30, 31, 32], [40, 41]]
    assert {r[1] for r in rest} == {"call 2"}


def test_a_batch_never_exceeds_max_size_but_a_bigger_request_goes_alone():
    async def scenario():
        model = Model()
        batcher, blocker = await busy(model, max_size=4, max_wait_seconds=30)
        waiting = [asyncio.ensure_future(batcher(images(i, n))) for i, n in
                   ((1, 3), (4, 2), (6, 6), (12, 1))]
        await settle()
        model.release.set()
        await blocker
        return await asyncio.gather(*waiting), model.calls

    answers, calls = asyncio.run(scenario())
    assert calls == [1, 3, 2, 6, 1]
    assert [a[0].tolist() for a in answers] == [[1, 2, 3], [4, 5], list(range(6, 12)), [12]]


def test_a_request_that_waited_too_long_is_shed_and_the_rest_still_answered():
    async def scenario():
        model = Model()
        batcher, blocker = await busy(model, max_size=32, max_wait_seconds=0.2)
        late = asyncio.ensure_future(batcher(images(1)))
        await asyncio.sleep(0.4)  # waits past the limit behind the running call
        model.release.set()
        await blocker
        fresh = await batcher(images(2))
        with pytest.raises(Overloaded, match="overloaded, retry"):
            await late
        return fresh, model.calls

    fresh, calls = asyncio.run(scenario())
    assert fresh[0].tolist() == [2] and calls == [1, 1]


def test_a_failed_call_fails_its_requests_only_and_a_gone_client_is_skipped():
    async def scenario():
        model = Model(fail_on=2)
        batcher, blocker = await busy(model, max_size=32, max_wait_seconds=30)
        failing = [asyncio.ensure_future(batcher(images(i))) for i in (1, 2)]
        gone = asyncio.ensure_future(batcher(images(3)))
        await settle()
        gone.cancel()
        model.release.set()
        await blocker
        results = await asyncio.gather(*failing, return_exceptions=True)
        return results, await batcher(images(4)), model.calls

    results, after, calls = asyncio.run(scenario())
    assert [str(r) for r in results] == ["model failed"] * 2
    assert after[0].tolist() == [4] and calls == [1, 2, 1]

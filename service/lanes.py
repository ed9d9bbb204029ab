"""Decoding uploads in a worker: in threads, a bounded number at once, large decodes in a
narrower lane of their own, into one batch for the model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import numpy as np

from service import images
from service.config import Limits
from service.images import LARGE_PIXELS, BadImage, Source


class Lanes:
    """How many uploads one worker decodes at once, large ones in a narrower lane of
    their own: a burst of large uploads then waits for itself, never in front of small ones.
    After each large decode its lane rests as long as the decode took CPU, so large uploads
    take at most half a core per lane whatever their rate."""

    def __init__(self, threads: int, large_threads: int, large_pixels: int = LARGE_PIXELS
                 ) -> None:
        self.threads, self.large_threads, self.large_pixels = threads, large_threads, large_pixels
        self._limiters: tuple[anyio.CapacityLimiter, anyio.CapacityLimiter] | None = None

    def limiters(self) -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
        """The small and the large lane, made in the event loop that uses them."""
        if self._limiters is None:
            self._limiters = (anyio.CapacityLimiter(self.threads),
                              anyio.CapacityLimiter(self.large_threads))
        return self._limiters

    async def small(self, work: Callable[[], Any]) -> Any:
        """Run work in the small lane."""
        return await anyio.to_thread.run_sync(work, limiter=self.limiters()[0])

    async def run(self, pixels: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """Run a decode producing this many pixels in its lane."""
        if pixels <= self.large_pixels:
            return await self.small(decode)
        async with self.limiters()[1]:
            result, cpu_seconds = await anyio.to_thread.run_sync(timed, decode)
            await rest(cpu_seconds)
        return result


def timed(decode: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """The decode's result and the CPU seconds its thread spent on it."""
    start = time.thread_time()
    result = decode()
    return result, time.thread_time() - start


async def rest(seconds: float) -> None:
    """Keep a large decode's lane idle this long."""
    await anyio.sleep(seconds)


async def prepare_all(paths: list[Source], size: int, limits: Limits, lanes: Lanes
                      ) -> np.ndarray:
    """Decode uploads in threads, each in its lane, into one uint8 batch (upload order)."""

    async def one(index: int, path: Source) -> np.ndarray:
        try:
            # The header says the cost: a small decode runs at once in the same thread (one
            # thread hop for most uploads); a large one then waits for its own lane.
            done = await lanes.small(partial(images.prepare_if_small, path, size, limits,
                                             lanes.large_pixels))
            if isinstance(done, np.ndarray):
                return done
            return await lanes.run(done, partial(images.prepare, path, size, limits))
        except BadImage as error:
            error.index = index
            raise

    if len(paths) == 1:  # no task to gather
        return (await one(0, paths[0]))[None]
    return np.stack(await asyncio.gather(*(one(i, p) for i, p in enumerate(paths))))

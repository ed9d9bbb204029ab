"""Adaptive batching inside each worker: the images of concurrent requests go to the model
together, without a second process.

One model call runs at a time, in a thread; the requests that arrive meanwhile wait and form
the next batch, up to max_size images. Under light load a request goes alone at once; under
heavy load batches grow as long as a call takes. A request that waited longer than
max_wait_seconds is shed (503, retry) rather than answered late.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Overloaded(Exception):
    """A request waited for the model longer than the service allows."""


@dataclass
class Waiting:
    """One request's images and where its answer goes."""

    pixels: np.ndarray
    future: asyncio.Future
    since: float = field(default_factory=time.monotonic)


class Batcher:
    """Runs `predict(batch) -> (outputs, extra)` one call at a time over merged requests;
    each request gets its rows of outputs and the call's extra (the model that answered)."""

    def __init__(self, predict: Callable[[np.ndarray], tuple[np.ndarray, Any]], max_size: int,
                 max_wait_seconds: float, observe: Callable[[int], None] | None = None) -> None:
        self.predict, self.max_size, self.max_wait = predict, max_size, max_wait_seconds
        self.observe = observe or (lambda size: None)
        self.waiting: deque[Waiting] = deque()
        self.running = False

    async def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        """The model's outputs for these images (computed with others'), and the extra."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(Waiting(pixels, future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self.drain())
        return await future

    def take(self) -> list[Waiting]:
        """The next batch: waiting requests in order while they fit (one at least); those
        that waited too long get Overloaded instead."""
        taken: list[Waiting] = []
        count, now = 0, time.monotonic()
        while self.waiting:
            head = self.waiting[0]
            if head.future.done():  # its client has gone: no model work for it
                self.waiting.popleft()
                continue
            if now - head.since > self.max_wait:
                self.waiting.popleft()
                head.future.set_exception(Overloaded(
                    f"waited {now - head.since:.1f} s for the model (limit "
                    f"{self.max_wait:g} s): the server is overloaded, retry"))
                continue
            if taken and count + len(head.pixels) > self.max_size:
                break
            taken.append(self.waiting.popleft())
            count += len(head.pixels)
        return taken

    async def drain(self) -> None:
        """Run batches until nothing waits."""
        try:
            while taken := self.take():
                batch = taken[0].pixels if len(taken) == 1 else np.concatenate(
                    [w.pixels for w in taken])
                self.observe(len(batch))
                try:
                    outputs, extra = await asyncio.to_thread(self.predict, batch)
                except Exception as error:  # noqa: BLE001 - every request of the batch gets it
                    for w in taken:
                        if not w.future.done():
                            w.future.set_exception(error)
                    continue
                start = 0
                for w in taken:
                    if not w.future.done():  # its client may have gone
                        w.future.set_result((outputs[start:start + len(w.pixels)], extra))
                    start += len(w.pixels)
        finally:
            self.running = False

"""Progress of long steps on stderr: a live tqdm bar on a terminal, one line per step elsewhere.

    with step("downloading x.csv", total=size, done="downloaded x.csv") as advance:
        for block in blocks:
            advance(len(block))

Off a terminal (logs, CI, Prefect workers) a bar would flood the output with carriage
returns, so each step prints one line when it ends: `metadata: downloaded x.csv (2.2 GB) in
12.3 s`, or `... failed after 3.1 s`. Data code takes a step function as a parameter (see
flows.openimages.fetch.Progress) instead of importing this module.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TextIO

Advance = Callable[[int], None]


def amount(n: int, unit: str) -> str:
    """A count for people: bytes in decimal units (2.2 GB), anything else with separators."""
    if unit != "B":
        return f"{n:,} {unit}"
    size = float(n)
    for prefix in ("", "k", "M", "G", "T"):
        if size < 1000 or prefix == "T":
            return f"{n} B" if not prefix else f"{size:.1f} {prefix}B"
        size /= 1000
    raise AssertionError("unreachable")


@contextmanager
def step(what: str, total: int | None = None, *, done: str | None = None, unit: str = "B",
         stage: str | None = None, stream: TextIO | None = None,
         bar: bool | None = None) -> Iterator[Advance]:
    """Report one step; yields advance(n). bar=None draws a bar only when stream is a tty."""
    out = stream if stream is not None else sys.stderr
    live = out.isatty() if bar is None else bar
    prefix = f"{stage}: " if stage else ""
    started = time.monotonic()
    count = 0
    if live:  # loaded only for a bar: a command whose output is a log never draws one
        from tqdm import tqdm
    meter = tqdm(total=total, desc=prefix + what, unit=unit, unit_scale=unit == "B",
                 unit_divisor=1000, file=out, leave=True, dynamic_ncols=True) if live else None

    def advance(n: int) -> None:
        nonlocal count
        count += n
        if meter is not None:
            meter.update(n)

    try:
        yield advance
    except BaseException:
        if meter is not None:
            meter.close()
        print(f"{prefix}{what} failed after {time.monotonic() - started:.1f} s", file=out,
              flush=True)
        raise
    if meter is not None:
        meter.set_description_str(prefix + (done or what))
        meter.close()
        return
    seconds = time.monotonic() - started
    size = f" ({amount(count or total or 0, unit)})" if count or total else ""
    print(f"{prefix}{done or what}{size} in {seconds:.1f} s", file=out, flush=True)


def stepper(stage: str, **options: object) -> Callable[..., object]:
    """step() with the stage's name in front of every line, to hand to data code."""
    return partial(step, stage=stage, **options)

"""Load generator, run as its own process: N concurrent clients POST JPEGs for a fixed time.

    python benchmarks/load.py URL FIELD CONCURRENCY SECONDS IMAGE...

FIELD names the multipart field of the image, or is - to send the image as the request body
(Content-Type image/jpeg).
Prints one JSON line: requests, errors, statuses, req/s, p50 and p99 latency in ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp


async def client(session: aiohttp.ClientSession, url: str, field: str, images: list[bytes],
                 offset: int, stop: float, latencies: list[float], statuses: dict[int, int]
                 ) -> None:
    """Post images one after another until stop; record each latency and status."""
    i = offset
    while time.perf_counter() < stop:
        if field == "-":
            body, headers = images[i % len(images)], {"Content-Type": "image/jpeg"}
        else:
            body, headers = aiohttp.FormData(), None
            body.add_field(field, images[i % len(images)], filename=f"{i}.jpg",
                           content_type="image/jpeg")
        i += 1
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            status = 0  # connection failed or timed out: counted as an error, the run goes on
        latencies.append(time.perf_counter() - start)
        statuses[status] = statuses.get(status, 0) + 1


async def run(url: str, field: str, concurrency: int, seconds: float, images: list[bytes]
              ) -> dict:
    """Run the clients and summarise."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(*(client(session, url, field, images, n * 7, stop, latencies,
                                      statuses) for n in range(concurrency)))
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"requests": len(ordered), "errors": sum(n for s, n in statuses.items() if s != 200),
            "statuses": statuses, "rps": round(len(ordered) / elapsed, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def main() -> None:
    """Command line entry."""
    url, field, concurrency, seconds, *paths = sys.argv[1:]
    images = [Path(p).read_bytes() for p in paths]
    print(json.dumps(asyncio.run(run(url, field, int(concurrency), float(seconds), images))))


if __name__ == "__main__":
    main()

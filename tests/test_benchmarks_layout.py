"""The layout benchmark runs end to end in its quick mode (no timing is asserted), and its
one-process server batches concurrent requests."""

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_micro_batcher_merges_waiting_requests_and_splits_the_answers():
    from benchmarks.one_process import Batcher

    calls = []

    def predict(batch):
        calls.append(len(batch))
        return batch[:, :1] * 10

    async def run():
        batcher = Batcher(predict, max_size=4)
        inputs = [np.full((n, 2), i, float) for i, n in enumerate((1, 2, 1, 3, 1))]
        return inputs, await asyncio.gather(*(batcher(x) for x in inputs))

    inputs, outputs = asyncio.run(run())
    for x, out in zip(inputs, outputs, strict=True):
        assert out.shape == (len(x), 1) and (out == x[:, :1] * 10).all()
    # All five arrive before the first call: batches of whole requests, at most 4 images.
    assert calls == [4, 4]


@pytest.mark.integration
def test_quick_layout_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layout.py"), "--quick"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    cases = [re.match(r"(\S+)\s+c=(\d+)", line).groups() for line in lines if " req/s " in line]
    assert cases == [("two-proc", "4"), ("one-proc", "4")]
    assert all("errors 0" in line and "outside" in line for line in lines if " req/s " in line)
    assert re.fullmatch(r"layout seed-cnn c=4: one-process/two-process throughput \d+\.\d+x; "
                        r".* CPU outside the model -?\d+\.\d vs -?\d+\.\d ms/request .*",
                        lines[-1])

"""The serving benchmark runs end to end in its quick mode (no timing is asserted), and its
CPU accounting adds up."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import serve

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_outside_the_model_is_the_tree_minus_the_model_at_the_formed_batches():
    raw = {"cpu": {1: {"cpu_ms": 4.0}, 2: {"cpu_ms": 3.0}, 4: {"cpu_ms": 2.0}},
           "all": {1: {"img_s": 100.0}, 2: {"img_s": 200.0}, 4: {"img_s": 400.0}}}
    before = ({"http": 1.0, "model": 2.0}, {1: 5.0, 2: 0.0, 4: 0.0})
    # 10 requests: 2 batches of 1 and 2 of 4 (8 images) = 10 images; 0.1 s of CPU in all.
    after = ({"http": 1.06, "model": 2.04}, {1: 7.0, 2: 0.0, 4: 2.0})
    split = serve.cpu_split(before, after, {"requests": 10}, raw)
    assert split["roles"] == pytest.approx({"http": 6.0, "model": 4.0})
    assert split["model"] == pytest.approx((2 * 4.0 + 8 * 2.0) / 10)
    assert split["outside"] == pytest.approx(10 - 2.4)
    assert split["mean_batch"] == pytest.approx(2.5)
    assert split["raw_img_s"] == pytest.approx(10 / (2 / 100 + 8 / 400))
    # A server that does not batch: one image per model call.
    plain = serve.cpu_split(({"worker": 0.0}, {}), ({"worker": 0.1}, {}), {"requests": 10}, raw)
    assert plain["model"] == 4.0 and plain["mean_batch"] == 1 and plain["outside"] == 6.0


@pytest.mark.integration
def test_quick_serving_benchmark():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("raw seed-cnn predict_on_batch")
    assert [b for b in re.findall(r"b=(\d+) \d+ img/s \d+\.\d+ ms", lines[0])] == [
        "1", "2", "4", "8", "16", "32"]
    cases = [re.match(r"([\w-]+)\s+c=(\d+)", line).groups() for line in lines
             if " req/s " in line]
    # Both forms alternate on one server, then both bare routes on another.
    assert cases == [("form", "1"), ("raw", "1"), ("form", "4"), ("raw", "4"),
                     ("bare-form", "1"), ("bare-raw", "1"), ("bare-form", "4"),
                     ("bare-raw", "4"), ("naive", "1"), ("naive", "4"), ("logged", "4"),
                     ("unlogged", "4")]
    for line in (line for line in lines if " req/s " in line):
        assert "p99" in line and "errors 0" in line
        cpu = re.search(r"CPU/request (\d+\.\d) ms \((.*)\): model (\d+\.\d), outside "
                        r"(-?\d+\.\d), mean batch (\d+\.\d)", line)
        assert cpu, line
        total, roles, model, outside, batch = cpu.groups()
        assert (float(model) == 0) == line.startswith("bare") and float(batch) >= 1
        assert float(total) == pytest.approx(float(model) + float(outside), abs=0.15)
        if not line.startswith("naive"):
            assert "worker" in roles  # BentoML's workers were counted
    assert all("memory per worker" in line for line in lines
               if " req/s " in line and "logged" not in line)
    ratios = [line for line in lines if line.startswith("ratios")]
    assert [line.split(":")[0] for line in ratios] == ["ratios seed-cnn c=1",
                                                        "ratios seed-cnn c=4"]
    assert all(re.search(r"CPU outside the model per request, raw \d+\.\d+ ms / bare raw route "
                         r"-?\d+\.\d+ ms = -?\d+\.\d+x .* throughput over predict_on_batch: "
                         r"raw \d+\.\d+ .* form \d+\.\d+", line) for line in ratios), ratios
    assert re.fullmatch(r"prediction log c=4: logged/unlogged throughput \d+\.\d+x .*"
                        r"ms CPU/request.*", lines[-1])

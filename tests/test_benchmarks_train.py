"""benchmarks/train.py --quick runs every case end to end (no timing is asserted)."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# find_spec, not importorskip: importing Keras at collection costs every worker seconds.
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                 reason="keras is not installed")]


def test_quick_benchmark_prints_every_case(sample_workspace, capsys):
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--sample-workspace", str(sample_workspace)]) == 0
    out = capsys.readouterr().out
    for case in ("(a) seed ImageDataGenerator", "(b) openimager tf.data, epoch 1",
                 "(b) openimager tf.data, epoch 2", "(s) openimager tf.data from shards",
                 "(c) ceiling"):
        line = next(line for line in out.splitlines() if line.startswith(case))
        assert float(re.search(r"([\d.]+) img/s", line).group(1)) > 0
    for kind in ("wall", "CPU"):
        assert re.search(rf"epoch 1 +{kind}: b/a = [\d.]+ .* b/c = [\d.]+", out)
    assert re.search(r"shards/files epoch 1 +wall: s/b = [\d.]+", out)
    accuracy = re.search(r"held-out accuracy .*: \(a\) ([\d.]+) +\(b\) ([\d.]+)", out)
    assert accuracy and all(0 <= float(v) <= 1 for v in accuracy.groups())

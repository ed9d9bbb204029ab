"""The metadata benchmark runs end to end in its quick mode (no timing is asserted)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_metadata", ROOT / "benchmarks/metadata.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_quick_metadata_benchmark(tmp_path):
    # The command docs/metadata.md shows, with a workdir of its own.
    assert "\npython benchmarks/metadata.py --quick\n" in (ROOT / "docs/metadata.md").read_text()
    done = subprocess.run([sys.executable, "benchmarks/metadata.py", "--quick",
                           "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=True)
    lines = done.stdout.splitlines()
    cases = [line.split(":")[0].split()[1] for line in lines if line.startswith("metadata ")
             and ("peak RSS" in line or "skipped" in line)]
    assert sorted(cases) == sorted(["pandas2", "pandasbig", "duckdb", "cold", "build", "warm2",
                                    "warm20", "warmbig"])
    assert any(line.startswith("metadata goals: warm2 ") for line in lines)
    assert "rows equal True" in lines[-1]
    # The selections were whole commands that wrote their file, not in-process calls.
    assert (tmp_path / "200000" / "selection-warmbig.parquet").exists()


def test_the_command_template_names_the_classes_and_the_workspace(tmp_path):
    argv = bench.select_argv(["Hamburger", "Sandwich"], tmp_path)
    assert argv[1:4] == ["-m", "flows", "select"]
    assert argv[-5:] == ["--classes", "Hamburger", "Sandwich", "--workspace", str(tmp_path)]

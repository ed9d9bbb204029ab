"""The two locks: requirements.lock (the dev venv and CI: everything) and
requirements-runtime.lock (the images), both fully pinned and pinning the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+(?:\[[^\]]+\])?)==([^\s;]+)")


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{name}: not pinned: {line}"
        found[match.group(1).lower()] = match.group(2)
    return found


def test_the_runtime_lock_pins_what_the_dev_lock_pins_without_the_dev_extra():
    dev, runtime = pins("requirements.lock"), pins("requirements-runtime.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]
    dev_only = {re.split(r"[=<>\[ ]", item)[0].lower() for item in extra}
    assert dev_only <= set(dev)
    assert dev_only & set(runtime) == set()
    # nothing the tests or linters alone pull in
    assert {"pytest", "selenium", "ruff", "execnet", "trio"} & set(runtime) == set()
    # what runs: the flows, the service, the embedded registry
    assert {"tensorflow-cpu", "bentoml", "prefect", "quilt3", "moto"} <= set(runtime)


def test_the_images_install_the_runtime_lock():
    assert "COPY requirements-runtime.lock " in (ROOT / "Dockerfile").read_text()
    assert '"./requirements-runtime.lock"' in (ROOT / "bentofile.yaml").read_text()

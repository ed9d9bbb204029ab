"""Every command of docs/commands.md runs as written, in order, on the bundled sample."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_errors import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DOC = ROOT / "docs" / "commands.md"
VENV_PYTHON = ".venv/bin/python"  # as a new shell in the project's folder runs it
NOT_RUN = ("needs internet", "needs a cloud account", "not run by tests/test_cli_docs.py")


def documented() -> list[tuple[str, int | None]]:
    """Each `python -m flows` line of the page's code blocks and the exit code it states
    (`# exits N`; 0 when none), leaving out the lines marked as not run here."""
    blocks = re.findall(r"```\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()
             if line.startswith(f"{VENV_PYTHON} -m flows")]
    found = []
    for line in lines:
        command, _, comment = line.partition("   # ")
        if any(mark in comment for mark in NOT_RUN):
            continue
        code = re.match(r"exits (\d+)", comment)
        found.append((command.strip(), int(code.group(1)) if code else 0))
    return found


def test_the_page_documents_every_command():
    from flows.commands.main import parser

    commands = set(parser()._subparsers._group_actions[0].choices)
    blocks = "".join(re.findall(r"```\n(.*?)```", DOC.read_text(), flags=re.S))
    shown = {line.split()[3] for line in blocks.splitlines()
             if line.startswith(f"{VENV_PYTHON} -m")}
    assert commands - shown == set()


def test_every_documented_command_runs(tmp_path, mirror, local_s3):
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the project's
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENIMAGER_", "PREFECT_", "AWS_ENDPOINT_URL"))}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect-home"),
               OPENIMAGER_METADATA_URL=mirror.url,
               OPENIMAGER_IMAGE_ENDPOINT_URL=local_s3.endpoint_url,
               OPENIMAGER_ARCHITECTURE="seed-cnn", OPENIMAGER_WEIGHTS="none",
               OPENIMAGER_IMAGE_SIZE="32", OPENIMAGER_CROP_WORKERS="1",
               # a loaded machine starts Prefect's local API slowly
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    commands = documented()
    assert len(commands) >= 15
    said = {}
    for command, code in commands:
        words = shlex.split(command)
        done = subprocess.run(words, cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == code, (
            f"{command}\nexited {done.returncode}, not {code}:\n{done.stdout[-2000:]}\n"
            f"{done.stderr[-4000:]}")
        # A failure is one or two lines; a success may carry a library's own logged noise
        # (Prefect's local API logs "database is locked" tracebacks on a loaded machine).
        assert code == 0 or "Traceback" not in done.stderr, f"{command}\n{done.stderr[-4000:]}"
        said[shlex.split(command)[3]] = done.stderr
    assert (tmp_path / "workspace" / "selection.parquet").exists()
    assert (tmp_path / "workspace" / "bundle" / "model" / "model.keras").exists()
    assert len(list((tmp_path / "workspace" / "reproduce").iterdir())) == 1
    # Not a terminal: one line per step, with its name and duration.
    assert re.search(r"^crop: \d+ crops of \d+ images in [\d.]+ s$", said["build-dataset"], re.M)
    assert re.search(r"^publish: openimager/classifier@\w+ in [\d.]+ s$", said["publish"], re.M)

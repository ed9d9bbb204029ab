"""Commands as a new shell runs them: the programs of this Python's environment by their
path (`.venv/bin/quilt3`, not `quilt3`, which is not on PATH outside the activated venv)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def shown(path: Path | str) -> str:
    """path as a shell in the current folder reaches it: relative when under it, else
    absolute."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def program(name: str) -> str:
    """The program name of this Python's environment ("python", "quilt3", "bentoml") by its
    path, or the bare name when the environment has no such program."""
    # Not resolved: a venv's python is a symlink to the base interpreter, which has no
    # quilt3 and does not see the venv's packages.
    python = Path(sys.executable) if sys.executable else None
    if python is None:
        return name
    found = python if name == "python" else python.parent / name
    return shown(found) if found.exists() else name


def flows_command(arguments: str) -> str:
    """A `python -m flows ...` line that runs as printed: this environment's python."""
    return f"{program('python')} -m flows {arguments}".rstrip()

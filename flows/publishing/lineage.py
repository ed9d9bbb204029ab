"""Where a run's code came from: the git commit, whether it was dirty, and its source tree."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SOURCE_ITEMS = ("flows", "model", "service", "tests", "benchmarks", "data/sample", "Dockerfile",
                "Makefile", "README.md", "bentofile.yaml", "prefect.yaml", "pyproject.toml",
                "requirements.lock", ".ci")


def _git(*args: str, root: Path = PROJECT_ROOT) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.decode()


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The commit checked out at root, or 'unknown' outside a git checkout."""
    out = _git("rev-parse", "HEAD", root=root)
    return out.strip() if out else "unknown"


def git_dirty(root: Path = PROJECT_ROOT) -> bool:
    """True when tracked files differ from the commit (the archive would not match them)."""
    out = _git("status", "--porcelain", "--untracked-files=no", root=root)
    return bool(out and out.strip())


def export_source(dest: Path, root: Path = PROJECT_ROOT) -> str:
    """Write the source at HEAD (git archive) to dest and return the commit id.

    Outside a git checkout (e.g. inside the worker image) the project files are copied as they
    are, and the commit is 'unknown'.
    """
    dest.mkdir(parents=True, exist_ok=True)
    commit = git_commit(root)
    archive = None
    if commit != "unknown":
        done = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", commit],
                              capture_output=True, check=False)
        archive = done.stdout if done.returncode == 0 else None
    if archive:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    else:
        for item in SOURCE_ITEMS:
            src = root / item
            if src.is_dir():
                shutil.copytree(src, dest / item, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                shutil.copy2(src, dest / item)
    (dest / "COMMIT").write_text(commit + "\n")
    return commit


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()

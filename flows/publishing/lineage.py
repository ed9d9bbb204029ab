"""Where a run's code came from: the git commit, whether it was dirty, and its source tree."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Published under env/ only, not twice (reproduce reads the lock and Python version there).
ENV_FILES = ("requirements.lock", "requirements-runtime.lock", "pyproject.toml", "Dockerfile",
             "bentofile.yaml")
# Not needed to retrain, and the synthetic sample alone was 40% of a package.
LEFT_OUT = ("data/sample", "docs/sample-card", "tests", "benchmarks")
SOURCE_ITEMS = ("flows", "model", "service", "docs", "Makefile", "README.md", "prefect.yaml",
                ".ci", *ENV_FILES)
MAX_CHANGES = 50


class LineageError(RuntimeError):
    """The code a model was trained with cannot be published as it ran."""


class UncommittedChanges(LineageError):
    """The checkout has uncommitted changes and publishing them is turned off."""


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


def git_changes(root: Path = PROJECT_ROOT) -> list[str]:
    """The tracked files that differ from the commit (what git archive would not contain)."""
    out = _git("status", "--porcelain", "--untracked-files=no", root=root) or ""
    return [line[3:] for line in out.splitlines() if line.strip()]


def git_dirty(root: Path = PROJECT_ROOT) -> bool:
    """True when tracked files differ from the commit (the archive would not match them)."""
    return bool(git_changes(root))


def code_state(root: Path = PROJECT_ROOT) -> dict:
    """The commit a model is trained at and the uncommitted changes it is trained with."""
    commit = git_commit(root)
    changes = git_changes(root) if commit != "unknown" else []
    return {"git_commit": commit, "git_dirty": None if commit == "unknown" else bool(changes),
            "git_changes": changes[:MAX_CHANGES]}


def refuse_uncommitted(allowed: bool, root: Path = PROJECT_ROOT) -> None:
    """Raise UncommittedChanges when the checkout is dirty and publishing that is not allowed."""
    changes = git_changes(root)
    if changes and not allowed:
        shown = ", ".join(changes[:5]) + (", ..." if len(changes) > 5 else "")
        raise UncommittedChanges(
            f"uncommitted changes in {root} ({shown}): the published code would not be the "
            "code that ran; commit or stash them, or set OPENIMAGER_PUBLISH_UNCOMMITTED=true")


def export_source(dest: Path, commit: str, root: Path = PROJECT_ROOT,
                  env: Path | None = None, changes: list[str] | None = None) -> str:
    """Write the source of commit (git archive) to dest without LEFT_OUT, the ENV_FILES to env
    (or dest), a COMMIT file, and UNCOMMITTED.md naming changes the commit lacks.

    With commit 'unknown' (no git, e.g. in the worker image) the files at root are copied.
    """
    env = env or dest
    dest.mkdir(parents=True, exist_ok=True)
    env.mkdir(parents=True, exist_ok=True)
    if commit == "unknown":
        _copy_tree(root, dest)
    else:
        _extract(root, commit, dest)
    for name in ENV_FILES:
        if (dest / name).exists() and env != dest:
            shutil.move(dest / name, env / name)
    (dest / "COMMIT").write_text(commit + "\n")
    if changes:
        (dest / "UNCOMMITTED.md").write_text(uncommitted_note(commit, changes))
    return commit


def _extract(root: Path, commit: str, dest: Path) -> None:
    """git archive of commit under dest, without LEFT_OUT."""
    excluded = [f":(exclude){item}" for item in LEFT_OUT]
    done = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", commit, "--",
                           ".", *excluded], capture_output=True, check=False)
    if done.returncode != 0:
        raise LineageError(
            f"the model was trained at commit {commit[:12]}, which the checkout at {root} "
            "does not have: fetch it (git fetch), or train again at this commit")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(dest, filter="data")


def _copy_tree(root: Path, dest: Path) -> None:
    """Copy the project's files as they are on disk, without LEFT_OUT."""
    skip = shutil.ignore_patterns("__pycache__", "sample-card")
    for item in SOURCE_ITEMS:
        src = root / item
        if src.is_dir():
            shutil.copytree(src, dest / item, dirs_exist_ok=True, ignore=skip)
        elif src.exists():
            shutil.copy2(src, dest / item)


def uncommitted_note(commit: str, changes: list[str]) -> str:
    """Why code/ is not exactly the code that trained the model."""
    files = "\n".join(f"- `{path}`" for path in changes)
    return (f"# Trained with uncommitted changes\n\nThe model was trained in a checkout of "
            f"`{commit}` whose tracked files below differed from that commit. This folder "
            "holds the commit, not those changes, so a retrain from it may differ.\n\n"
            f"{files}\n")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()


def tree_digest(root: Path) -> str:
    """Hex SHA-256 over every file under root: its path and its content's hash."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()

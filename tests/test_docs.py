"""The README and docs/: every link resolves, and every command block says who runs it.

A fenced block of commands is preceded by an HTML comment saying either which test runs it
(`<!-- run by tests/test_x.py -->`, and that test reads this page), which test runs the same
command (`<!-- same as tests/test_x.py -->`), or what it needs that a
test machine lacks (`<!-- needs internet -->`, `<!-- needs a cloud account -->`, ...), or that
it is not a command (`<!-- example -->`: configuration, output). A block whose first line is a
`# needs ...` comment carries its own mark. A page whose every block a test runs says so once,
`<!-- every block run by tests/test_x.py -->`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_PAGES = [*PAGES, ROOT / "data" / "sample" / "README.md"]  # pages with commands to run
FENCE = re.compile(r"^```")
MARK = re.compile(r"<!-- (run by (?P<test>tests/\S+\.py)|same as (?P<same>tests/\S+\.py)"
                  r"|needs [^>]+|example)\b[^>]*-->")
PAGE_MARK = re.compile(r"<!-- every block run by (?P<test>tests/\S+\.py) -->")
LINK = re.compile(r"\]\((?!https?://|mailto:)(?P<target>[^)#\s]+)(#[^)]*)?\)")


def blocks(page: Path) -> list[tuple[int, str]]:
    """The fenced blocks of page: the line number of each opening fence and the text before
    it (the three lines above)."""
    lines = page.read_text().splitlines()
    found, inside = [], False
    for number, line in enumerate(lines):
        if FENCE.match(line):
            if not inside:
                first = lines[number + 1] if number + 1 < len(lines) else ""
                before = "\n".join(lines[max(0, number - 3):number])
                found.append((number + 1, before + ("\n<!-- needs -->" if
                                                     first.startswith("# needs") else "")))
            inside = not inside
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_block_says_who_runs_it(page: Path) -> None:
    unmarked, wrong = [], []
    page_mark = PAGE_MARK.search(page.read_text())
    if page_mark:
        test = ROOT / page_mark["test"]
        assert test.exists() and page.name in test.read_text(), \
            f"{page.name}: {page_mark['test']} does not read it"
        return
    for line, before in blocks(page):
        mark = MARK.search(before)
        if mark is None:
            unmarked.append(line)
        elif mark["test"]:
            test = ROOT / mark["test"]
            if not test.exists() or page.name not in test.read_text():
                wrong.append(f"line {line}: {mark['test']} does not read {page.name}")
        elif mark["same"] and not (ROOT / mark["same"]).exists():
            wrong.append(f"line {line}: {mark['same']} does not exist")
    assert not unmarked, f"{page.name}: blocks without a run-by/needs/example mark at {unmarked}"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page: Path) -> None:
    missing = [m["target"] for m in LINK.finditer(page.read_text())
               if not (page.parent / m["target"]).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_readme_fits_on_two_pages() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 160


# Where a documented command writes: its output flags, and quilt3's dest= in Python.
OUTPUT_FLAG = re.compile(r"""(?:(?:--dest|--workspace|--out|--log-dir|--model-path)[ =]"""
                         r"""|\bdest=["'])(?P<path>[^\s"']+)""")
# A quoted relative path in an example: a/b/c, or a/b with a file extension or a glob (one
# slash and neither is a name such as openimager/classifier or image/jpeg).
QUOTED_PATH = re.compile(r"""["'](?P<path>[\w.-]+(?:/[\w.*-]+)+)["']""")


def is_path(text: str) -> bool:
    return text.count("/") >= 2 or any(c in text.rsplit("/", 1)[1] for c in ".*")


def fenced(pages: list[Path]) -> list[tuple[Path, str]]:
    """Every fenced block of pages, with its page."""
    return [(page, block) for page in pages for block in page.read_text().split("```")[1::2]]


def documented_outputs() -> set[str]:
    """Every relative folder a documented command writes to (where the docs run them: the
    project's folder)."""
    return {m["path"] for _, block in fenced(COMMAND_PAGES)
            for m in OUTPUT_FLAG.finditer(block)
            if not m["path"].startswith(("/", "<", "$", "s3://")) and not m["path"].isupper()}


def unwritten_paths(block: str, written: set[str]) -> list[str]:
    """The quoted relative paths of a block (Python examples, python -c) under no folder
    that a documented command writes: an example would read them from nowhere."""
    return [m["path"] for m in QUOTED_PATH.finditer(block) if is_path(m["path"])
            and not any(m["path"] == out or m["path"].startswith(out + "/") for out in written)]


def test_what_the_documented_commands_write_stays_out_of_git() -> None:
    """Every folder a documented command writes to (relative to the project, where the docs
    run them) is under the workspace or otherwise ignored by git."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = documented_outputs()
    assert {"workspace", "workspace/bundle", "workspace/reproduced"} <= written
    tracked = [path for path in sorted(written) if subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", f"{path}/x"], cwd=ROOT).returncode != 0]
    assert not tracked, f"documented outputs git would pick up: {tracked}"


def test_examples_read_what_the_documented_commands_write() -> None:
    written = documented_outputs()
    found = [f"{page.name}: {path}" for page, block in fenced(COMMAND_PAGES)
             for path in unwritten_paths(block, written)]
    assert not found, "examples read paths no documented command writes:\n" + "\n".join(found)
    # What it catches: a package installed to --dest workspace/bundle, read from bundle/.
    example = "\n".join(['pd.read_parquet("bundle/data/shards")', "FROM 'x/y.parquet'",
                         'browse("openimager/classifier")', '"image/jpeg"',
                         '"workspace/bundle/data/a.parquet"'])
    assert unwritten_paths(example, {"workspace/bundle"}) == ["bundle/data/shards", "x/y.parquet"]


def readme_demo_output() -> str:
    """The demo's closing summary as the README shows it."""
    text = (ROOT / "README.md").read_text()
    return next(b for b in text.split("```")[1::2] if "== openimager demo" in b)


def test_the_readme_shows_a_first_run_of_the_demo_as_it_prints(monkeypatch) -> None:
    import sys

    from flows.demo import registry_access

    shown = readme_demo_output()
    assert "promotion: promoted (first model of this name: nothing was promoted yet)" in shown
    top_hash = re.search(r"published openimager/classifier@(\w+)", shown)[1]
    monkeypatch.chdir(ROOT)  # make demo runs from the project's folder
    printed = registry_access(ROOT / "workspace", {"name": "openimager/classifier",
                                                   "top_hash": top_hash})
    python = Path(sys.executable)
    if python.parent != ROOT / ".venv" / "bin":  # another environment: its own paths
        printed = [line.replace(str(python.parent), ".venv/bin") for line in printed]
    assert "\n".join(printed) in shown


def test_the_docs_quote_the_demos_figures() -> None:
    import inspect

    from flows.demo import DEMO_CLASSES, run_demo

    defaults = {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}
    accuracy = float(re.search(r"held-out test accuracy[^:]*: ([\d.]+)", readme_demo_output())[1])
    sample = (ROOT / "data" / "sample" / "README.md").read_text()
    assert f"reaches {accuracy:.2f} test accuracy" in sample
    assert f"{defaults['image_size']} px, {defaults['epochs']} epochs)" in sample
    publishing = (ROOT / "docs" / "publishing.md").read_text()
    assert (f"a {defaults['image_size']}-pixel seed CNN, {defaults['epochs']} epochs"
            in " ".join(publishing.split()))
    # Feedback names a class of the demo's model (another is refused with 400).
    watching = (ROOT / "docs" / "watching.md").read_text()
    labels = re.findall(r'label[=": ]+(\w+)', watching.split("## Feedback")[1].split("```")[1])
    assert labels and set(labels) <= set(DEMO_CLASSES)
    written, stored = re.search(r"`(\w+)` is\s+stored, and answered, as `(\w+)`", watching).groups()
    assert stored in DEMO_CLASSES and written == stored.lower() != stored


def test_documented_commands_name_the_venvs_programs() -> None:
    """A new shell on a fresh clone has neither python with the project's packages nor quilt3
    or bentoml on its PATH: documented commands run them from .venv/bin."""
    bare = re.compile(r"^\s*(?:\w+=\S+ )*(?:python -m flows|python -c 'import quilt3|quilt3 |"
                      r"bentoml )")
    found = [f"{page.name}: {line.strip()}" for page in PAGES
             for block in page.read_text().split("```")[1::2]
             for line in block.splitlines() if bare.match(line)]
    assert not found, "\n".join(found)

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

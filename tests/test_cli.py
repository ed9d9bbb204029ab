"""The command line: class search with counts and trees, and clear errors for bad names."""

from flows.commands.main import main
from flows.openimages.metadata import Metadata


def test_classes_search_shows_mids_family_and_box_counts(mirror, tmp_path, capsys):
    Metadata(mirror.url, tmp_path / "metadata").refresh()  # builds the cache with counts
    code = main(["classes", "sandwich", "--workspace", str(tmp_path),
                 "--metadata-url", mirror.url])
    out = capsys.readouterr().out
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("/m/0l515\t"))
    assert "Sandwich\tboxes=" in line and "parents: Food" in line
    assert "children: Hamburger, Submarine sandwich" in line
    assert "boxes=?" not in out


def test_classes_tree_prints_the_subtree(mirror, tmp_path, capsys):
    assert main(["classes", "Sandwich", "--tree", "--workspace", str(tmp_path),
                 "--metadata-url", mirror.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Sandwich (/m/0l515)"
    assert lines[1].startswith("  Hamburger (/m/0cdn1)")


def test_an_unknown_class_exits_2_with_suggestions(mirror, tmp_path, capsys):
    code = main(["classes", "Hamburgr", "--workspace", str(tmp_path), "--metadata-url", mirror.url])
    assert code == 2
    assert "closest: Hamburger" in capsys.readouterr().err

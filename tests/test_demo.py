"""Where the demo works: --workspace, else OPENIMAGER_WORKSPACE, else workspace/demo."""

from pathlib import Path

import flows.demo
from flows.commands.main import main
from flows.demo import demo_workspace


def test_the_flag_wins_over_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENIMAGER_WORKSPACE", str(tmp_path / "from-env"))
    assert demo_workspace(tmp_path / "from-flag") == tmp_path / "from-flag"


def test_the_variable_wins_over_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENIMAGER_WORKSPACE", str(tmp_path / "from-env"))
    assert demo_workspace(None) == tmp_path / "from-env"


def test_the_default_is_workspace_demo(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENIMAGER_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert demo_workspace(None) == tmp_path / "workspace" / "demo"


def test_the_command_leaves_the_choice_to_the_demo(monkeypatch, tmp_path):
    chosen = []
    monkeypatch.setattr(flows.demo, "run_demo", lambda workspace, epochs: chosen.append(
        (workspace, epochs)) or {})
    monkeypatch.setattr(flows.demo, "report", lambda result: "")
    assert main(["demo", "--epochs", "1"]) == 0
    assert main(["demo", "--workspace", str(tmp_path)]) == 0
    assert chosen == [(None, 1), (Path(str(tmp_path)), 8)]

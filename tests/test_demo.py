"""Where the demo works: --workspace, else OPENIMAGER_WORKSPACE, else ./workspace, the
workspace of every other command and of `bentoml serve`."""

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


def test_the_default_is_the_workspace_of_every_command_and_the_service(monkeypatch, tmp_path):
    from flows.settings import Settings
    from service.config import PredictionLogging

    monkeypatch.delenv("OPENIMAGER_WORKSPACE", raising=False)
    monkeypatch.delenv("OPENIMAGER_PREDICTION_LOG_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert demo_workspace(None) == tmp_path / "workspace"
    assert Settings().workspace.resolve() == demo_workspace(None)
    # The service logs where the drift command reads.
    logged = Path(PredictionLogging.from_env().directory).resolve()
    assert logged == Settings().predictions_dir.resolve() == tmp_path / "workspace" / "predictions"


def test_the_command_leaves_the_choice_to_the_demo(monkeypatch, tmp_path):
    chosen = []
    monkeypatch.setattr(flows.demo, "run_demo", lambda workspace, epochs: chosen.append(
        (workspace, epochs)) or {})
    monkeypatch.setattr(flows.demo, "report", lambda result: "")
    assert main(["demo", "--epochs", "1"]) == 0
    assert main(["demo", "--workspace", str(tmp_path)]) == 0
    assert chosen == [(None, 1), (Path(str(tmp_path)), 8)]


def test_the_printed_commands_run_in_a_new_shell(monkeypatch):
    """The lines the demo prints name python and quilt3 by their path in this environment
    (`quilt3` alone is not found outside the activated venv), relative to the folder the demo
    ran in, and install under the workspace."""
    import os
    import sys

    from flows.demo import registry_access

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    printed = registry_access(root / "workspace", {"name": "openimager/classifier",
                                                   "top_hash": "0" * 64})
    commands = [line.split()[0] for line in printed if not line.strip().startswith("export")]
    assert len(commands) == 3
    for program in commands:
        assert "/" in program and os.access(root / program, os.X_OK), program
    python = os.path.relpath(sys.executable, root) if sys.executable.startswith(f"{root}/") \
        else sys.executable
    assert printed[0].strip() == f"{python} -m flows registry --workspace workspace"
    assert "--dest workspace/installed/openimager_classifier" in printed[-2]


def test_the_summary_says_what_bentoml_serve_serves_after_the_demo(monkeypatch, tmp_path):
    import flows.promotion.bentoml_store as store
    from flows.demo import serve_next

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENIMAGER_WORKSPACE", raising=False)
    monkeypatch.setattr(store, "promoted", lambda name: {"tag": f"{name}:better"})
    (said,) = serve_next(tmp_path / "workspace", "m:demo")
    assert " serve service.service:Classifier` now serves m:better, the promoted model (`" in said
    assert " -m flows promote m:demo` serves this one)" in said
    assert " -m flows drift` then compares" in said
    # Another workspace than the default: both lines name it.
    (said,) = serve_next(tmp_path / "elsewhere", "m:better")
    assert said.startswith("`OPENIMAGER_WORKSPACE=elsewhere ")
    assert "now serves this model" in said and " -m flows drift --workspace elsewhere`" in said

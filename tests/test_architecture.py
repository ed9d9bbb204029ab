"""The layers stay apart, and light commands stay light.

Data code (flows/openimages) imports nothing of the wiring above it; the service imports
nothing of the pipeline; the Keras code imports no orchestration, serving or publishing
library. Commands that only read metadata load no heavy library they do not use. The
architecture page names every module.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("quilt3", "tensorflow", "keras", "bentoml", "dask", "distributed")


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function bodies too), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            found += [(node.lineno, node.module or "")]
            # `from flows import stages` names the module stages, not the package
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module in {"flows", "model", "service"}
                      or (node.module or "").startswith("flows.")]
    return found


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def edges(folder: str, forbidden) -> list[str]:
    """The imports in folder's modules that forbidden(module) refuses, as path:line: module."""
    return [f"{path.relative_to(ROOT)}:{line}: {module}"
            for path in sorted((ROOT / folder).rglob("*.py"))
            for line, module in imports(path) if forbidden(module)]


def test_data_code_imports_nothing_of_flows_outside_it():
    assert edges("flows/openimages", lambda m: under(m, "flows")
                 and not under(m, "flows.openimages")) == []


def test_service_imports_nothing_of_the_pipeline():
    assert edges("service", lambda m: under(m, "flows")) == []


def test_model_imports_no_orchestration_serving_or_publishing():
    banned = ("prefect", "prefect_dask", "bentoml", "quilt3", "flows", "service")
    assert edges("model", lambda m: any(under(m, b) for b in banned)) == []


def test_the_rules_catch_a_forbidden_edge(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from flows.pipeline import stages\n"
                      "    import flows.promotion.bentoml_store\n")
    found = imports(source)
    assert [m for _, m in found if under(m, "flows.pipeline.stages")] == ["flows.pipeline.stages"]
    assert (3, "flows.promotion.bentoml_store") in found


def listed_modules(page: str) -> dict[str, set[str]]:
    """The modules docs/architecture.md names, by folder: the `- `name`: role` lines under
    each `### `folder/`` heading."""
    found: dict[str, set[str]] = {}
    folder = None
    for line in page.splitlines():
        if heading := re.fullmatch(r"### `(?P<folder>[\w/]+)/`", line):
            folder = heading["folder"]
            found[folder] = set()
        elif line.startswith("#"):
            folder = None
        elif folder and (item := re.match(r"- `(?P<name>\w+)`: \S", line)):
            found[folder].add(item["name"])
    return found


def test_every_module_is_named_on_the_architecture_page():
    modules: dict[str, set[str]] = {}
    for package in ("flows", "model", "service"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "__init__.py":
                modules.setdefault(path.parent.relative_to(ROOT).as_posix(), set()).add(path.stem)
    listed = listed_modules((ROOT / "docs" / "architecture.md").read_text())
    missing = [f"{folder}/{name}.py" for folder, names in sorted(modules.items())
               for name in sorted(names - listed.get(folder, set()))]
    stale = [f"{folder}/{name}.py" for folder, names in sorted(listed.items())
             for name in sorted(names - modules.get(folder, set()))]
    assert not missing, f"docs/architecture.md does not name {missing}"
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
    # The parser reads what a missing module would lack: its line under its folder.
    assert listed_modules("### `flows/run/`\n\n- `shell`: commands\n## Layers\n- `x`: y") == {
        "flows/run": {"shell"}}


def loaded_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The heavy top-level packages in sys.modules after code runs in a fresh interpreter."""
    probe = (f"import sys, json\n{code}\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)})))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_loads_no_heavy_library():
    code = ("from flows.commands.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    # --help answers in a fraction of a second: not even pandas, boto3 or Prefect
    assert loaded_after(code, (*HEAVY, "pandas", "pyarrow", "boto3", "prefect")) == []


@pytest.mark.integration
def test_classes_and_a_selection_load_no_heavy_library(mirror, tmp_path):
    code = (
        "from flows.commands.main import main\n"
        "from flows.pipeline import stages\n"
        "from flows.settings import Settings\n"
        f"assert main(['classes', 'sandwich', '--workspace', {str(tmp_path)!r},"
        f" '--metadata-url', {mirror.url!r}]) == 0\n"
        f"settings = Settings(workspace={str(tmp_path)!r}, metadata_url={mirror.url!r},"
        " classes=['Hamburger', 'Sandwich'])\n"
        "assert len(stages.select(settings)) > 0\n"
        # the modules the flows import for these stages, without running Prefect
        "import flows.refresh, flows.download_flow, flows.crop_flow\n"
    )
    assert loaded_after(code) == []


def test_the_top_of_flows_keeps_the_flows_and_little_else():
    top = sorted(p.name for p in (ROOT / "flows").glob("*.py"))
    assert len(top) <= 12, top
    packages = sorted(p.parent.name for p in (ROOT / "flows").glob("*/__init__.py"))
    assert packages == ["commands", "openimages", "pipeline", "promotion", "publishing", "run",
                        "servers", "watching"]
    # the command line lives in flows/commands; flows/__main__.py only calls it
    assert len((ROOT / "flows" / "__main__.py").read_text().splitlines()) < 12

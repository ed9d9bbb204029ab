"""Prefect runs a deployment's entrypoint as a script, which puts flows/ on sys.path: a module
there named like a standard or installed one (secrets, say) would shadow it in the flow run
and in every Dask worker it starts."""

import importlib.util
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_module_of_flows_shadows_another():
    names = {m.name for m in pkgutil.iter_modules([str(ROOT / "flows")])} - {"__main__"}
    assert not names & set(sys.stdlib_module_names)
    shadowing = [n for n in names if importlib.util.find_spec(n) is not None]
    assert not shadowing, f"flows/ modules shadow installed ones: {shadowing}"

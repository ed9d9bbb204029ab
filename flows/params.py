"""Turning flow parameters into the one settings object, and the flows' shared policies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prefect.states import State

from flows.settings import Settings

Version = Literal["v4", "v5", "v6", "v7"]
Architecture = Literal["transfer", "seed-cnn"]
Runner = Literal["threads", "dask"]


def settings_from(**overrides: Any) -> Settings:
    """Settings from OPENIMAGER_* variables, with every non-None parameter taking precedence.
    Raises pydantic's ValidationError, naming each bad value, before any work starts."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def retry_unless(*permanent: type[BaseException]) -> Callable[[object, object, State], bool]:
    """A Prefect retry condition: retry, except on errors that another try cannot mend (a bad
    class name, a missing bucket, a secret in the bundle)."""

    def retry(task: object, task_run: object, state: State) -> bool:
        try:
            state.result()
        except permanent:
            return False
        except Exception:  # noqa: BLE001 - anything else may be the network: try again
            return True
        return False

    return retry


def report_images(settings: Settings) -> dict[str, Path]:
    """The pictures a run report shows, where the stages write them."""
    return {"sample_grid": settings.dataset_dir / "sample_grid.png",
            "confusion_matrix": settings.model_dir / "confusion_matrix.png"}

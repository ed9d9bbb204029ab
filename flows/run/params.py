"""Turning flow parameters into the one settings object, and the flows' shared policies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `python -m flows select` builds settings here without loading Prefect
    from prefect.states import State

from flows.settings import Architecture, Runner, Settings, Version

__all__ = ["Architecture", "Runner", "Version", "report_images", "retry_only", "retry_unless",
           "settings_from"]
RetryCondition = Callable[[object, object, "State"], bool]


def settings_from(**overrides: Any) -> Settings:
    """Settings from OPENIMAGER_* variables, with every non-None parameter taking precedence.
    Raises pydantic's ValidationError, naming each bad value, before any work starts."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _raised(state: State) -> Exception | None:
    """The error a failed task run raised, or None."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - handed to the retry policy to judge
        return error
    return None


def retry_unless(*permanent: type[BaseException]) -> RetryCondition:
    """A Prefect retry condition: retry, except on errors that another try cannot mend (a bad
    class name, a missing bucket)."""

    def retry(task: object, task_run: object, state: State) -> bool:
        error = _raised(state)
        return error is not None and not isinstance(error, permanent)

    return retry


def retry_only(*transient: type[BaseException]) -> RetryCondition:
    """A Prefect retry condition: retry only these errors (a push that broke off; a secret in
    the bundle or a bad registry will not go away)."""

    def retry(task: object, task_run: object, state: State) -> bool:
        return isinstance(_raised(state), transient)

    return retry


def report_images(settings: Settings) -> dict[str, Path]:
    """The pictures a run report shows, where the stages write them."""
    return {"sample_grid": settings.dataset_dir / "sample_grid.png",
            "confusion_matrix": settings.model_dir / "confusion_matrix.png",
            "reliability": settings.model_dir / "reliability.png",
            "drift": settings.workspace / "summaries" / "drift.png"}

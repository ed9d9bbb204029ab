"""Turning flow parameters into the one settings object."""

from __future__ import annotations

from typing import Any

from flows.settings import Settings


def settings_from(**overrides: Any) -> Settings:
    """Settings from OPENIMAGER_* variables, with every non-None parameter taking precedence."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})

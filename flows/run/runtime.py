"""What a process that runs flows sets up before the first one: unattended-run defaults."""

from __future__ import annotations

import os

from flows.servers import lifeline

# Prefect waits 20 s for its ephemeral API by default, and a run fails before its first task
# when the server is slower. On a fresh database it took 20 s on an idle 2-core machine and
# 180 s with four busy loops beside it. Prefect notices a server that died at startup only
# when it waited this long, so the bound is generous, not endless.
STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_SECONDS = 600


def prepare_run() -> None:
    """Tie every process this run starts to its life, and apply Prefect's defaults."""
    lifeline.install()  # first, so Prefect's server carries the run's mark
    use_prefect_defaults()


def use_prefect_defaults() -> None:
    """Give Prefect's ephemeral API STARTUP_TIMEOUT_SECONDS to start, unless the user chose
    a timeout (environment, profile, prefect.toml) or a server (PREFECT_API_URL)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or "startup_timeout_seconds" in settings.server.ephemeral.model_fields_set:
        return
    os.environ[STARTUP_TIMEOUT_VARIABLE] = str(STARTUP_TIMEOUT_SECONDS)
    # Prefect read its settings when it was imported; threads it starts read the global ones.
    refresh_global_settings_context()

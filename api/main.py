"""Serving the API: `run()` is what the CLI calls."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from api.settings import ApiSettings, get_api_settings
from infra.settings import Settings, get_settings


def run(
    host: str | None = None,
    port: int | None = None,
    *,
    settings: Settings | None = None,
    api_settings: ApiSettings | None = None,
    log_level: str = "info",
) -> None:
    """Serve the API in this process until interrupted (one uvicorn worker, uvloop + httptools).

    `host`/`port` default to `settings.api_host`/`settings.api_port`. One worker on purpose:
    an embedded `chdb://` database may be opened by one process only; scale out with more
    processes against a ClickHouse server instead."""
    settings = settings if settings is not None else get_settings()
    api_settings = api_settings if api_settings is not None else get_api_settings()
    app = create_app(settings=settings, api_settings=api_settings)
    uvicorn.run(
        app,
        host=host if host is not None else settings.api_host,
        port=port if port is not None else settings.api_port,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=api_settings.access_log,
        # The X-Request-ID middleware owns request identity; uvicorn's Server header is noise.
        server_header=False,
    )

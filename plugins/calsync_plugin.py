"""Registers calsync's "Calendar sync / 日历同步" page with Airflow (see calsync.airflow.ui).

Airflow imports this file in every component and task process (the package itself is kept
out of the plugin scan by ``.airflowignore``), so it stays small: the FastAPI app is built on
the api-server's first request to ``/calsync``, and nothing else here imports the page.
"""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/calsync"


class _LazyApp:
    """An ASGI app that builds ``calsync.airflow.ui.app.create_app()`` when first called."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                from calsync.airflow.ui.app import create_app

                self._app = create_app()
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self._app or self._build()
        await app(scope, receive, send)

    def __repr__(self) -> str:  # shown by Airflow's plugin listing
        return "calsync.airflow.ui.app:create_app"


class CalsyncPlugin(AirflowPlugin):
    name = "calsync"
    fastapi_apps = [  # noqa: RUF012 - Airflow reads these class attributes
        {"app": _LazyApp(), "url_prefix": URL_PREFIX, "name": "calsync sync log"}
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Calendar sync / 日历同步",
            "href": f"{URL_PREFIX}/",
            "url_route": "calsync",
            "destination": "nav",
            "category": "browse",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        }
    ]

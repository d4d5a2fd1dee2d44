"""The sync-log page: a FastAPI app that Airflow's api-server mounts at ``/calsync``.

Routes (all behind Airflow's own authentication, see ``create_app``):

- ``GET /calsync/``: the page, server-rendered HTML (Jinja2 with autoescape; its
  Content-Security-Policy allows no inline script, only this app's ``synclog.js``, so even a
  slip in escaping could run nothing): the per-integration overview and the filtered, paged
  sync log.
- ``GET /calsync/api/log`` and ``GET /calsync/api/overview``: the same data as JSON.
- ``GET /calsync/static/{synclog.css,synclog.js,icon.svg}``: stylesheet, the one script
  (opens links to DAG runs in the Airflow UI around the framed page) and the nav icon.

Which OA database: the Airflow connection ``oa`` (query parameter) if it is one of the allowed
ids, else ``calsync_oa``. Allowed: ``CALSYNC_UI_OA_CONNECTIONS`` (comma-separated) when set,
else ``calsync_oa`` and every ``oa_connection_id`` in ``include/integrations/*.yaml``
(``CALSYNC_INCLUDE_DIR``). A request can never name another connection. Times are shown in
``tz`` (query parameter), else ``CALSYNC_UI_TIMEZONE``, else the integrations' time zone.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.exceptions import HTTPException as StarletteHTTPException

from calsync.airflow.ui import i18n
from calsync.airflow.ui import queries as q

log = logging.getLogger(__name__)

URL_PREFIX = "/calsync"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]  # plugins/calsync/airflow/ui -> the checkout
DEFAULT_OA_CONNECTION = "calsync_oa"
ENV_CONNECTIONS = "CALSYNC_UI_OA_CONNECTIONS"
ENV_TIMEZONE = "CALSYNC_UI_TIMEZONE"
DAY_CHOICES = (1, 7, 30, 90)
SIZE_CHOICES = (20, 50, 100, 200)

SECURITY_HEADERS = {
    # Scripts, styles and images from this app's own files only (no inline script, so
    # nothing in the page's data could ever run); framed only by Airflow's UI.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

EngineFor = Callable[[str], sa.Engine]


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Integration:
    id: str
    name: str
    type: str
    oa_connection_id: str
    dag_id: str
    timezone: str


@dataclass(frozen=True)
class Site:
    connections: list[str]  # the OA connection ids a request may choose from
    integrations: dict[str, Integration]  # the loadable configs, by id
    timezone: str


def include_dir() -> Path:
    return Path(os.environ.get("CALSYNC_INCLUDE_DIR") or ROOT / "include")


def load_site() -> Site:
    from calsync.config import load_integrations

    configs = [
        r.config for r in load_integrations(include_dir() / "integrations") if r.config is not None
    ]
    integrations = {
        c.id: Integration(c.id, c.name, c.type, c.oa_connection_id, c.dag_id, c.timezone)
        for c in configs
    }
    listed = os.environ.get(ENV_CONNECTIONS, "").strip()
    if listed:
        connections = list(dict.fromkeys(c.strip() for c in listed.split(",") if c.strip()))
    else:
        connections = list(
            dict.fromkeys([DEFAULT_OA_CONNECTION, *sorted(c.oa_connection_id for c in configs)])
        )
    zones = Counter(c.timezone for c in configs).most_common(1)
    timezone = os.environ.get(ENV_TIMEZONE, "").strip() or (zones[0][0] if zones else "UTC")
    return Site(connections, integrations, timezone)


def default_engine_for(conn_id: str) -> sa.Engine:
    from calsync.oa.db import engine_from_airflow_connection

    return engine_from_airflow_connection(conn_id)


# --- request context ------------------------------------------------------------------------


@dataclass
class Context:
    request: Request
    site: Site
    params: dict[str, list[str]]
    lang: str
    tz: dt.tzinfo
    tz_name: str
    oa: str
    days: int
    problems: list[str]

    @property
    def airflow_base(self) -> str:
        """Where Airflow's UI lives, as seen from this app (``[api] base_url``'s path)."""
        root = self.request.scope.get("root_path", "")
        return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else root

    @property
    def page_base(self) -> str:
        return f"{self.airflow_base}{URL_PREFIX}/"

    def t(self, key: str) -> str:
        return i18n.label(key, self.lang)

    def action(self, action: str) -> str:
        return i18n.action_label(action, self.lang)

    def url(self, **changes: Any) -> str:
        """This page's URL with some parameters changed (None removes one)."""
        params = {k: list(v) for k, v in self.params.items()}
        if "page" not in changes and set(changes) - {"lang"}:
            params.pop("page", None)  # another filter: back to the first page
        for key, value in changes.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        query = urlencode([(k, v) for k, vs in params.items() for v in vs])
        return self.page_base + (f"?{query}" if query else "")

    def reset_url(self) -> str:
        """The page without filters (language and OA database kept)."""
        return f"{self.page_base}?{urlencode({'lang': self.lang, 'oa': self.oa})}"

    def run_url(self, dag_id: str | None, run_id: str | None) -> str | None:
        if not dag_id or not run_id:
            return None
        return f"{self.airflow_base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def dag_url(self, dag_id: str) -> str:
        return f"{self.airflow_base}/dags/{quote(dag_id, safe='')}"

    def when(self, value: dt.datetime | None) -> str:
        shown = q.from_utc(value, self.tz)
        return shown.strftime("%Y-%m-%d %H:%M:%S") if shown else ""

    def param(self, key: str) -> str:
        """A query parameter as given (the form shows what the user typed)."""
        return (self.params.get(key) or [""])[-1]


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def make_context(request: Request, site: Site) -> Context:
    params = _params(request)
    problems: list[str] = []
    lang = i18n.pick_language(
        (params.get("lang") or [None])[-1], request.headers.get("accept-language")
    )
    tz_name = (params.get("tz") or [""])[-1].strip() or site.timezone
    tz = q.zone(tz_name, "UTC")
    if str(tz) != tz_name:
        problems.append(f"tz: unknown time zone {tz_name[:40]!r}, using {tz}")
    tz_name = str(tz)
    wanted = (params.get("oa") or [""])[-1].strip()
    if wanted and wanted not in site.connections:
        problems.append(f"oa: {wanted[:64]!r} is not an OA connection of this deployment")
        wanted = ""
    if not wanted:
        wanted = (
            DEFAULT_OA_CONNECTION
            if DEFAULT_OA_CONNECTION in site.connections
            else site.connections[0]
        )
    days = q.bounded_int(
        (params.get("days") or [None])[-1], q.DEFAULT_DAYS, 1, q.MAX_DAYS, "days", problems
    )
    return Context(request, site, params, lang, tz, tz_name, wanted, days, problems)


def describe_error(exc: BaseException, conn_id: str) -> str:
    """What went wrong reading the OA, for the page: never a password (connect errors come
    redacted from calsync.oa.db), never a stack."""
    from calsync.errors import CalsyncError

    name = type(exc).__name__
    if name == "AirflowNotFoundException":
        return f"the Airflow connection {conn_id!r} is not defined"
    if isinstance(exc, CalsyncError):
        return str(exc)
    if isinstance(exc, sa.exc.SQLAlchemyError):
        orig = getattr(exc, "orig", None) or exc
        first = (str(orig).strip().splitlines() or [""])[0][:300]
        return f"{type(orig).__name__}: {first}"
    return name


# --- the app -------------------------------------------------------------------------------


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every {{ }} is escaped, whatever the template's name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["ACTIONS"] = q.ACTIONS
    env.globals["DIRECTIONS"] = q.DIRECTIONS
    env.globals["DAY_CHOICES"] = DAY_CHOICES
    env.globals["SIZE_CHOICES"] = SIZE_CHOICES
    return env


@functools.cache
def _static(name: str) -> bytes:
    return (HERE / "static" / name).read_bytes()


STATIC_TYPES = {
    "synclog.css": "text/css; charset=utf-8",
    "synclog.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


def _require_dag_run_read() -> Any:
    """Airflow's own authentication and authorisation, as its REST API applies them: a valid
    JWT (``Authorization: Bearer`` or the UI's ``_token`` cookie; none or expired → 401) of a
    user the configured auth manager lets read the runs of all DAGs (else 403).

    Not ``requires_access_dag``: that one checks the DAG named by a ``dag_id`` query
    parameter when there is one, so a user allowed one DAG could add ``?dag_id=<it>`` and
    read every integration's log. Here the check never depends on the request."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.api_fastapi.core_api.security import get_user

    # (no ``GetUserDep`` annotation: with postponed annotations FastAPI could not resolve a
    # name imported here and would take ``user`` for a query parameter)
    def may_read_dag_runs(user: Any = Depends(get_user)) -> None:  # noqa: B008
        allowed = get_auth_manager().is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=None), user=user
        )
        if not allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")

    return Depends(may_read_dag_runs)


def create_app(
    engine_for: EngineFor | None = None,
    site: Callable[[], Site] | None = None,
    auth: Any = None,
) -> FastAPI:
    """The app. ``engine_for`` (conn id → engine), ``site`` and ``auth`` (a FastAPI
    dependency) are for tests; by default the engine comes from the Airflow connection and
    ``auth`` is Airflow's authentication plus read access to DAG runs."""
    engine_for = engine_for or default_engine_for
    site_for = site or load_site
    templates = _templates()
    app = FastAPI(
        title="calsync sync log",
        # Every route needs Airflow authentication. No /docs or /openapi.json: FastAPI adds
        # those without the app's dependencies.
        dependencies=[auth if auth is not None else _require_dag_run_read()],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def read(
        ctx: Context, parsed: q.Parsed | None, with_overview: bool = True
    ) -> tuple[Any, Any, list[str], str | None]:
        """(overview, log page, integration ids, error) from the chosen OA database."""
        try:
            engine = engine_for(ctx.oa)
            with engine.connect() as conn:
                ids, ov = [], None
                if with_overview:
                    ids = [
                        i.id for i in ctx.site.integrations.values() if i.oa_connection_id == ctx.oa
                    ]
                    ids = list(dict.fromkeys([*ids, *q.integrations_in_log(conn)]))
                    ov = q.overview(conn, ids, ctx.days)
                page = q.query_log(conn, parsed.filter, parsed.paging) if parsed else None
                conn.rollback()
            return ov, page, ids, None
        except Exception as exc:
            if not isinstance(exc, sa.exc.SQLAlchemyError) and type(exc).__name__ not in (
                "AirflowNotFoundException",
                "OADatabaseUnavailable",
                "ConfigError",
            ):
                log.exception("calsync sync-log page: reading OA connection %s failed", ctx.oa)
            return None, None, [], describe_error(exc, ctx.oa)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Response:
        ctx = make_context(request, site_for())
        parsed = q.parse_params(ctx.params, ctx.tz)
        ov, log_page, ids, error = read(ctx, parsed)
        html = templates.get_template("synclog.html").render(
            c=ctx,
            f=parsed.filter,
            problems=ctx.problems + parsed.problems,
            ov=ov,
            log=log_page,
            integration_ids=ids,
            error=error,
        )
        return HTMLResponse(html, status_code=503 if error else 200, headers=SECURITY_HEADERS)

    @app.get("/api/log")
    def api_log(request: Request) -> Response:
        ctx = make_context(request, site_for())
        parsed = q.parse_params(ctx.params, ctx.tz)
        _, log_page, _, error = read(ctx, parsed, with_overview=False)
        if error:
            return JSONResponse({"detail": error, "oa_connection": ctx.oa}, status_code=503)
        assert log_page is not None
        return JSONResponse(
            {
                "oa_connection": ctx.oa,
                "total": log_page.total,
                "page": log_page.paging.page,
                "size": log_page.paging.size,
                "pages": log_page.pages,
                "problems": ctx.problems + parsed.problems,
                "records": [
                    {**r.as_json(), "run_url": ctx.run_url(r.dag_id, r.run_id)}
                    for r in log_page.records
                ],
            },
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/api/overview")
    def api_overview(request: Request) -> Response:
        ctx = make_context(request, site_for())
        ov, _, _, error = read(ctx, None)
        if error:
            return JSONResponse({"detail": error, "oa_connection": ctx.oa}, status_code=503)
        return JSONResponse(
            {
                "oa_connection": ctx.oa,
                "connections": ctx.site.connections,
                "days": ctx.days,
                "problems": ctx.problems,
                **_json(asdict(ov)),
            },
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            return Response(status_code=404)
        return Response(
            _static(name),
            media_type=STATIC_TYPES[name],
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """401/403 on the page: a short page saying so (with a login link), same status."""
        root = request.scope.get("root_path", "")
        path = request.scope.get("path", "")
        local = path[len(root) :] if root and path.startswith(root) else path
        if exc.status_code not in (401, 403) or local.rstrip("/") != "":
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        lang = i18n.pick_language(
            request.query_params.get("lang"), request.headers.get("accept-language")
        )
        base = root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else root
        login = None
        if exc.status_code == 401:
            target = f"{base}{URL_PREFIX}/" + (f"?{request.url.query}" if request.url.query else "")
            login = _login_url(target, base)
        html = templates.get_template("denied.html").render(
            lang=lang,
            t=lambda key: i18n.label(key, lang),
            status=exc.status_code,
            login=login,
        )
        return HTMLResponse(html, status_code=exc.status_code, headers=SECURITY_HEADERS)

    return app


def _login_url(next_url: str, base: str) -> str:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login(next_url=next_url)
    except Exception:  # no auth manager (tests): Airflow's default login page
        return f"{base}/auth/login?{urlencode({'next': next_url})}"


def _json(value: Any) -> Any:
    """Dataclass dicts for JSON: naive UTC datetimes as ISO with offset."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC).isoformat()
    return value

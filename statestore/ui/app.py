"""The inspector's ASGI app: HTML pages and the JSON API under ``/api/`` they use.

Read-only: every handler reads through the store's public API (:mod:`statestore.ui.data`);
no route writes to the store. Who sees what:

- A request may carry a store API token, as ``Authorization: Bearer <token>`` or in the
  HttpOnly, SameSite=Strict cookie the login form sets. A token that does not validate
  is refused (401), whatever the binding. A valid token shows its tenant only, except an
  ``operator`` token of the ``default`` tenant (made on the unscoped store), which shows
  every tenant.
- Without a token: refused when ``require_token`` (the inspector is bound to an address other
  than loopback); otherwise the unscoped store. Then only requests whose ``Host`` is a
  loopback name are served, so a web page elsewhere cannot read the inspector through the
  browser by pointing its own host name at 127.0.0.1 (DNS rebinding).

Every page is rendered by Jinja2 with autoescaping (payloads are user data) and served with a
Content-Security-Policy that allows only this app's own script and style.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from statestore.errors import DatabaseError, StateStoreError
from statestore.models import ApiToken, TokenRole
from statestore.store import StateStore
from statestore.ui import data

HERE = Path(__file__).resolve().parent
COOKIE = "statestore_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
ALL_TENANTS_TENANT = "default"
MAX_FORM_BYTES = 4096
SIGNED_OUT = "not signed in"
_LINE_BREAK = re.compile(r"\n\s*")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _pretty(value: Any) -> str:
    """A JSON value as indented text (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _compact(value: Any) -> str:
    """A JSON value on one line (an event's fields in the timeline), as inspector.js writes
    it: ``{ "a": 1, "b": [ 2 ] }``."""
    return _LINE_BREAK.sub(" ", json.dumps(value, ensure_ascii=False, indent=1))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = _pretty
    env.filters["compact"] = _compact
    env.filters["q"] = lambda value: quote(str(value), safe="")
    return env


class Refused(Exception):
    """The request may not see the store (401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Inspector:
    """The app's state: the unscoped store and the access rule."""

    def __init__(self, store: StateStore, *, require_token: bool, loopback_only: bool) -> None:
        if store.tenant_id is not None:
            raise ValueError("the inspector needs the unscoped store; tokens choose the tenant")
        self.store = store
        self.require_token = require_token
        self.loopback_only = loopback_only
        self.templates = _environment()

    # ------------------------------------------------------------------ access

    async def view(self, request: Request) -> tuple[StateStore, ApiToken | None]:
        """The store view this request may read, and its token; :class:`Refused` if none."""
        token = _bearer(request) or request.cookies.get(COOKIE)
        if token:
            record = await self.store.validate_token(token)
            if record is None:
                raise Refused("this token is not valid (unknown, revoked, or expired)")
            return self.view_for(record), record
        if self.require_token:
            raise Refused("a store API token is required")
        if self.loopback_only and _host(request) not in LOOPBACK_HOSTS:
            raise Refused("served to loopback host names only; use 127.0.0.1 or localhost")
        return self.store, None

    def view_for(self, record: ApiToken) -> StateStore:
        if record.role == TokenRole.OPERATOR and record.tenant_id == ALL_TENANTS_TENANT:
            return self.store
        return self.store.for_tenant(record.tenant_id)

    # ------------------------------------------------------------------ rendering

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        token: ApiToken | None,
        status_code: int = 200,
    ) -> HTMLResponse:
        template = self.templates.get_template(name)
        html = template.render(
            **{"who": _who(token), **context},
            signed_in=token is not None and COOKIE in request.cookies,
            path=request.url.path,
        )
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _host(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def _who(token: ApiToken | None) -> str:
    if token is None:
        return "local operator, all tenants"
    if token.role == TokenRole.OPERATOR and token.tenant_id == ALL_TENANTS_TENANT:
        scope = "all tenants"
    else:
        scope = f"tenant {token.tenant_id}"
    return f"{token.name} ({token.role.value}), {scope}"


def _json(payload: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status_code, headers=SECURITY_HEADERS)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(
    store: StateStore, *, require_token: bool = False, loopback_only: bool | None = None
) -> Starlette:
    """The inspector over ``store`` (unscoped; the caller closes it).

    ``require_token``: refuse requests without a valid store API token (use it whenever the
    app is reachable from anything but this machine). ``loopback_only`` (default: when no
    token is required): serve token-less requests only for a loopback ``Host``.
    """
    inspector = Inspector(
        store,
        require_token=require_token,
        loopback_only=(not require_token) if loopback_only is None else loopback_only,
    )

    async def guarded(request: Request, handler: Any) -> Response:
        try:
            view, token = await inspector.view(request)
        except Refused as refused:
            if _wants_json(request):
                return _json({"error": refused.reason}, 401)
            return inspector.page(
                request,
                "login.html",
                {"error": refused.reason, "next": request.url.path, "who": SIGNED_OUT},
                token=None,
                status_code=401,
            )
        try:
            response: Response = await handler(request, view, token)
            return response
        except data.BadRequest as error:
            return _error(request, 400, str(error), token)
        except DatabaseError as error:
            return _error(request, 503, f"the database is unavailable: {error}", token)
        except StateStoreError as error:
            return _error(request, 400, str(error), token)

    def _error(request: Request, status: int, message: str, token: ApiToken | None) -> Response:
        if _wants_json(request):
            return _json({"error": message}, status)
        return inspector.page(
            request,
            "error.html",
            {"status": status, "message": message},
            token=token,
            status_code=status,
        )

    def route(path: str, handler: Any, methods: list[str] | None = None) -> Route:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, handler)

        return Route(path, endpoint, methods=methods or ["GET"])

    # ------------------------------------------------------------------ JSON API

    async def api_overview(request: Request, view: StateStore, _: Any) -> Response:
        return _json(await data.overview(view))

    async def api_executions(request: Request, view: StateStore, _: Any) -> Response:
        return _json(await _executions(request, view))

    async def api_execution(request: Request, view: StateStore, _: Any) -> Response:
        found = await data.execution(view, request.path_params["execution_id"])
        if found is None:
            return _json({"error": "no such execution"}, 404)
        return _json(found)

    async def api_events(request: Request, view: StateStore, _: Any) -> Response:
        execution_id = request.path_params["execution_id"]
        if await view.get_execution(data.parse_uuid(execution_id, "execution id")) is None:
            return _json({"error": "no such execution"}, 404)
        after = _int(request.query_params.get("after"), "after")
        limit = data.page_size(request.query_params.get("limit"))
        return _json(await data.events(view, execution_id, after=after, limit=limit))

    async def api_dead_letters(request: Request, view: StateStore, _: Any) -> Response:
        return _json(await _dead_letters(request, view))

    async def api_feed(request: Request, view: StateStore, _: Any) -> Response:
        return _json(await _feed(request, view))

    # ------------------------------------------------------------------ pages

    async def overview_page(request: Request, view: StateStore, token: Any) -> Response:
        return inspector.page(request, "overview.html", await data.overview(view), token=token)

    async def executions_page(request: Request, view: StateStore, token: Any) -> Response:
        found = await _executions(request, view)
        return inspector.page(request, "executions.html", found, token=token)

    async def execution_page(request: Request, view: StateStore, token: Any) -> Response:
        found = await data.execution(view, request.path_params["execution_id"])
        if found is None:
            return _error(request, 404, "no such execution (or not in your tenant)", token)
        return inspector.page(request, "execution.html", found, token=token)

    async def dead_letters_page(request: Request, view: StateStore, token: Any) -> Response:
        found = await _dead_letters(request, view)
        return inspector.page(request, "dead_letters.html", found, token=token)

    async def feed_page(request: Request, view: StateStore, token: Any) -> Response:
        return inspector.page(request, "feed.html", await _feed(request, view), token=token)

    # ------------------------------------------------------------------ signing in

    async def login_form(request: Request) -> Response:
        next_path = _safe_next(request.query_params.get("next"))
        context = {"error": None, "next": next_path, "who": SIGNED_OUT}
        return inspector.page(request, "login.html", context, token=None)

    async def login(request: Request) -> Response:
        body = await _small_body(request)
        form = parse_qs(body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        next_path = _safe_next((form.get("next") or ["/"])[0])
        record = await inspector.store.validate_token(token) if token else None
        if record is None:
            return inspector.page(
                request,
                "login.html",
                {"error": "this token is not valid", "next": next_path, "who": SIGNED_OUT},
                token=None,
                status_code=401,
            )
        response = RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    routes = [
        route("/", overview_page),
        route("/executions", executions_page),
        route("/executions/{execution_id}", execution_page),
        route("/dead-letters", dead_letters_page),
        route("/feed", feed_page),
        route("/api/overview", api_overview),
        route("/api/executions", api_executions),
        route("/api/executions/{execution_id}", api_execution),
        route("/api/executions/{execution_id}/events", api_events),
        route("/api/dead-letters", api_dead_letters),
        route("/api/feed", api_feed),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.inspector = inspector
    return app


async def _executions(request: Request, view: StateStore) -> dict[str, Any]:
    params = request.query_params
    return await data.executions(
        view,
        status=params.get("status") or None,
        workflow_id=params.get("workflow") or None,
        tenant_id=params.get("tenant") or None,
        after=params.get("after") or None,
        limit=data.page_size(params.get("limit")),
    )


async def _feed(request: Request, view: StateStore) -> dict[str, Any]:
    after = _int(request.query_params.get("after"), "after")
    return await data.feed(
        view, after=after, limit=data.page_size(request.query_params.get("limit"))
    )


async def _dead_letters(request: Request, view: StateStore) -> dict[str, Any]:
    params = request.query_params
    return await data.dead_letters(
        view, after=params.get("after") or None, limit=data.page_size(params.get("limit"))
    )


def _int(value: str | None, name: str) -> int:
    if value in (None, ""):
        return 0
    try:
        return int(value)
    except ValueError:
        raise data.BadRequest(f"{name} must be a whole number") from None


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of this app only (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def _small_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    return body[:MAX_FORM_BYTES]


__all__ = ["COOKIE", "create_app"]

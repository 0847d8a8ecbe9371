"""The web console at /console: login, logout and one page shell; everything else is the admin API.

The pages are plain ES modules under ``static/`` that call ``/api/v1`` with the session cookie and the
CSRF header, so the console has no business logic of its own and shows the API's own error messages.
"""

from __future__ import annotations

import html
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from palyra.console.session import COOKIE_NAME, ConsoleSessions
from palyra.console.throttle import LoginThrottle

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
        b"form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Every console response: no framing, no inline script, no sniffing, no referrer to other sites."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _template(name: str) -> Template:
    return Template((HERE / "templates" / name).read_text(encoding="utf-8"))


def _same_origin(request: Request, public_base_url: str) -> bool:
    """A login form post must come from a console page (or a client that sends no Origin)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc
    allowed = {request.headers.get("host", ""), urlsplit(public_base_url).netloc}
    return bool(netloc) and netloc in allowed


def build_console(sessions: ConsoleSessions, *, public_base_url: str = "") -> Starlette:
    login_page, app_page = _template("login.html"), _template("app.html")
    throttle = LoginThrottle()

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render_login(request: Request, message: str, status: int = 200, kind: str = "info") -> Response:
        body = login_page.substitute(
            base=html.escape(base(request)),
            message=html.escape(message),
            message_kind=kind if message else "hidden",
        )
        return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})

    async def index(request: Request) -> Response:
        session = sessions.from_request(request)
        if session is None:
            suffix = "?expired=1" if COOKIE_NAME in request.cookies else ""
            return RedirectResponse(f"{base(request)}/login{suffix}", status_code=303)
        body = app_page.substitute(
            base=html.escape(base(request)),
            csrf_token=html.escape(session.csrf_token),
            expires_at=str(session.expires_at),
        )
        return HTMLResponse(body, headers={"cache-control": "no-store"})

    async def login_form(request: Request) -> Response:
        if sessions.from_request(request) is not None:
            return RedirectResponse(f"{base(request)}/", status_code=303)
        message = ""
        if request.query_params.get("expired"):
            message = "Your console session has ended; log in again."
        elif request.query_params.get("logged_out"):
            message = "You are logged out."
        return render_login(request, message)

    async def login(request: Request) -> Response:
        if not _same_origin(request, public_base_url):
            return render_login(request, "This login form was posted from another site.", 403, "error")
        client = request.client.host if request.client else "unknown"
        wait = throttle.retry_after_s(client)
        if wait:
            response = render_login(
                request, f"Too many failed logins; try again in {wait:.0f} s.", 429, "error"
            )
            response.headers["retry-after"] = str(int(wait))
            return response
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return render_login(request, "The login form is too large.", 413, "error")
        form = await request.form(max_files=0, max_fields=4)
        supplied = form.get("admin_token")
        if not isinstance(supplied, str) or not supplied.strip():
            return render_login(request, "Enter the admin token.", 400, "error")
        if not sessions.admin_token_matches(supplied):
            throttle.failed(client)
            return render_login(
                request,
                "That is not the admin token (PALYRA_ADMIN_TOKEN, or <state_dir>/admin_token).",
                401,
                "error",
            )
        throttle.succeeded(client)
        cookie, _session = sessions.issue()
        response = RedirectResponse(f"{base(request)}/", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=sessions.ttl_s,
            path="/",
            secure=sessions.secure(request),
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        session = sessions.from_request(request)
        if session is not None:
            form = await request.form(max_files=0, max_fields=4)
            supplied = form.get("csrf_token")
            if not sessions.csrf_ok(session, supplied if isinstance(supplied, str) else None):
                return render_login(request, "Log out from the console page itself.", 403, "error")
            sessions.log_out(session)
        response = RedirectResponse(f"{base(request)}/login?logged_out=1", status_code=303)
        response.delete_cookie(
            COOKIE_NAME, path="/", secure=sessions.secure(request), httponly=True, samesite="strict"
        )
        return response

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders)],
    )

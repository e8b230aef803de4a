"""The web side of ``rtagx review``: a Starlette app served by uvicorn on the loopback interface.

Safety rules, all enforced by :class:`Guard` before any route runs:

* bound to 127.0.0.1 only; the ``Host`` header must name that address (or ``localhost``) and the
  port, so a DNS-rebinding page cannot talk to it;
* every request carries the per-session token (``?token=`` on pages and images, the
  ``X-Rtagx-Token`` header on API calls), compared in constant time;
* state-changing requests are POST only, must carry the token in the header (a cross-site form
  cannot set one) and an ``Origin`` (or, without one, a ``Referer``) of this very server;
* files are named only through :meth:`ReviewLibrary.photo_for`: cached photos under the reviewed
  roots, real path inside a root. Nothing else on disk is ever served.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rtagx.analysis.search import text_path
from rtagx.errors import RtagxError, UsageError
from rtagx.review.library import OutsideRoots, ReviewLibrary
from rtagx.review.pages import Pages

LOOPBACK = "127.0.0.1"
SAFE_METHODS = ("GET", "HEAD")
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; img-src 'self'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class Guard:
    """ASGI middleware refusing every request that breaks a rule above (403, plain text)."""

    def __init__(self, app: ASGIApp, token: str, port_of: Callable[[], int]) -> None:
        self.app = app
        self.token = token
        self.port_of = port_of

    def refusal(self, request: Request) -> str | None:
        port = self.port_of()
        hosts = {f"{LOOPBACK}:{port}", f"localhost:{port}"}
        if request.headers.get("host", "") not in hosts:
            return "wrong Host header"
        given = request.headers.get("x-rtagx-token")
        if request.method in SAFE_METHODS:
            given = given or request.query_params.get("token")
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return "missing or wrong token"
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is None:
                referer = request.headers.get("referer")
                origin = f"{urlsplit(referer).scheme}://{urlsplit(referer).netloc}" if referer else None
            if origin not in {f"http://{h}" for h in hosts}:
                return "cross-origin request refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        reason = self.refusal(Request(scope))
        if reason is not None:
            await PlainTextResponse(f"rtagx review: {reason}", status_code=403)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _page_number(request: Request) -> int:
    try:
        return max(0, int(request.query_params.get("page", "0")))
    except ValueError:
        return 0


def _decision(value: object) -> int:
    """-1, 0 or 1 exactly: ``int()`` would make 0.5 "forget", ``true`` "accept" and Infinity a 500."""
    if type(value) is not int or value not in (-1, 0, 1):
        raise UsageError(f"decision must be 1, -1 or 0, not {value!r}")
    return value


def build_app(library: ReviewLibrary, token: str, port_of: Callable[[], int]) -> ASGIApp:
    pages = Pages(token)
    script = resources.files("rtagx.review").joinpath("static/review.js").read_bytes()

    def not_found(e: Exception) -> Response:
        return PlainTextResponse(f"rtagx review: {e}", status_code=404)

    def index(request: Request) -> Response:
        return HTMLResponse(pages.index(library.tag_summary(), library.photo_count(), library.roots))

    def tag(request: Request) -> Response:
        try:
            grid = library.tag_grid(request.query_params.get("name", ""), _page_number(request))
        except UsageError as e:
            return not_found(e)
        return HTMLResponse(pages.tag_grid(grid))

    def photo(request: Request) -> Response:
        try:
            view = library.photo_view(library.photo_for(request.query_params.get("path", "")))
        except OutsideRoots as e:
            return not_found(e)
        return HTMLResponse(pages.photo(view, sorted(t.keyword for t in library.vocab.tags)))

    def folders(request: Request) -> Response:
        return HTMLResponse(pages.folders(library.roots))

    def folder(request: Request) -> Response:
        try:
            view = library.folder_view(library.folder_for(request.query_params.get("path", "")), _page_number(request))
        except OutsideRoots as e:
            return not_found(e)
        return HTMLResponse(pages.folder(view))

    def thumb(request: Request) -> Response:
        try:
            p = library.photo_for(request.query_params.get("path", ""))
            size = int(request.query_params.get("size", "256"))
        except (OutsideRoots, ValueError) as e:
            return not_found(e)
        data = library.thumbnail(p, size)
        if data is None:
            return PlainTextResponse("cannot decode this photo", status_code=415)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    def search(request: Request) -> Response:
        text = request.query_params.get("q", "")[:500]
        try:
            return HTMLResponse(pages.search(text, library.search(text)))
        except RtagxError as e:
            return HTMLResponse(pages.search(text, [], str(e)), status_code=400)

    def static_js(request: Request) -> Response:
        return Response(script, media_type="text/javascript")

    def plan(request: Request) -> Response:
        return HTMLResponse(pages.plan(library.plan()))

    async def change(request: Request, by_hand: bool) -> Response:
        try:
            body = await request.json()
            paths = body["paths"]
            if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
                raise UsageError("paths must be a non-empty list of strings")
            photos = [library.photo_for(p) for p in paths]
            decision = _decision(body.get("decision", 0))
            tag_name = str(body["tag"])
        except OutsideRoots as e:
            return JSONResponse({"error": str(e)}, status_code=404)
        except (ValueError, KeyError, TypeError, UsageError) as e:
            return JSONResponse({"error": f"bad request: {e}"}, status_code=400)
        try:
            if by_hand:  # the person's keyword, never rtagx's
                outcomes = await _in_thread(library.add_by_hand, photos, tag_name)
            else:
                outcomes = await _in_thread(library.decide, photos, tag_name, decision)
        except RtagxError as e:
            return JSONResponse({"error": str(e)}, status_code=409)
        files = {}
        for o in outcomes:
            files[text_path(o.path)] = {  # keyed by the name the page shows and sent
                "action": o.action,
                "added": o.added,
                "removed": o.removed,
                "reason": o.reason,
                # a skipped file holds what it held; its tags are only what would have been written
                "written": o.action != "skipped" and any(t.casefold() == tag_name.casefold() for t, _ in o.tags),
            }
        written = sum(o.action == "written" for o in outcomes)
        return JSONResponse({"files": files, "summary": f"{len(outcomes)} files, {written} rewritten"})

    async def decide(request: Request) -> Response:
        return await change(request, by_hand=False)

    async def add(request: Request) -> Response:
        return await change(request, by_hand=True)

    async def apply(request: Request) -> Response:
        try:
            outcomes = await _in_thread(library.apply)
        except RtagxError as e:
            return JSONResponse({"error": str(e)}, status_code=409)
        written = sum(o.action == "written" for o in outcomes)
        return JSONResponse(
            {
                "summary": f"{written} files rewritten",
                "files": [{"path": text_path(o.path), "action": o.action} for o in outcomes],
            }
        )

    routes = [
        Route("/", index),
        Route("/tag", tag),
        Route("/photo", photo),
        Route("/folders", folders),
        Route("/folder", folder),
        Route("/thumb", thumb),
        Route("/static/review.js", static_js),
        Route("/plan", plan),
        Route("/search", search),
        Route("/api/decide", decide, methods=["POST"]),
        Route("/api/add", add, methods=["POST"]),
        Route("/api/apply", apply, methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes), token, port_of)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


class ReviewServer:
    """The app on a loopback socket: :meth:`start` serves in a thread (tests), :meth:`serve_forever`
    in the calling one (the command). ``url`` is the address with the session token."""

    def __init__(self, library: ReviewLibrary, port: int = 0, token: str | None = None) -> None:
        import uvicorn

        self.token = token or secrets.token_urlsafe(32)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((LOOPBACK, port))
            self.sock.listen(128)  # connections wait from now on, before the server loop starts
        except OSError as e:
            self.sock.close()
            raise UsageError(f"cannot listen on {LOOPBACK}:{port}: {e.strerror or e}") from None
        self.port = int(self.sock.getsockname()[1])
        self.app = build_app(library, self.token, lambda: self.port)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/?token={self.token}"

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="rtagx-review", daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            self._thread.join(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()

"""The server: one FastAPI app with the `/sdapi/v1` API, the Gradio UI mounted at `/`, run by uvicorn.

`serve(argv)` is what `python launch.py [flags]` runs. `create_app(webui)` builds the app (tests use it with a
`WebUI` of their own, and `ServerThread` to run it on 127.0.0.1). Around the routes sit two middlewares:
HTTP basic auth (`--api-auth`) on every path under `/sdapi/` - including routes extensions add later in their
`app_started` callback - and a request body size limit (413). Errors are answered in A1111's shape
`{"error", "detail", "body", "errors"}`; bad input gets a 4xx, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home, whoever imports gradio later
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.encoders import jsonable_encoder  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.routing import Match, Mount  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from modules.api.api import Api, validation_message  # noqa: E402
from modules.startup_timer import StartupTimer  # noqa: E402

log = logging.getLogger(__name__)

API_PATH_PREFIX = "/sdapi/"
DEFAULT_MAX_BODY_BYTES = 50 * 1024 * 1024


# ------------------------------------------------------------------------------------------------ auth


def parse_api_auth(text: str | None) -> list[tuple[str, str]]:
    """`user:pass[,user2:pass2]` -> [(user, pass), ...]; ValueError naming the bad entry."""
    if not text:
        return []
    pairs = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise ValueError(f"--api-auth: expected user:password, got {entry.split(':')[0]!r}...")
        pairs.append((user, password))
    return pairs


def _error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                    body: Any = None, errors: Any = None) -> JSONResponse:
    content = {"error": error, "detail": detail, "body": body, "errors": errors}
    return JSONResponse(status_code=status, content=jsonable_encoder(content), headers=headers)


class ApiAuthMiddleware:
    """HTTP basic auth on every request whose path starts with `/sdapi/` (checked before routing)."""

    def __init__(self, app: ASGIApp, credentials: Sequence[tuple[str, str]], prefix: str = API_PATH_PREFIX) -> None:
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in credentials]
        self.prefix = prefix

    def _authorized(self, scope: Scope) -> bool:
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        ok = False
        for good_user, good_password in self.credentials:  # no early exit: same time for every entry
            match_user = secrets.compare_digest(user, good_user)
            match_password = secrets.compare_digest(password, good_password)
            ok |= match_user and match_password
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        protected = path.startswith(self.prefix) or path.rstrip("/") == self.prefix.rstrip("/")
        if scope["type"] == "http" and protected and not self._authorized(scope):
            response = _error_response(401, "Unauthorized", "missing or wrong API credentials",
                                       headers={"WWW-Authenticate": 'Basic realm="sdapi"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------ body limit


class BodyTooLarge(StarletteHTTPException):
    """Raised while a request body is read past the limit; answered with 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")
        self.error = "RequestTooLarge"


class BodySizeLimitMiddleware:
    """Answer 413 to requests whose body is over `max_bytes` (by Content-Length, or counted while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error_response(413, "RequestTooLarge", f"request body larger than {self.max_bytes} bytes",
                                   headers={"Connection": "close"})
        await response(scope, receive, send)


# ------------------------------------------------------------------------------------------ exceptions


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts at the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount):
            continue
        match, _ = route.matches({**request.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in A1111's shape; unexpected exceptions are logged and answered 500."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods; list every route's
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _error_response(exc.status_code, getattr(exc, "error", type(exc).__name__), str(exc.detail),
                               headers=headers or None)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            body = jsonable_encoder(exc.body)
        except (TypeError, ValueError, UnicodeDecodeError):
            body = None
        try:
            errors = jsonable_encoder(exc.errors())
        except (TypeError, ValueError, UnicodeDecodeError):
            errors = [str(e) for e in exc.errors()]
        return _error_response(422, "RequestValidationError", validation_message(exc), body=body, errors=errors)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error_response(500, type(exc).__name__, str(exc) or type(exc).__name__)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


# ------------------------------------------------------------------------------------------------- app


def _mounts_last(app: FastAPI) -> None:
    """Keep mounted apps (the Gradio UI at `/`) behind the routes, so routes added later are reachable."""
    routes = app.router.routes
    routes[:] = [r for r in routes if not isinstance(r, Mount)] + [r for r in routes if isinstance(r, Mount)]


def create_app(webui: Any, ui: bool | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """Build the FastAPI app: API routes, the UI (unless `--nowebui` or `ui=False`), middleware, extension routes.

    Runs `before_ui(webui)` once per WebUI object (extensions register their extra networks there) and
    `app_started(webui, app)` after the app is built (extensions add their routes there).
    """
    if ui is None:
        ui = not getattr(webui.args, "nowebui", False)
    app = FastAPI(title="Stable Diffusion WebUI", version="1.0",
                  description="A1111-compatible API; see /docs. Errors: {error, detail, body, errors}.")
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    credentials = parse_api_auth(getattr(webui.args, "api_auth", None))
    if credentials:
        app.add_middleware(ApiAuthMiddleware, credentials=credentials)
    if not webui.before_ui_ran:
        webui.before_ui_ran = True
        webui.callbacks.run("before_ui", webui)
    Api(webui).register(app)
    if ui:
        from modules import ui as webui_ui  # noqa: PLC0415 - gradio is slow to import; API-only skips it

        webui_ui.mount_ui(app, webui)
    webui.callbacks.run("app_started", webui, app)
    _mounts_last(app)
    return app


def load_startup_model(webui: Any) -> None:
    """Load `--ckpt`, else the `sd_model_checkpoint` option, else the first checkpoint; failures are logged."""
    manager = webui.models
    wanted = getattr(webui.args, "ckpt", None) or webui.options.get("sd_model_checkpoint") or None
    try:
        if wanted:
            manager.load(wanted)
        else:
            manager.get()
    except Exception as exc:  # a broken or missing file must not stop the server: the user can pick another
        log.error("could not load checkpoint %s: %s", wanted or "(default)", exc)
        if wanted:
            try:
                manager.get()
            except Exception as fallback_exc:
                log.error("no checkpoint loaded: %s", fallback_exc)


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, embedding); `start()` waits until it listens."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self.config.port)

    def start(self, timeout: float = 60.0) -> ServerThread:
        """Start serving; returns once the socket listens (RuntimeError if uvicorn fails or `timeout` passes)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to shut down and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind_host(args: Any) -> str:
    """127.0.0.1, or 0.0.0.0 (every interface) with `--listen`."""
    return "0.0.0.0" if getattr(args, "listen", False) else "127.0.0.1"


def serve(argv: Sequence[str] | None, startup: StartupTimer | None = None) -> int:
    """Build the WebUI from `argv`, load the model, serve UI and API on 127.0.0.1 (0.0.0.0 with `--listen`).

    The console says what each start-up phase does; once the socket listens, one line gives the start-up breakdown
    (`modules.startup_timer`): `serving on http://...; startup 7.9 s: imports 3.1 s, ...`."""
    from modules.host import WebUI  # noqa: PLC0415

    startup = startup or StartupTimer()
    startup.record("imports")
    webui = WebUI.create(list(argv or []), startup=startup)
    try:
        parse_api_auth(webui.args.api_auth)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    with startup.phase("UI build", "building the UI and the API"):
        app = create_app(webui)
    host = bind_host(webui.args)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=webui.args.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5))
    threading.Thread(target=_announce_then_load, args=(server, webui, host, startup), name="startup-model",
                     daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its clean shutdown (uvicorn.run swallows it too)
        pass
    return 0


def _announce_then_load(server: uvicorn.Server, webui: Any, host: str, startup: StartupTimer) -> None:
    """Wait until uvicorn listens, log where with the start-up breakdown (one line), then load the model.

    The model loads after the page is served, as in A1111: its imports (diffusers, transformers) and weights are not
    needed to show the page; a generation asked for meanwhile waits for it (`ModelManager`'s lock)."""
    while not server.started and not server.should_exit:
        time.sleep(0.02)
    if not server.started:
        return
    startup.record("server start")
    log.info("serving on http://%s:%d (API under %s, docs at /docs); %s", host, webui.args.port, API_PATH_PREFIX,
             startup.summary())
    started = time.perf_counter()
    log.info("loading the model in the background (generation requests wait for it)")
    load_startup_model(webui)
    current = webui.models.current
    log.info("model %s in %.1f s; ready to generate %.1f s after launch",
             f"{current.checkpoint.name} loaded" if current is not None else "not loaded",
             time.perf_counter() - started, startup.total())

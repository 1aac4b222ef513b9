"""The server: one FastAPI app with the `/sdapi/v1` API, the Gradio UI mounted at `/`, run by uvicorn.

`serve(argv)` is what `python launch.py [flags]` runs. `create_app(webui)` builds the app (tests use it with a
`WebUI` of their own, and `ServerThread` to run it on 127.0.0.1). Around the routes sit three middlewares: the Host
header check (421 for a host the server is not bound to: DNS rebinding; `--allowed-hosts` for reverse proxies), HTTP
basic auth (`--api-auth` on every path under `/sdapi/` - including routes extensions add later in their
`app_started` callback - and on every request elsewhere that may write or generate; `--gradio-auth` on the whole UI;
see `ApiAuthMiddleware`) and a request body size limit (413). Errors are answered in A1111's shape
`{"error", "detail", "body", "errors"}`; bad input gets a 4xx, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import secrets
import socket
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

from modules import safe_json  # noqa: E402
from modules.api.api import Api, validation_message  # noqa: E402
from modules.startup_timer import StartupTimer  # noqa: E402

log = logging.getLogger(__name__)

API_PATH_PREFIX = "/sdapi/"
DEFAULT_MAX_BODY_BYTES = 50 * 1024 * 1024


# ------------------------------------------------------------------------------------------------ auth


def parse_api_auth(text: str | None, flag: str = "--api-auth") -> list[tuple[str, str]]:
    """`user:pass[,user2:pass2]` -> [(user, pass), ...]; ValueError naming the flag and the bad entry."""
    if not text:
        return []
    pairs = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise ValueError(f"{flag}: expected user:password, got {entry.split(':')[0]!r}...")
        pairs.append((user, password))
    return pairs


def _error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                    body: Any = None, errors: Any = None) -> JSONResponse:
    content = {"error": error, "detail": detail, "body": body, "errors": errors}
    try:
        encoded = jsonable_encoder(content)
    except (TypeError, ValueError, RecursionError, UnicodeError):
        encoded = {"error": error, "detail": detail, "body": None, "errors": None}
    return JSONResponse(status_code=status, content=safe_json.sendable(encoded), headers=headers)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiAuthMiddleware:
    """HTTP basic auth, checked before routing (so routes extensions add later are covered too):

    * every request under `/sdapi/` needs the `--api-auth` credentials (when given);
    * outside it, with `--gradio-auth`: every request (the UI, the Gradio API, `/lora-ui/*`) needs those credentials
      (or the API's). Decision: HTTP basic auth rather than Gradio's login form, so that the extension routes beside
      Gradio are guarded by the same check;
    * outside it, with `--api-auth` alone: every request that may write or generate (any method but GET, HEAD,
      OPTIONS: `/lora-ui/save`, `/lora-ui/replace-preview`, the Gradio API's calls that run txt2img, settings and the
      tools) needs the API credentials; pages and reads stay open as in A1111.
    """

    def __init__(self, app: ASGIApp, credentials: Sequence[tuple[str, str]], prefix: str = API_PATH_PREFIX,
                 ui_credentials: Sequence[tuple[str, str]] = ()) -> None:
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in credentials]
        self.ui_credentials = [(u.encode(), p.encode()) for u, p in ui_credentials]
        self.prefix = prefix

    @staticmethod
    def _authorized(scope: Scope, credentials: Sequence[tuple[bytes, bytes]]) -> bool:
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
        for good_user, good_password in credentials:  # no early exit: same time for every entry
            match_user = secrets.compare_digest(user, good_user)
            match_password = secrets.compare_digest(password, good_password)
            ok |= match_user and match_password
        return ok

    def required(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """The credentials that admit this request (None: it needs none)."""
        path = scope.get("path", "")
        if path.startswith(self.prefix) or path.rstrip("/") == self.prefix.rstrip("/"):
            return self.credentials or None
        if self.ui_credentials:
            return self.ui_credentials + self.credentials
        if self.credentials and (scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS):
            return self.credentials
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            needed = self.required(scope)
            if needed is not None and not self._authorized(scope, needed):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = _error_response(401, "Unauthorized", "missing or wrong credentials",
                                           headers={"WWW-Authenticate": 'Basic realm="sdapi"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------ host check

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(header: str) -> str:
    """The host of a Host header without its port, lower-case (`[::1]:7860` -> `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(args: Any) -> frozenset[str] | None:
    """The Host header values the server answers (None: any). Bound to 127.0.0.1: the local names plus
    `--allowed-hosts`; with `--listen`: any, unless `--allowed-hosts` names them. `*` in the list allows any."""
    extra = {host_name(h) for h in (getattr(args, "allowed_hosts", None) or "").split(",") if h.strip()}
    if "*" in extra:
        return None
    if getattr(args, "listen", False):
        return frozenset(extra | LOCAL_HOSTS) if extra else None
    return frozenset(LOCAL_HOSTS | extra)


class HostCheckMiddleware:
    """Answer 421 Misdirected Request to requests whose Host header names another host than the server's: a web
    page that rebinds its own DNS name to 127.0.0.1 (DNS rebinding) then cannot reach the local server. A request
    without a Host header (HTTP/1.0) passes."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            header = next((v for k, v in scope.get("headers", []) if k == b"host"), None)
            if header is not None and host_name(header.decode("latin-1")) not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = _error_response(421, "MisdirectedRequest",
                                           f"this server does not answer for host {header.decode('latin-1')[:100]!r}; "
                                           "start it with --allowed-hosts NAME to allow it (reverse proxies)")
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
        except (TypeError, ValueError, UnicodeError, RecursionError):
            body = None
        try:
            errors = jsonable_encoder(exc.errors())
        except (TypeError, ValueError, UnicodeError, RecursionError):
            errors = [safe_json.sendable(str(e)) for e in exc.errors()]
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
    ui_credentials = parse_api_auth(getattr(webui.args, "gradio_auth", None), "--gradio-auth")
    if credentials or ui_credentials:
        app.add_middleware(ApiAuthMiddleware, credentials=credentials, ui_credentials=ui_credentials)
    hosts = allowed_hosts(webui.args)
    if hosts is not None:  # outermost: a rebinding page gets 421 before anything else runs
        app.add_middleware(HostCheckMiddleware, allowed=hosts)
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
    """127.0.0.1, or 0.0.0.0 (every interface) with `--listen`, or A1111's `--server-name ADDRESS`."""
    if getattr(args, "server_name", None):
        return str(args.server_name)
    return "0.0.0.0" if getattr(args, "listen", False) else "127.0.0.1"


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on `host:port` (in use, not allowed), or None when it can. Binds and closes a
    socket with the options uvicorn uses (SO_REUSEADDR), so a port in TIME_WAIT counts as free, as it is."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (is another WebUI running?): stop it, or start "
                        f"with --port {port + 1} (any free port)")
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def serve(argv: Sequence[str] | None, startup: StartupTimer | None = None) -> int:
    """Build the WebUI from `argv`, load the model, serve UI and API on 127.0.0.1 (0.0.0.0 with `--listen`).

    A port that is in use is found before anything slow (the message says so and the exit status is 1). The console
    says what each start-up phase does; once the socket listens, one line gives the start-up breakdown
    (`modules.startup_timer`): `serving on http://...; startup 7.9 s: imports 3.1 s, ...`."""
    from modules import cmd_args  # noqa: PLC0415
    from modules.host import WebUI  # noqa: PLC0415

    startup = startup or StartupTimer()
    args = cmd_args.parse_args(list(argv or []))
    problem = port_problem(bind_host(args), args.port)  # before anything slow: the model is not loaded for nothing
    if problem is not None:
        log.error("%s", problem)
        return 1
    startup.record("imports")
    webui = WebUI.create(list(argv or []), startup=startup)
    try:
        parse_api_auth(webui.args.api_auth)
        parse_api_auth(getattr(webui.args, "gradio_auth", None), "--gradio-auth")
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

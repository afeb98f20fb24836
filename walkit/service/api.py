"""The backup worker's HTTP API (starlette, served by uvicorn; the ``server`` extra).

Endpoints (JSON everywhere; every error is ``{"error": "<one sentence>", ...}``)::

    GET  /backup/status     200 what ``walkit status --json`` says, plus the worker's counters
                            (``?check_provider=true``: the off-site part from the provider's listing); 400 bad query
    GET  /backup/snapshots  200 {"snapshots": [...]}, oldest first
    POST /backup/snapshot   201 {"snapshot": ...}: a local snapshot, never touches the quota; 503 no MongoDB URI
    POST /backup/trigger    200 the upload's result (also when skipped); 429 the day's call is spent (Retry-After);
                            503 the service is down (not spent); 502 it failed the call; 507 the bundle is too large
    GET  /backup/strategy   200 the three backup methods, the recovery scenarios and the configured facts
    GET  /healthz           200 / 503 (the home is unreadable, the ledger is unreadable, or the worker is not healthy)
    GET  /metrics           200 Prometheus text exposition (0.0.4)
    GET  /openapi.json      200 the OpenAPI 3.0 document of all of the above

POST endpoints need ``Authorization: Bearer <token>`` (401 without it, 403 with a wrong one, 403 when no
token is configured: then they are disabled).  GET endpoints need none.  Any endpoint may answer 500.

Guaranteed: no traceback and no token ever reaches a response body or a log line (uvicorn's access log
is off; unexpected exceptions are logged through ``logging.getLogger("walkit.api")`` and answered 500);
``POST /backup/trigger`` sends nothing when the call is spent (``walkit.offsite.upload.upload`` refuses first);
blocking work runs in starlette's thread pool.  Not guaranteed: TLS (bind to loopback, the default, or
put a proxy in front), any rate limit on the GET endpoints.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from walkit.clock import Clock
from walkit.errors import (
    ConfigError,
    ProviderError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitError,
    StorageLimitError,
    WalkitError,
)
from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.status import status
from walkit.offsite.upload import UploadResult
from walkit.providers.base import ExternalBackupProvider
from walkit.restore.snapshot import SnapshotInfo, list_snapshots
from walkit.service.openapi import one_line, openapi_document, strategy_document

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["ApiContext", "ApiServer", "create_app", "serve", "openapi_document"]

log = logging.getLogger("walkit.api")
NEED_EXTRA = "the HTTP API needs the server extra: pip install 'walkit[server]'"


@dataclass
class ApiContext:
    """What the API serves: one home, its ledger, and the worker's actions (see the module docstring)."""

    home: Home
    ledger: QuotaLedger
    token: str | None  # WALKIT_API_TOKEN; None or "": POST endpoints disabled
    snapshot: Callable[[], SnapshotInfo] | None  # a local snapshot (no quota); None: no MongoDB URI configured
    trigger: Callable[[], UploadResult]  # the day's one call
    provider: Callable[[], ExternalBackupProvider] | None = None  # only for ?check_provider=true
    live: Callable[[], dict[str, Any]] | None = None  # the running worker's counters; None: no worker
    strategy: dict[str, Any] = field(default_factory=dict)  # configured facts shown by /backup/strategy
    clock: Clock | None = None

    def now(self) -> datetime:
        return (self.clock or self.ledger.clock).now()

    def worker(self) -> dict[str, Any]:
        """live() (or {"running": False}); a failing live() reads as a worker not running."""
        if self.live is None:
            return {"running": False}
        try:
            return dict(self.live())
        except Exception as exc:
            log.exception("the worker's live() failed")
            return {"running": False, "healthy": False, "error": f"the worker's counters are unavailable ({type(exc).__name__})"}


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _retry_after(now: datetime, when: datetime | None) -> str:
    return str(max(1, math.ceil((when - now).total_seconds()))) if when is not None else "60"


# -- endpoints ---------------------------------------------------------------------------------
def _status(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import JSONResponse

    flag = request.query_params.get("check_provider", "false")
    if flag not in ("true", "false"):
        return _error(400, f"check_provider must be true or false, not {flag!r}")
    provider = None
    problem = None
    if flag == "true":
        if ctx.provider is None:
            problem = "no provider is configured"
        else:
            try:
                provider = ctx.provider()
            except WalkitError as exc:
                problem = one_line(exc)
    out = status(ctx.home, ctx.ledger, provider=provider, clock=ctx.clock)
    if problem is not None:
        out["offsite"]["error"] = f"cannot check the provider: {problem}; shown from the quota ledger"
    out["worker"] = ctx.worker()
    out["api"] = {"post_enabled": bool(ctx.token)}
    return JSONResponse(out)


def _snapshots(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"snapshots": [s.as_dict() for s in list_snapshots(ctx.home)]})


def _take_snapshot(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import JSONResponse

    if ctx.snapshot is None:
        return _error(503, "no MongoDB URI configured: the worker cannot take snapshots (set the URI and restart it)")
    info = ctx.snapshot()
    log.info("snapshot %s taken through the API", info.id)
    return JSONResponse({"snapshot": info.as_dict()}, status_code=201)


def _trigger(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import JSONResponse

    try:
        result = ctx.trigger()
    except (QuotaExceededError, RateLimitError) as exc:
        when = exc.next_allowed if isinstance(exc, QuotaExceededError) else ctx.ledger.next_allowed()
        log.info("trigger refused: the call is spent")
        return _error(429, one_line(exc), {"Retry-After": _retry_after(ctx.now(), when)}, next_allowed=when.isoformat() if when else None)
    except ProviderUnavailableError as exc:
        return _error(503, one_line(exc), spent=False)
    except StorageLimitError as exc:
        return _error(507, one_line(exc), spent=exc.sent)
    except ProviderError as exc:
        log.warning("trigger: the provider failed the call (spent: %s)", exc.sent)
        return _error(502, one_line(exc), spent=exc.sent)
    log.info("trigger: %s", result.skipped or f"uploaded as {result.ref}")
    return JSONResponse(result.as_dict())


def _strategy(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(strategy_document(ctx))


def _healthz(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import JSONResponse

    checks: dict[str, Any] = {}
    path = ctx.home.path
    home_ok = path.is_dir() and os.access(path, os.R_OK | os.X_OK)
    checks["home"] = {"ok": home_ok, "detail": str(path) if home_ok else f"the home {path} is missing or not readable"}
    try:
        ctx.ledger.calls()
        checks["ledger"] = {"ok": True, "detail": str(ctx.ledger.path)}
    except WalkitError as exc:
        checks["ledger"] = {"ok": False, "detail": one_line(exc)}
    if ctx.live is not None:
        live = ctx.worker()
        running, healthy = bool(live.get("running")), bool(live.get("healthy", live.get("running")))
        phase = live.get("phase") or "no phase reported"
        if not running:
            why = str(live.get("error") or "the worker is not running")
        elif not healthy:
            why = f"the worker is unhealthy (phase: {phase})"
        else:
            why = f"running (phase: {phase})"
        checks["worker"] = {"ok": running and healthy, "detail": why}
    failed = [c["detail"] for c in checks.values() if not c["ok"]]
    body: dict[str, Any] = {"ok": not failed, "checks": checks}
    if failed:
        body["error"] = "; ".join(failed)
    return JSONResponse(body, status_code=503 if failed else 200)


def _metrics(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import Response

    return Response(metrics_text(ctx), media_type="text/plain; version=0.0.4; charset=utf-8")


def _openapi(ctx: ApiContext, request: Request) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(openapi_document())


# -- documents ---------------------------------------------------------------------------------
def metrics_text(ctx: ApiContext) -> str:
    """Prometheus text exposition 0.0.4; a metric whose value is unknown is left out."""
    live = ctx.worker() if ctx.live is not None else {}
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return
        out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"])

    metric("walkit_events_captured_total", "counter", "Change events captured into the WAL by this worker.", live.get("events_captured"))
    metric("walkit_capture_gaps_total", "counter", "Gap markers written (change stream history lost).", live.get("gaps"))
    metric("walkit_capture_reconnects_total", "counter", "Change stream reconnects.", live.get("reconnects"))
    metric("walkit_capture_lag_seconds", "gauge", "Capture lag, 99th percentile, in seconds.", live.get("capture_lag_p99_seconds"))
    metric("walkit_errors_total", "counter", "Errors the worker met.", live.get("errors"))
    wal = ctx.home.wal_dir
    try:
        size = sum(p.stat().st_size for p in wal.rglob("*") if p.is_file()) if wal.is_dir() else 0
    except OSError:
        size = None
    metric("walkit_wal_bytes", "gauge", "Bytes in the home's WAL folder.", size)
    try:
        metric("walkit_snapshots", "gauge", "Local snapshots.", len(list_snapshots(ctx.home)))
    except WalkitError:
        pass
    try:
        calls = ctx.ledger.calls()
        ok = [c for c in calls if c.ok]
        if ok:
            metric("walkit_last_successful_upload_timestamp_seconds", "gauge", "When the newest successful upload was made (Unix time).", ok[-1].at.timestamp())
        spent = [c for c in calls if c.spent]
        nxt = ctx.ledger.next_allowed(spent[-1]) if spent else None
        metric("walkit_quota_available", "gauge", "1 if the day's upload call may be made now.", int(nxt is None or ctx.now() >= nxt))
        if nxt is not None:
            metric("walkit_quota_next_allowed_timestamp_seconds", "gauge", "When the next upload call is allowed (Unix time).", nxt.timestamp())
    except WalkitError:
        pass
    metric("walkit_worker_up", "gauge", "1 if the backup worker runs in this process.", int(bool(live.get("running"))))
    return "\n".join(out) + "\n"


def _require_server_extra() -> None:
    try:
        import starlette.applications  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(NEED_EXTRA) from None


def _guard(ctx: ApiContext, handler: Callable[[ApiContext, Request], Response], post: bool) -> Callable[[Request], Response]:
    """``handler`` as a sync endpoint: authorised first (POST), WalkitError as 500 with its message,
    anything else logged and answered 500 without details."""

    def endpoint(request: Request) -> Response:
        if post:
            refusal = _authorise(ctx.token, request.headers.get("authorization"))
            if refusal is not None:
                return refusal
        try:
            return handler(ctx, request)
        except WalkitError as exc:
            log.warning("%s %s failed: %s", request.method, request.url.path, one_line(exc))
            return _error(500, one_line(exc))
        except Exception as exc:
            log.exception("%s %s failed unexpectedly", request.method, request.url.path)
            return _error(500, f"internal error ({type(exc).__name__}); details are in the server's walkit.service.api log")

    endpoint.__name__ = handler.__name__.lstrip("_")
    return endpoint


def _authorise(token: str | None, header: str | None) -> Response | None:
    if not token:
        return _error(403, "POST endpoints are disabled: set WALKIT_API_TOKEN")
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _error(401, "this endpoint needs an 'Authorization: Bearer <token>' header", {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return _error(403, "the bearer token is wrong")
    return None


def create_app(ctx: ApiContext) -> Starlette:
    """The starlette application serving ``ctx`` (ConfigError without the server extra)."""
    _require_server_extra()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = {404: f"no endpoint {request.url.path}; see /openapi.json", 405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(exc.status_code, text.get(exc.status_code, str(exc.detail)), dict(exc.headers or {}))

    routes = [
        Route("/backup/status", _guard(ctx, _status, False), methods=["GET"]),
        Route("/backup/snapshots", _guard(ctx, _snapshots, False), methods=["GET"]),
        Route("/backup/snapshot", _guard(ctx, _take_snapshot, True), methods=["POST"]),
        Route("/backup/trigger", _guard(ctx, _trigger, True), methods=["POST"]),
        Route("/backup/strategy", _guard(ctx, _strategy, False), methods=["GET"]),
        Route("/healthz", _guard(ctx, _healthz, False), methods=["GET"]),
        Route("/metrics", _guard(ctx, _metrics, False), methods=["GET"]),
        Route("/openapi.json", _guard(ctx, _openapi, False), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


# -- serving -----------------------------------------------------------------------------------
def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); ConfigError naming host:port."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another process may use the port; pick another)") from None
    sock.set_inheritable(True)
    return sock


class ApiServer:
    """The API served by uvicorn in a background thread (loopback by default).

    ``start()`` returns once the socket listens; ``port`` is then the real one.  Not guaranteed: that
    requests in flight at ``stop()`` finish (uvicorn gets 5 s to close them).
    """

    def __init__(self, ctx: ApiContext, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.ctx, self.host, self.port = ctx, host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ApiServer:
        """Bind, serve in a thread and wait until uvicorn accepts connections (ConfigError if it cannot)."""
        if self._thread is not None:
            return self
        _require_server_extra()
        import uvicorn

        app = create_app(self.ctx)
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5, server_header=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"walkit-api-{self.port}", daemon=True)
        self._server, self._thread, self._sock = server, thread, sock
        thread.start()
        while not server.started:
            if not thread.is_alive():
                self.stop()
                raise ConfigError(f"the API server on {self.host}:{self.port} stopped while starting (see the uvicorn log)")
            thread.join(0.01)
        return self

    def stop(self) -> None:
        """Ask uvicorn to finish and wait for its thread (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(ctx: ApiContext, host: str = "127.0.0.1", port: int = 8080, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (then return); ``on_ready(url)`` once it listens.

    Signals are caught only when called from the main thread; elsewhere it serves until the server stops.
    """
    server = ApiServer(ctx, host, port).start()
    stop = threading.Event()
    previous: dict[Any, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        if on_ready is not None:
            on_ready(server.url)
        thread = server._thread
        while not stop.is_set() and thread is not None and thread.is_alive():
            stop.wait(0.2)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

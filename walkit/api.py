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
``POST /backup/trigger`` sends nothing when the call is spent (``walkit.upload.upload`` refuses first);
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

from .clock import Clock
from .errors import (
    ConfigError,
    ProviderError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitError,
    StorageLimitError,
    WalkitError,
)
from .home import Home
from .providers.base import ExternalBackupProvider
from .quota import QuotaLedger
from .snapshot import SnapshotInfo, list_snapshots
from .status import status
from .upload import UploadResult, offsite_position

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


def _one_line(exc: BaseException) -> str:
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


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
                problem = _one_line(exc)
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
        return _error(429, _one_line(exc), {"Retry-After": _retry_after(ctx.now(), when)}, next_allowed=when.isoformat() if when else None)
    except ProviderUnavailableError as exc:
        return _error(503, _one_line(exc), spent=False)
    except StorageLimitError as exc:
        return _error(507, _one_line(exc), spent=exc.sent)
    except ProviderError as exc:
        log.warning("trigger: the provider failed the call (spent: %s)", exc.sent)
        return _error(502, _one_line(exc), spent=exc.sent)
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
        checks["ledger"] = {"ok": False, "detail": _one_line(exc)}
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
def strategy_document(ctx: ApiContext) -> dict[str, Any]:
    """The strategy explained; ``current`` is read from the ledger (no provider call)."""
    facts = dict(ctx.strategy)
    every = facts.get("snapshot_interval_hours")
    current: dict[str, Any]
    try:
        _, last = offsite_position(ctx.ledger)
        ends = [] if last is None else [last.what.get("last_wall"), (last.what.get("snapshot") or {}).get("end_wall")]
        covered = max((e for e in ends if e), key=datetime.fromisoformat, default=None)
        loss = None if covered is None else round((ctx.now() - datetime.fromisoformat(covered)).total_seconds(), 3)
        current = {
            "last_successful_upload_at": None if last is None else last.at.isoformat(),
            "offsite_covered_until": covered,
            "max_loss_seconds_if_site_lost_now": loss,
            "quota": ctx.ledger.status(),
        }
    except WalkitError as exc:
        current = {"error": _one_line(exc)}
    return {
        "summary": (
            "Every change is captured continuously into a local write-ahead log, local snapshots bound how much of it a "
            "restore replays, and once a day everything since the last successful upload goes off-site in one bundle, "
            "because the external service allows one upload call per day."
        ),
        "methods": [
            {
                "name": "wal", "title": "Continuous change capture (write-ahead log)", "where": "local", "frequency": "continuous",
                "uses_quota": False,
                "what": "every change from MongoDB's change stream, in checksummed, hash-chained WAL segments on this machine",
                "protects_against": ["a bad delete or update (restore to the instant before it)", "a crash of the MongoDB server (replay onto a snapshot)"],
                "does_not_protect_against": ["losing this machine's disk or the whole site"],
            },
            {
                "name": "snapshots", "title": "Local snapshots", "where": "local",
                "frequency": (f"every {every:g} h" if isinstance(every, (int, float)) else "periodically") + " and on demand (POST /backup/snapshot)",
                "uses_quota": False,
                "what": "a mongodump-compatible scan made consistent by the WAL from its start",
                "protects_against": ["long restores: a restore starts from the newest snapshot before its target", "a WAL gap (history lost): restores resume from the next snapshot"],
                "does_not_protect_against": ["losing this machine's disk or the whole site"],
            },
            {
                "name": "external", "title": "Daily off-site bundle", "where": "off-site", "frequency": "once a day (one upload call per day)",
                "uses_quota": True,
                "what": "one bundle: the WAL since the last successful upload, plus a snapshot when one is due (tar, zstd, optionally age-encrypted)",
                "protects_against": ["losing the whole site (restore from the external bundles alone)"],
                "does_not_protect_against": ["changes after the newest successful upload's coverage"],
            },
        ],
        "scenarios": [
            {
                "name": "recent_loss", "situation": "data deleted or damaged by mistake; the site is intact",
                "recovery": "restore to the instant before the mistake from the local snapshot + WAL", "max_data_loss": "none: every captured change is local",
            },
            {
                "name": "server_crash", "situation": "the MongoDB server is lost; this machine's disk is intact",
                "recovery": "restore the newest local snapshot and replay the WAL to its end", "max_data_loss": "only changes not yet captured (seconds)",
            },
            {
                "name": "site_lost", "situation": "the whole site is lost, local WAL and snapshots included",
                "recovery": "restore from the external bundles alone (walkit restore --from-external)",
                "max_data_loss": "the time since the newest successful upload's coverage (about a day; more if uploads failed)",
            },
        ],
        "configured": facts,
        "current": current,
    }


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


def _obj(props: dict[str, Any], required: list[str] | None = None, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if nullable:
        schema["nullable"] = True
    return schema


def _t(kind: str, nullable: bool = False) -> dict[str, Any]:
    return {"type": kind, "nullable": True} if nullable else {"type": kind}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of the endpoints (response schemas as the code answers)."""
    s, i, b = _t("string"), _t("integer"), _t("boolean")
    ns, ni, nn = _t("string", True), _t("integer", True), _t("number", True)
    error = _obj({"error": s}, ["error"])
    window = _obj({"from": ns, "to": ns}, ["from", "to"])
    stamp = _obj({"t": i, "i": i}, ["t", "i"])
    snapshot = _obj(
        {"id": s, "created": s, "consistent_from": s, "start": stamp, "end": stamp, "database": ns, "collections": i,
         "documents": i, "bytes": i, "wal_seq_before": ni, "wal_seq_after": ni},
        ["id", "created", "consistent_from", "start", "end", "database", "collections", "documents", "bytes"],
    )
    worker = _obj(
        {"running": b, "healthy": b, "phase": s, "events_captured": i, "gaps": i, "reconnects": i, "errors": i,
         "capture_lag_p99_seconds": nn, "last_event_at": ns, "last_snapshot_at": ns, "last_upload_attempt_at": ns,
         "next_upload_at": ns, "started_at": ns, "error": s},
        ["running"],
    )
    quota = _obj(
        {"window": {"type": "string", "enum": ["rolling", "calendar"]}, "used": b, "next_allowed": ns,
         "last_call": _obj({"id": s, "at": s, "ok": _t("boolean", True), "ref": {}, "error": ns}, ["id", "at", "ok"], nullable=True)},
        ["window", "used", "last_call", "next_allowed"],
    )
    status = _obj(
        {
            "now": s, "home": s, "quota": quota,
            "last_upload": _obj({"call": s, "at": s, "ref": {}, "index": ni, "first_seq": ni, "last_seq": ni, "changes_up_to": ns,
                                 "snapshot": _obj({}, nullable=True), "bytes": ni}, ["call", "at"], nullable=True),
            "waiting": _obj({"events": i, "gaps": i, "first_seq": ni, "last_seq": ni, "newest_change": ns,
                             "snapshots": {"type": "array", "items": s}, "error": s}, ["events", "gaps", "snapshots"]),
            "local": {"type": "array", "items": window},
            "capture": _obj({"newest_record": ns, "age_seconds": nn}, ["newest_record", "age_seconds"]),
            "offsite": _obj({"source": s, "bundles": i, "missing": ns, "windows": {"type": "array", "items": window}, "error": s}, ["source"]),
            "worker": worker,
            "api": _obj({"post_enabled": b}, ["post_enabled"]),
        },
        ["now", "home", "quota", "last_upload", "waiting", "local", "capture", "offsite", "worker", "api"],
    )
    upload = _obj({"ref": ns, "call": ns, "skipped": ns, "notes": {"type": "array", "items": s}, "bundle": _obj({}, nullable=True)},
                  ["ref", "call", "skipped", "notes", "bundle"])
    method = _obj({"name": s, "title": s, "where": s, "frequency": s, "uses_quota": b, "what": s,
                   "protects_against": {"type": "array", "items": s}, "does_not_protect_against": {"type": "array", "items": s}},
                  ["name", "where", "frequency", "uses_quota", "protects_against"])
    scenario = _obj({"name": s, "situation": s, "recovery": s, "max_data_loss": s}, ["name", "recovery", "max_data_loss"])
    strategy = _obj({"summary": s, "methods": {"type": "array", "items": method}, "scenarios": {"type": "array", "items": scenario},
                     "configured": _obj({}), "current": _obj({})}, ["summary", "methods", "scenarios", "configured", "current"])
    check = _obj({"ok": b, "detail": s}, ["ok", "detail"])
    health = _obj({"ok": b, "checks": {"type": "object", "additionalProperties": check}, "error": s}, ["ok", "checks"])
    spent_error = _obj({"error": s, "spent": b}, ["error", "spent"])

    def json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
        if headers:
            out["headers"] = headers
        return out

    fail = {"500": json("an unexpected failure (logged); the message says what", error)}
    auth = {
        "401": json("no or a malformed Authorization header", error, {"WWW-Authenticate": {"required": True, "schema": s}}),
        "403": json("a wrong token, or POST endpoints are disabled (no WALKIT_API_TOKEN)", error),
    }

    def get(summary: str, ok: dict[str, Any], extra: dict[str, Any] | None = None, **op: Any) -> dict[str, Any]:
        return {"get": {"summary": summary, "security": [], "responses": {"200": ok, **(extra or {}), **fail}, **op}}

    def post(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {"post": {"summary": summary, "security": [{"bearerAuth": []}], "responses": {**responses, **auth, **fail}}}

    return {
        "openapi": "3.0.3",
        "info": {"title": "walkit backup worker", "version": "1", "description": "The HTTP API of a walkit backup worker."},
        "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "WALKIT_API_TOKEN"}}},
        "paths": {
            "/backup/status": get(
                "The quota, what is off-site, what waits for the next upload, what can be restored, the worker's counters",
                json("the status", status), {"400": json("a bad query parameter", error)},
                parameters=[{"name": "check_provider", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]},
                             "description": "true: read the off-site part from the provider's listing (one list call, no upload)"}],
            ),
            "/backup/snapshots": get("The local snapshots, oldest first", json("the snapshots", _obj({"snapshots": {"type": "array", "items": snapshot}}, ["snapshots"]))),
            "/backup/snapshot": post("Take a local snapshot (never uses the quota)", {
                "201": json("the snapshot taken", _obj({"snapshot": snapshot}, ["snapshot"])),
                "503": json("no MongoDB URI is configured", error),
            }),
            "/backup/trigger": post("Make the day's one upload call (uses the daily quota)", {
                "200": json("the upload's result (skipped says why nothing was sent)", upload),
                "429": json("the day's call is spent; nothing was sent", _obj({"error": s, "next_allowed": ns}, ["error", "next_allowed"]),
                            {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}}),
                "502": json("the service failed the call", spent_error),
                "503": json("the service is down; the call is not spent", spent_error),
                "507": json("the bundle is larger than the service accepts", spent_error),
            }),
            "/backup/strategy": get("The backup strategy explained", json("the strategy", strategy)),
            "/healthz": get("Liveness: the home and ledger are readable and the worker (if any) is healthy",
                            json("healthy", health), {"503": json("unhealthy; error says why", health)}),
            "/metrics": get("Prometheus metrics", {"description": "text exposition 0.0.4", "content": {"text/plain": {"schema": s}}}),
            "/openapi.json": get("This document", json("the OpenAPI document", _obj({}))),
        },
    }


# -- the application ---------------------------------------------------------------------------
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
            log.warning("%s %s failed: %s", request.method, request.url.path, _one_line(exc))
            return _error(500, _one_line(exc))
        except Exception as exc:
            log.exception("%s %s failed unexpectedly", request.method, request.url.path)
            return _error(500, f"internal error ({type(exc).__name__}); details are in the server's walkit.api log")

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
    previous: dict[int, Any] = {}
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

"""The HTTP API's documents: the strategy explained (``GET /backup/strategy``) and the OpenAPI
schema (``GET /openapi.json``).  Plain data; :mod:`walkit.service.api` serves them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from walkit.errors import WalkitError
from walkit.offsite.upload import offsite_position

if TYPE_CHECKING:
    from walkit.service.api import ApiContext

__all__ = ["strategy_document", "openapi_document", "one_line"]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


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
        current = {"error": one_line(exc)}
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
                "recovery": "restore from the external bundles alone (walkit restore --from external)",
                "max_data_loss": "the time since the newest successful upload's coverage (about a day; more if uploads failed)",
            },
        ],
        "configured": facts,
        "current": current,
    }


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

"""Connecting to MongoDB through pymongo, and saying clearly what went wrong.

Guaranteed: :func:`describe_error` turns the pymongo errors a user can cause
(unreachable server, standalone server, bad URI, auth) into one sentence
with what to do; it returns None for anything it does not recognise.
"""

from __future__ import annotations

from typing import Any

import pymongo
import pymongo.uri_parser
from pymongo import errors as pm

from walkit.errors import ConfigError, NotAReplicaSetError

STANDALONE_FIX = (
    "change streams need a replica set: restart mongod with --replSet rs0 "
    "and run rs.initiate() once in mongosh (or use `walkit sandbox` for development)"
)


def connect(uri: str, timeout_ms: int = 10_000, **kwargs: Any) -> pymongo.MongoClient:
    """A client for ``uri`` (no I/O yet); a bad URI is a ConfigError.

    ``timeout_ms`` is the server selection timeout unless the URI sets one.
    """
    if "serverselectiontimeoutms" not in uri.lower():
        kwargs.setdefault("serverSelectionTimeoutMS", timeout_ms)
    try:
        kwargs.setdefault("tz_aware", True)
        return pymongo.MongoClient(uri, **kwargs)
    except (pm.ConfigurationError, pm.InvalidURI, ValueError, TypeError) as exc:
        raise ConfigError(f"bad MongoDB URI {redact(uri)!r}: {exc}") from None


def require_replica_set(client: pymongo.MongoClient, uri: str | None = None) -> dict[str, Any]:
    """The server's ``hello``; NotAReplicaSetError if it has no change streams.

    With ``uri``, a URI naming a replica set whose seeds turn out to be
    standalone servers is recognised too (pymongo only says "no members").
    """
    try:
        hello = client.admin.command("hello")
    except pm.ServerSelectionTimeoutError:
        standalone = _standalone_seed(uri) if uri else None
        if standalone:
            raise NotAReplicaSetError(f"{standalone} is a standalone server, not a member of the replica set the URI names; {STANDALONE_FIX}") from None
        raise
    if not hello.get("setName") and hello.get("msg") != "isdbgrid":
        where = f"{client.address[0]}:{client.address[1]}" if client.address else "the server"
        raise NotAReplicaSetError(f"{where} is a standalone server; {STANDALONE_FIX}")
    return hello


def _standalone_seed(uri: str) -> str | None:
    """The first seed host of ``uri`` that answers as a standalone server."""
    try:
        seeds = pymongo.uri_parser.parse_uri(uri)["nodelist"]
    except (pm.ConfigurationError, pm.InvalidURI, ValueError):
        return None
    for host, port in seeds:
        probe: pymongo.MongoClient = pymongo.MongoClient(host, port, directConnection=True, serverSelectionTimeoutMS=2000)
        try:
            hello = probe.admin.command("hello")
        except pm.PyMongoError:
            continue
        finally:
            probe.close()
        if not hello.get("setName") and hello.get("msg") != "isdbgrid":
            return f"{host}:{port}"
    return None


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``."""
    scheme, sep, rest = uri.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return uri
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def describe_error(exc: BaseException) -> str | None:
    """One clear sentence for a pymongo error a user can cause, else None."""
    if isinstance(exc, pm.ServerSelectionTimeoutError):
        detail = str(exc).split(", Timeout:")[0].split(" (configured timeouts")[0]
        return f"cannot reach MongoDB: is the server running and the URI right? ({detail})"
    if isinstance(exc, pm.OperationFailure):
        if exc.code == 40573 or "only supported on replica sets" in str(exc):
            return f"the server is standalone; {STANDALONE_FIX}"
        if exc.code in (13, 18):
            return f"MongoDB refused the credentials or the action ({exc.code}): {exc.details.get('errmsg') if exc.details else exc}"
        return f"MongoDB error {exc.code}: {exc.details.get('errmsg') if exc.details else exc}"
    if isinstance(exc, (pm.ConfigurationError, pm.InvalidURI)):
        return f"bad MongoDB settings: {exc}"
    if isinstance(exc, pm.AutoReconnect):
        return f"lost the connection to MongoDB: {exc}"
    return None

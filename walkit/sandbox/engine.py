"""The sandbox's command engine: state, dispatch and the server commands.

One :class:`Engine` holds the data (in mongomock-ng), the oplog, cursors and
sessions.  Every command runs under one lock, so the sandbox is linearizable;
awaiting change-stream ``getMore`` calls release it while they wait.  CRUD
commands live in :mod:`.crud`, DDL in :mod:`.ddl`, change streams in
:mod:`.changestream`, transactions in :mod:`.sessions`.

Guaranteed: :meth:`Engine.run` never raises; every failure becomes a MongoDB
error document with MongoDB's code.  Not guaranteed: durability (all data is
in memory) or MongoDB's performance characteristics.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mongomock_ng
from bson.binary import Binary
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from walkit.clock import Clock, SystemClock
from walkit.sandbox import options as options_
from walkit.sandbox.errors import CommandError
from walkit.sandbox.oplog import Entry, Oplog
from walkit.sandbox.wire import MAX_BSON_SIZE, MAX_MESSAGE_SIZE, Request

log = logging.getLogger("walkit.sandbox")

SANDBOX_NOTICE = (
    "walkit sandbox: a development stand-in for MongoDB, in memory only; "
    "do not keep data in it"
)
VERSION = "7.0.0"
MAX_WIRE_VERSION = 21
SYSTEM_DBS = ("admin", "config", "local")
#: An entry's clusterTime until it is logged (Timestamps are immutable: one will do).
_UNSET = Timestamp(0, 0)


@dataclass
class CollInfo:
    """What the sandbox knows about a collection beyond its documents."""

    uuid: Binary = field(default_factory=lambda: Binary(uuid.uuid4().bytes, 4))
    options: dict[str, Any] = field(default_factory=dict)
    #: Index specs as created (name -> spec), so listIndexes returns every option.
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def images(self) -> bool:
        opt = self.options.get("changeStreamPreAndPostImages") or {}
        return bool(opt.get("enabled"))


@dataclass
class Ctx:
    """One command being run."""

    db: str
    name: str
    body: dict[str, Any]
    sequences: dict[str, list[dict[str, Any]]]
    conn_id: int
    lsid: dict[str, Any] | None = None
    txn: Any = None  # sessions.Transaction when inside a transaction

    def arg(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)

    def docs(self, key: str) -> list[dict[str, Any]]:
        """A document list from the body or from an OP_MSG document sequence."""
        if key in self.sequences:
            return self.sequences[key]
        value = self.body.get(key)
        if not isinstance(value, list):
            raise CommandError(9, f"{self.name}.{key} must be an array of documents")
        return value

    @property
    def target(self) -> str:
        """The collection named by the command's first field."""
        value = self.body[self.name]
        if not isinstance(value, str) or not value:
            raise CommandError(73, f"{self.name} needs a collection name, got {value!r}")
        return value


Handler = Callable[["Engine", Ctx], dict[str, Any]]
COMMANDS: dict[str, Handler] = {}


def command(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler under one or more command names."""

    def register(fn: Handler) -> Handler:
        for name in names:
            COMMANDS[name.lower()] = fn
        return fn

    return register


class Engine:
    """All the state of one sandbox server."""

    def __init__(
        self,
        clock: Clock | None = None,
        oplog_size: int = 100_000,
        host: str = "127.0.0.1:27017",
        set_name: str | None = "rs0",
    ) -> None:
        from walkit.sandbox.sessions import Sessions

        self.clock = clock or SystemClock()
        self.lock = threading.RLock()
        self.client: Any = mongomock_ng.MongoClient()
        self.oplog = Oplog(self.clock, oplog_size, self.lock)
        self.host = host
        self.set_name = set_name
        self.election_id = ObjectId("7fffffff0000000000000001")
        self.colls: dict[tuple[str, str], CollInfo] = {}
        self.cursors: dict[int, Any] = {}
        self.cursor_seen: dict[int, float] = {}
        self.sessions = Sessions(self)
        self._conn_ids = itertools.count(1)
        self.started = time.monotonic()
        #: Seconds an awaiting change-stream getMore waits at most, whatever its maxTimeMS
        #: (None: maxTimeMS).  MongoDB's maxAwaitTimeMS is an upper bound: an empty batch
        #: may come sooner; a simulation sets this so that an idle stream polls more often.
        self.max_await: float | None = None

    # -- collections -------------------------------------------------------
    def coll(self, db: str, name: str) -> Any:
        return self.client[db][name]

    def exists(self, db: str, name: str) -> bool:
        """True when ``list_collection_names`` would name it (without listing them all)."""
        found: Any = self.client[db]._store._collections.get(name)  # (not [name]: that would add an entry)
        return found is not None and not name.startswith("system.") and bool(found.is_created)

    def info(self, db: str, name: str) -> CollInfo:
        """The collection's info, made when first seen (implicit creation)."""
        key = (db, name)
        found = self.colls.get(key)
        if found is None:
            found = self.colls[key] = CollInfo()
        return found

    def database_names(self) -> list[str]:
        return [n for n in self.client.list_database_names() if self.client[n].list_collection_names()]

    # -- logging changes ---------------------------------------------------
    def record(self, ctx: Ctx, entry: Entry) -> None:
        """Log a change now, or at commit when inside a transaction.

        The oplog stamps wallTime when the change (or the commit) is logged.
        """
        if entry.uuid is None and entry.coll is not None:  # a write that created its collection
            known = self.colls.get((entry.db, entry.coll))
            entry.uuid = known.uuid if known is not None else None
        if ctx.txn is not None:
            ctx.txn.entries.append(entry)
            return
        if not entry.images:
            self._drop_images(entry)
        self.oplog.append_one(entry)

    def publish(self, entries: list[Entry]) -> None:
        for entry in entries:
            if not entry.images:
                self._drop_images(entry)
        self.oplog.append(entries)

    @staticmethod
    def _drop_images(entry: Entry) -> None:
        """Keep no pre-image (nor an update's post-image) without changeStreamPreAndPostImages."""
        entry.pre = None
        if entry.op == "update":
            entry.post = None

    def new_entry(self, op: str, db: str, coll: str | None = None, **kw: Any) -> Entry:
        known = self.colls.get((db, coll)) if coll else None
        if known is not None and not known.images:  # (what the check below gives, without listing collections)
            images = False
        elif coll and self.exists(db, coll):
            known = self.info(db, coll)
            images = known.images
        else:
            images = False
        if known is not None and "uuid" not in kw:
            kw["uuid"] = known.uuid
        return Entry(ts=_UNSET, wall=self.clock.now(), op=op, db=db, coll=coll, images=images, **kw)

    def create_collection(self, ctx: Ctx, db: str, name: str, options: dict[str, Any] | None = None) -> CollInfo:
        """Create a collection (by ``create``, or implicitly by its first write) and log its ``create``.

        Inside a transaction the creation is noted, so an abort undoes it.
        """
        self.client[db].create_collection(name)
        info = self.colls[(db, name)] = CollInfo(options=dict(options or {}))
        if ctx.txn is not None:
            ctx.txn.created.append((db, name))
        desc = dict(info.options)
        id_index = options_.id_index(info.options)
        if id_index is not None:
            desc["idIndex"] = id_index
        self.record(ctx, self.new_entry("create", db, name, desc=desc))
        return info

    # -- cursors -----------------------------------------------------------
    def add_cursor(self, cursor: Any) -> int:
        self._prune_cursors()
        cid = int.from_bytes(os.urandom(7), "big") or 1
        self.cursors[cid] = cursor
        self.cursor_seen[cid] = time.monotonic()
        return cid

    def get_cursor(self, cid: int) -> Any:
        """The open cursor ``cid`` (CursorNotFound 43 if none), marked as used now."""
        self._prune_cursors()
        cursor = self.cursors.get(cid)
        if cursor is None:
            raise CommandError(43, f"cursor id {cid} not found")
        self.cursor_seen[cid] = time.monotonic()
        return cursor

    def drop_cursor(self, cid: int) -> bool:
        """Forget cursor ``cid``; True if it was open."""
        self.cursor_seen.pop(cid, None)
        return self.cursors.pop(cid, None) is not None

    def _prune_cursors(self, idle: float = 600.0) -> None:
        """Close cursors unused for ``idle`` seconds, as MongoDB's cursor timeout does."""
        now = time.monotonic()
        for cid in [c for c, t in self.cursor_seen.items() if now - t > idle]:
            self.drop_cursor(cid)

    # -- running commands --------------------------------------------------
    def new_connection(self) -> int:
        return next(self._conn_ids)

    def run(self, req: Request, conn_id: int) -> dict[str, Any]:
        """Run one request and return the reply document (never raises)."""
        body = req.body
        if not body:
            return self.finish(CommandError(9, "empty command document").reply())
        name = next(iter(body))
        db = body.get("$db") or req.legacy_db or "admin"
        ctx = Ctx(db=db, name=name, body=body, sequences=req.sequences, conn_id=conn_id)
        handler = COMMANDS.get(name.lower())
        try:
            if handler is None:
                raise CommandError(59, f"no such command: '{name}'")
            if not isinstance(db, str) or not db or "." in db or "\x00" in db:
                raise CommandError(73, f"invalid database name {db!r}")
            if self.set_name is None and _opens_change_stream(body):
                raise CommandError(40573, "The $changeStream stage is only supported on replica sets")
            with self.lock:
                reply = self.sessions.run(ctx, handler)
        except CommandError as exc:
            reply = exc.reply()
        except mongomock_ng.OperationFailure as exc:
            code = exc.code or 2
            reply = CommandError(code, str(exc)).reply()
        except NotImplementedError as exc:
            reply = CommandError(115, f"not supported by the walkit sandbox: {exc}").reply()
        except Exception as exc:  # a bug or an unforeseen input: answer, keep serving
            log.exception("command %r failed", name)
            reply = CommandError(1, f"{type(exc).__name__}: {exc}").reply()
        return self.finish(reply)

    def finish(self, reply: dict[str, Any]) -> dict[str, Any]:
        """Complete a reply: ``ok`` and, on a replica set, the cluster time."""
        reply.setdefault("ok", 1.0)
        if self.set_name is None:
            return reply
        ts = self.oplog.cluster_time
        reply["$clusterTime"] = {"clusterTime": ts, "signature": {"hash": Binary(b"\x00" * 20), "keyId": Int64(0)}}
        reply["operationTime"] = ts
        return reply


def _opens_change_stream(body: dict[str, Any]) -> bool:
    pipeline = body.get("pipeline")
    return "aggregate" in body and isinstance(pipeline, list) and bool(pipeline) and isinstance(pipeline[0], dict) and "$changeStream" in pipeline[0]


# -- server-level commands ---------------------------------------------------


def _hello(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    now = eng.clock.now()
    ts = eng.oplog.cluster_time
    optime = {"ts": ts, "t": Int64(1)}
    reply: dict[str, Any] = {"isWritablePrimary": True}
    if eng.set_name is not None:
        reply.update({
            "hosts": [eng.host],
            "setName": eng.set_name,
            "setVersion": 1,
            "secondary": False,
            "primary": eng.host,
            "me": eng.host,
            "electionId": eng.election_id,
            "lastWrite": {
                "opTime": optime,
                "lastWriteDate": now.replace(tzinfo=None),
                "majorityOpTime": optime,
                "majorityWriteDate": now.replace(tzinfo=None),
            },
        })
    reply.update({
        "maxBsonObjectSize": MAX_BSON_SIZE,
        "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
        "maxWriteBatchSize": 100_000,
        "localTime": now,
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": ctx.conn_id,
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": False,
        "walkitSandbox": SANDBOX_NOTICE,
    })
    # No topologyVersion: drivers then poll hello instead of streaming it.
    if ctx.name.lower() == "ismaster":
        reply["ismaster"] = True
    if ctx.arg("helloOk"):
        reply["helloOk"] = True
    return reply


command("hello", "isMaster")(_hello)


@command("ping")
def _ping(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    return {}


@command("buildInfo")
def _build_info(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    return {
        "version": VERSION,
        "gitVersion": "walkit-sandbox",
        "versionArray": [int(p) for p in VERSION.split(".")] + [0],
        "bits": 64,
        "maxBsonObjectSize": MAX_BSON_SIZE,
        "storageEngines": ["mongomock-ng"],
        "walkitSandbox": SANDBOX_NOTICE,
    }


@command("endSessions", "killSessions", "refreshSessions", "killAllSessions")
def _end_sessions(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    return {}


@command("whatsmyuri")
def _whatsmyuri(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    return {"you": "127.0.0.1"}


@command("connectionStatus")
def _connection_status(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}}


@command("replSetGetStatus")
def _rs_status(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    ts = eng.oplog.cluster_time
    return {
        "set": eng.set_name,
        "date": eng.clock.now(),
        "myState": 1,
        "members": [
            {"_id": 0, "name": eng.host, "health": 1.0, "state": 1, "stateStr": "PRIMARY", "optime": {"ts": ts, "t": Int64(1)}, "self": True}
        ],
    }


@command("serverStatus")
def _server_status(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    return {
        "host": eng.host,
        "version": VERSION,
        "process": "walkit-sandbox",
        "uptime": float(time.monotonic() - eng.started),
        "localTime": eng.clock.now(),
        "walkitSandbox": {
            "notice": SANDBOX_NOTICE,
            "oplogEntries": eng.oplog.groups,
            "oplogMaxEntries": eng.oplog.max_entries,
            "changesKept": len(eng.oplog.entries),
            "changesLogged": eng.oplog.appended,
            "openCursors": len(eng.cursors),
        },
    }


@command("getParameter")
def _get_parameter(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    return {"featureCompatibilityVersion": {"version": "7.0"}}


# Import for their registrations.
from walkit.sandbox import changestream, crud, ddl, sessions  # noqa: E402,F401

"""Change streams in the sandbox, shaped as the MongoDB manual documents.

A stream is a tailable cursor over the oplog, opened by an ``aggregate``
whose first stage is ``$changeStream``, at collection, database or cluster
level (``allChangesForCluster`` on ``admin``).  It supports ``resumeAfter``,
``startAfter``, ``startAtOperationTime``, ``fullDocument`` (default,
updateLookup, whenAvailable, required), ``fullDocumentBeforeChange`` (off,
whenAvailable, required), the stages MongoDB allows after ``$changeStream``,
``postBatchResumeToken`` in every batch and awaitable ``getMore``.

Invalidation follows the manual: a collection stream ends with ``invalidate``
after its collection is dropped or renamed (or its database dropped), or
another collection is renamed onto it (the stream sees that ``rename``
first, as MongoDB 7.0's does); a database stream after ``dropDatabase``; a
cluster stream never.  The invalidate goes through the user's stages like
any event: a ``$match`` may hide it, but the stream still ends and its last
``postBatchResumeToken`` is the invalidate's token.  Resuming with
``resumeAfter`` from an invalidate is refused (260); ``startAfter`` starts
after it.  Once the oplog no longer holds what a stream needs, the stream
fails with 286 ChangeStreamHistoryLost; an event token that falls inside the
oplog's window but names no logged event (another server's) fails with 280,
as MongoDB's "resume token was not found".

``showExpandedEvents: true`` (MongoDB 6.0+, the manual's "Change Events"
pages) adds, as MongoDB 7.0 does:

- ``collectionUUID`` (the UUID ``listCollections`` reports in
  ``info.uuid``) on every event about a collection: insert, update, replace,
  delete, drop, rename and the four below; not on dropDatabase and
  invalidate.  Fields come in the order ``_id, operationType, clusterTime,
  [txnNumber, lsid], collectionUUID, wallTime, [fullDocument], ns, [to],
  [documentKey], [operationDescription], [updateDescription],
  [stateBeforeChange], [fullDocumentBeforeChange]``;
- ``create`` (explicit, or implicit on a first write or createIndexes, then
  logged just before that write, inside its transaction if any) with
  ``operationDescription`` = the collection's options as listCollections
  reports them, plus ``idIndex``;
- ``createIndexes`` (``operationDescription.indexes``: the specs built; one
  event per index on an empty collection, one for all of them otherwise, as
  MongoDB's createIndexes / commitIndexBuild oplog entries give), and
  ``dropIndexes`` (one event per index, its full spec in a one-element
  ``indexes``);
- ``modify`` (collMod) with ``operationDescription`` (what changed) and
  ``stateBeforeChange`` (``collectionOptions`` with the uuid; ``indexOptions``
  when an index changed);
- ``operationDescription`` ``{to, dropTarget?}`` on rename, and
  ``updateDescription.disambiguatedPaths`` (always ``{}``: the sandbox never
  reports an ambiguous path, it logs a replace instead; see :mod:`.diff`).

Without it (the default) none of these appear and the events are exactly
what they were before expanded events existed: streams skip the DDL entries
as they skip other collections' writes (postBatchResumeToken moves past
them).  Not produced: ``nsType`` (8.0), view and time-series events,
``shardCollection`` and the other sharding events, and the events of the
temporary collection MongoDB uses for a cross-database rename.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from mongomock_ng.aggregate import process_pipeline

from walkit.sandbox.engine import SYSTEM_DBS, Ctx, Engine
from walkit.sandbox.errors import CommandError
from walkit.sandbox.oplog import (
    EXPANDED_OPS,
    KIND_EVENT,
    KIND_HIGH_WATER,
    KIND_INVALIDATE,
    MAX_INDEX,
    Entry,
    Position,
    decode_token,
)
from walkit.sandbox.wire import CODEC, MAX_BSON_SIZE, RAW_CODEC

FULL_DOCUMENT = ("default", "updateLookup", "whenAvailable", "required")
BEFORE_CHANGE = ("off", "whenAvailable", "required")
ALLOWED_STAGES = {"$match", "$project", "$addFields", "$set", "$unset", "$replaceRoot", "$replaceWith", "$redact"}
OPTIONS = {
    "resumeAfter", "startAfter", "startAtOperationTime", "fullDocument", "fullDocumentBeforeChange",
    "allChangesForCluster", "showExpandedEvents", "allowToRunOnConfigDB", "allowToRunOnSystemNS",
}
DEFAULT_AWAIT_MS = 1000
READ_CHUNK = 1000


@dataclass
class StreamCursor:
    """The server side of one change stream."""

    ns: str
    scope: str  # collection | database | cluster
    db: str | None
    coll: str | None
    full_document: str
    before_change: str
    stages: list[dict[str, Any]]
    position: Position
    pending_invalidate: Entry | None = None
    closed: bool = False
    kind: str = field(default="changestream")
    #: showExpandedEvents: DDL events, collectionUUID and operationDescription.
    expanded: bool = False

    # -- scoping -----------------------------------------------------------------
    def in_scope(self, e: Entry) -> bool:
        if e.coll is not None and e.coll.startswith("system."):
            return False
        if not self.expanded and e.op in EXPANDED_OPS:
            return False
        if self.scope == "cluster":
            return e.db not in SYSTEM_DBS
        if self.scope == "database":
            return e.db == self.db
        return (e.db == self.db and e.coll == self.coll) or self._renamed_onto(e)

    def _renamed_onto(self, e: Entry) -> bool:
        """A rename whose target is this collection stream's namespace."""
        return e.op == "rename" and e.to == (self.db, self.coll)

    def invalidates(self, e: Entry) -> bool:
        if self.scope == "collection":
            return (e.op in ("drop", "rename") and e.db == self.db and e.coll == self.coll) or self._renamed_onto(e)
        if self.scope == "database":
            return e.op == "dropDatabase" and e.db == self.db
        return False

    # -- rendering -----------------------------------------------------------------
    def render(self, eng: Engine, e: Entry) -> dict[str, Any]:
        if self.expanded:
            return self._render_expanded(eng, e)
        ev: dict[str, Any] = {
            "_id": eng.oplog.token(e.position),
            "operationType": e.op,
            "clusterTime": e.ts,
            "wallTime": e.wall,
        }
        if e.lsid is not None:
            ev["lsid"] = e.lsid
            ev["txnNumber"] = Int64(e.txn_number or 0)
        if e.op in ("insert", "replace"):
            ev["fullDocument"] = e.post
        ev["ns"] = {"db": e.db, "coll": e.coll} if e.coll is not None else {"db": e.db}
        if e.op == "rename" and e.to:
            ev["to"] = {"db": e.to[0], "coll": e.to[1]}
        if e.doc_key is not None:
            ev["documentKey"] = e.doc_key
        if e.op == "update":
            ev["updateDescription"] = e.update
            if self.full_document != "default":
                ev["fullDocument"] = self._post_image(eng, e)
        self._add_pre_image(ev, e)
        return ev

    def _render_expanded(self, eng: Engine, e: Entry) -> dict[str, Any]:
        """An event as a ``showExpandedEvents`` stream shows it (MongoDB's field order)."""
        ev: dict[str, Any] = {"_id": eng.oplog.token(e.position), "operationType": e.op, "clusterTime": e.ts}
        if e.lsid is not None:
            ev["txnNumber"] = Int64(e.txn_number or 0)
            ev["lsid"] = e.lsid
        if e.uuid is not None:
            ev["collectionUUID"] = e.uuid
        ev["wallTime"] = e.wall
        if e.op in ("insert", "replace"):
            ev["fullDocument"] = e.post
        elif e.op == "update" and self.full_document != "default":
            ev["fullDocument"] = self._post_image(eng, e)
        ev["ns"] = {"db": e.db, "coll": e.coll} if e.coll is not None else {"db": e.db}
        if e.op == "rename" and e.to:
            ev["to"] = {"db": e.to[0], "coll": e.to[1]}
        if e.doc_key is not None:
            ev["documentKey"] = e.doc_key
        if e.desc is not None:
            ev["operationDescription"] = e.desc
        if e.op == "update" and e.update is not None:
            ev["updateDescription"] = {**e.update, "disambiguatedPaths": {}}
        if e.state_before is not None:
            ev["stateBeforeChange"] = e.state_before
        self._add_pre_image(ev, e)
        return ev

    def _add_pre_image(self, ev: dict[str, Any], e: Entry) -> None:
        if e.op in ("update", "replace", "delete") and self.before_change != "off":
            if e.pre is None and self.before_change == "required":
                raise CommandError(47, f"Change stream was configured to require a pre-image for all update, delete and replace events, but the pre-image was not found for event: {ev['_id']}")
            ev["fullDocumentBeforeChange"] = e.pre

    def _post_image(self, eng: Engine, e: Entry) -> dict[str, Any] | None:
        if self.full_document == "updateLookup":
            return eng.coll(e.db, e.coll or "").find_one(e.doc_key)
        if e.post is None and self.full_document == "required":
            raise CommandError(47, f"Change stream was configured to require a post-image for all update, delete and replace events, but the post-image was not found for event: {eng.oplog.token(e.position)}")
        return e.post

    @staticmethod
    def invalidate_event(eng: Engine, e: Entry) -> dict[str, Any]:
        return {
            "_id": eng.oplog.token(e.position, KIND_INVALIDATE),
            "operationType": "invalidate",
            "clusterTime": e.ts,
            "wallTime": e.wall,
        }

    def _through_pipeline(self, eng: Engine, ev: dict[str, Any]) -> dict[str, Any] | None:
        if not self.stages:
            return ev
        out = list(process_pipeline([ev], eng.client[self.db or "admin"], self.stages, None))
        if not out:
            return None
        if out[0].get("_id") != ev["_id"]:
            raise CommandError(280, "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point.")
        return out[0]

    def _invalidate(self, eng: Engine, entry: Entry, events: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """End the stream with ``entry``'s invalidate, passed through the user's
        stages like any event: a ``$match`` may hide it, yet the stream still
        closes and its last postBatchResumeToken is the invalidate's token."""
        self.closed = True
        inv = self.invalidate_event(eng, entry)
        shaped = self._through_pipeline(eng, inv)
        if shaped is not None:
            events.append(shaped)
        return events, inv["_id"]

    # -- batches -----------------------------------------------------------------
    def collect(self, eng: Engine, limit: int) -> tuple[list[Any], Any]:
        """The next batch of events (encoded, as RawBSONDocuments) and its postBatchResumeToken (no waiting)."""
        events: list[Any] = []
        used = 0
        oplog = eng.oplog
        if self.pending_invalidate is not None:
            entry, self.pending_invalidate = self.pending_invalidate, None
            return self._invalidate(eng, entry, events)
        while not self.closed:
            oplog.check(self.position)
            chunk = oplog.read_after(self.position, READ_CHUNK)
            if not chunk:
                self.position = max(self.position, oplog.high_water())
                return events, position_token(eng, self.position)
            for entry in chunk:
                self.position = entry.position
                if not self.in_scope(entry):
                    continue
                ev = self._through_pipeline(eng, self.render(eng, entry))
                if ev is not None:
                    raw = bson.encode(ev, codec_options=CODEC)  # once: the reply copies these bytes
                    events.append(RawBSONDocument(raw, RAW_CODEC))
                    used += len(raw)
                if self.invalidates(entry):
                    if len(events) >= limit or used >= MAX_BSON_SIZE:
                        self.pending_invalidate = entry
                    else:
                        return self._invalidate(eng, entry, events)
                if len(events) >= limit or used >= MAX_BSON_SIZE:
                    return events, events[-1]["_id"]
        return events, position_token(eng, self.position)


def position_token(eng: Engine, pos: Position) -> dict[str, str]:
    """A high-water-mark token for a stream that has read through ``pos``."""
    t, i, idx = pos
    if idx < 0:  # just before (t, i): after everything at the previous clusterTime
        t, i, idx = (t, i - 1, MAX_INDEX) if i else (t - 1, MAX_INDEX, MAX_INDEX)
    return eng.oplog.token((t, i, idx), KIND_HIGH_WATER if idx == MAX_INDEX else KIND_EVENT)


def _parse_spec(ctx: Ctx, pipeline: list[Any]) -> dict[str, Any]:
    spec = pipeline[0]["$changeStream"]
    if not isinstance(spec, dict):
        raise CommandError(14, "the $changeStream stage must be a document")
    unknown = set(spec) - OPTIONS
    if unknown:
        raise CommandError(40415, f"BSON field '$changeStream.{sorted(unknown)[0]}' is an unknown field.")
    for stage in pipeline[1:]:
        name = next(iter(stage), None) if isinstance(stage, dict) else None
        if name not in ALLOWED_STAGES:
            raise CommandError(2, f"{name} is not permitted in a $changeStream pipeline")
    if sum(k in spec for k in ("resumeAfter", "startAfter", "startAtOperationTime")) > 1:
        raise CommandError(40674, "Only one type of resume option is allowed, but multiple were found.")
    if spec.get("fullDocument", "default") not in FULL_DOCUMENT:
        raise CommandError(2, f"'{spec.get('fullDocument')}' is not a valid fullDocument option; use one of {', '.join(FULL_DOCUMENT)}")
    if not isinstance(spec.get("showExpandedEvents", False), bool):
        raise CommandError(14, "BSON field '$changeStream.showExpandedEvents' is the wrong type, expected type 'bool'")
    if spec.get("fullDocumentBeforeChange", "off") not in BEFORE_CHANGE:
        raise CommandError(2, f"'{spec.get('fullDocumentBeforeChange')}' is not a valid fullDocumentBeforeChange option; use one of {', '.join(BEFORE_CHANGE)}")
    return spec


def _start_position(eng: Engine, stream: StreamCursor, spec: dict[str, Any]) -> Position:
    token = spec.get("resumeAfter", spec.get("startAfter"))
    if token is not None:
        try:
            pos, kind, epoch = decode_token(token)
        except ValueError as exc:
            raise CommandError(260, f"invalid resume token: {exc}") from None
        if epoch != eng.oplog.epoch:  # from before this server started: its oplog is gone
            raise CommandError(286, "Resume of change stream was not possible, as the resume point may no longer be in the oplog.")
        if kind == KIND_INVALIDATE and "resumeAfter" in spec:
            raise CommandError(260, "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.")
        if kind == KIND_EVENT and pos > eng.oplog.floor:
            entry = eng.oplog.find(pos)
            if entry is None:  # inside the window but never logged here: another server's token
                raise CommandError(280, f"cannot resume stream; the resume token was not found. {token}")
            if stream.invalidates(entry):
                stream.pending_invalidate = entry
        return pos
    at = spec.get("startAtOperationTime")
    if at is not None:
        if not isinstance(at, Timestamp):
            raise CommandError(14, "startAtOperationTime must be a BSON Timestamp")
        return (at.time, at.inc, -1)
    return eng.oplog.high_water()


def open_stream(eng: Engine, ctx: Ctx, pipeline: list[Any], batch_size: Any) -> dict[str, Any]:
    spec = _parse_spec(ctx, pipeline)
    target = ctx.body[ctx.name]
    if isinstance(target, str):
        scope, db, coll, ns = "collection", ctx.db, target, f"{ctx.db}.{target}"
    elif spec.get("allChangesForCluster"):
        if ctx.db != "admin":
            raise CommandError(73, "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database")
        scope, db, coll, ns = "cluster", None, None, "admin.$cmd.aggregate"
    else:
        if ctx.db in SYSTEM_DBS:
            raise CommandError(73, f"$changeStream may not be opened on the internal {ctx.db} database")
        scope, db, coll, ns = "database", ctx.db, None, f"{ctx.db}.$cmd.aggregate"
    stream = StreamCursor(
        ns=ns, scope=scope, db=db, coll=coll,
        full_document=spec.get("fullDocument", "default"),
        before_change=spec.get("fullDocumentBeforeChange", "off"),
        stages=pipeline[1:], position=(0, 0, 0), expanded=spec.get("showExpandedEvents", False),
    )
    stream.position = _start_position(eng, stream, spec)
    eng.oplog.check(stream.position)
    limit = 101 if batch_size is None else int(batch_size)
    events, pbrt = stream.collect(eng, limit) if limit else ([], position_token(eng, stream.position))
    cid = 0 if stream.closed else eng.add_cursor(stream)
    return {"cursor": {"firstBatch": events, "postBatchResumeToken": pbrt, "id": Int64(cid), "ns": ns}}


def get_more(eng: Engine, cid: int, stream: StreamCursor, batch_size: Any, max_time_ms: Any) -> dict[str, Any]:
    """Next batch; waits up to maxTimeMS (default 1 s; at most ``eng.max_await``) for an event to arrive."""
    limit = int(batch_size) if batch_size else 1 << 30
    wait = (int(max_time_ms) if max_time_ms else DEFAULT_AWAIT_MS) / 1000.0
    if eng.max_await is not None:
        wait = min(wait, eng.max_await)
    deadline = time.monotonic() + wait
    try:
        while True:
            events, pbrt = stream.collect(eng, limit)
            remaining = deadline - time.monotonic()
            if events or stream.closed or remaining <= 0:
                break
            eng.oplog.changed.wait(remaining)
    except Exception:
        eng.drop_cursor(cid)  # a failed stream is over, as in MongoDB
        raise
    if stream.closed:
        eng.drop_cursor(cid)
    return {"cursor": {"nextBatch": events, "postBatchResumeToken": pbrt, "id": Int64(0 if stream.closed else cid), "ns": stream.ns}}

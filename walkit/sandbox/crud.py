"""CRUD commands of the sandbox: insert, update, delete, findAndModify, find,
getMore, killCursors, aggregate, count, distinct.

Every write reads the document before and after the change and logs the
pair, so change events carry exact ``updateDescription``s and transactions
can be undone.  A no-op update logs nothing, as in MongoDB.

Update operators are made plain for mongomock-ng by :mod:`.updates`;
mongomock-ng itself is corrected where it differs from MongoDB by
:mod:`.storage`.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import bson
import mongomock_ng
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex

from walkit.sandbox import fastpath, storage  # (storage also patches mongomock-ng on import)
from walkit.sandbox.diff import update_description
from walkit.sandbox.engine import Ctx, Engine, command
from walkit.sandbox.errors import CommandError
from walkit.sandbox.sessions import WAIT_FOR_TXN
from walkit.sandbox.updates import apply_by_id, update_by_id
from walkit.sandbox.wire import CODEC, MAX_BSON_SIZE

DEFAULT_FIRST_BATCH = 101
MAX_BATCH_BYTES = MAX_BSON_SIZE


@dataclass
class IterCursor:
    """A server-side cursor over a finite result (find, aggregate, lists)."""

    ns: str
    docs: Iterator[dict[str, Any]]
    kind: str = "iter"


def _bytes(doc: dict[str, Any]) -> bytes:
    return bson.encode(doc, codec_options=CODEC)


def _encodable(value: Any) -> bool:
    try:
        bson.encode({"v": value}, codec_options=CODEC)
    except (bson.errors.InvalidDocument, TypeError, OverflowError):
        return False
    return True


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc and next(iter(doc)) != "_id":
        return {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return doc


def _sort(spec: Any) -> list[tuple[str, Any]] | None:
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise CommandError(14, f"sort must be a document, got {type(spec).__name__}")
    return list(spec.items())


def take_batch(docs: Iterator[dict[str, Any]], size: int) -> tuple[list[dict[str, Any]], Iterator[dict[str, Any]] | None]:
    """Up to ``size`` documents (0 = no count limit) within 16 MiB; (batch, rest).

    ``rest`` is None once the result is exhausted: the batch that returns the
    last document closes the cursor, as MongoDB does when a limit is reached.
    """
    batch: list[dict[str, Any]] = []
    used = 0
    for doc in docs:
        batch.append(doc)
        used += len(doc.raw if type(doc) is RawBSONDocument else _bytes(doc))
        if (size and len(batch) >= size) or used >= MAX_BATCH_BYTES:
            following = next(docs, None)
            return batch, (None if following is None else itertools.chain([following], docs))
    return batch, None


def cursor_reply(eng: Engine, ns: str, docs: Iterator[dict[str, Any]], batch_size: int | None, single: bool = False) -> dict[str, Any]:
    """Reply with the first batch, keeping a cursor open if more remain."""
    size = DEFAULT_FIRST_BATCH if batch_size is None else int(batch_size)
    if size == 0 and not single:  # MongoDB: an empty first batch, the cursor open
        return {"cursor": {"firstBatch": [], "id": Int64(eng.add_cursor(IterCursor(ns, docs))), "ns": ns}}
    batch, rest = take_batch(docs, size)
    cid = 0
    if rest is not None and not single:
        cid = eng.add_cursor(IterCursor(ns, rest))
    return {"cursor": {"firstBatch": batch, "id": Int64(cid), "ns": ns}}


def _claimed_ids(eng: Engine, ctx: Ctx, coll: Any, query: Any, multi: bool, sort: Any = None) -> list[Any]:
    """_ids of the documents a write will touch, none held by another transaction."""
    if not isinstance(query, dict):
        raise CommandError(14, f"the query must be a document, got {type(query).__name__}")
    deadline = time.monotonic() + WAIT_FOR_TXN
    while True:
        ids = _by_id(coll, query)
        if ids is None:
            found = coll.find(query, {"_id": 1}, sort=sort)
            if not multi:
                found = found.limit(1)
            ids = [d["_id"] for d in found]
        if eng.sessions.claim(ctx, ctx.db, coll.name, ids):
            return ids
        eng.sessions.wait_for_release(deadline)


def _by_id(coll: Any, query: dict[str, Any]) -> list[Any] | None:
    """The _id a ``{_id: value}`` query matches (a list of none or one), read from the store's
    key; None for any other query (the caller scans)."""
    if len(query) != 1 or "_id" not in query or isinstance(query["_id"], (dict, list, tuple, re.Pattern, Regex)):
        return None
    found = storage.stored(coll, query["_id"])  # the store's _id-keyed lookup (see storage.py)
    return [] if found is None else [found["_id"]]


def _claim_or_wait(eng: Engine, ctx: Ctx, name: str, key: Any) -> None:
    """Claim one known document, waiting while another transaction holds it."""
    deadline = time.monotonic() + WAIT_FOR_TXN
    while not eng.sessions.claim(ctx, ctx.db, name, [key]):
        eng.sessions.wait_for_release(deadline)


def _write_error(index: int, exc: Exception, ns: str) -> dict[str, Any]:
    code = getattr(exc, "code", None) or 2
    err: dict[str, Any] = {"index": index, "code": code, "errmsg": str(exc)}
    details = getattr(exc, "details", None) or {}
    for key in ("keyPattern", "keyValue"):
        if isinstance(details.get(key), dict):
            # mongomock-ng marks a missing field with a sentinel; MongoDB says null.
            err[key] = {k: (v if _encodable(v) else None) for k, v in details[key].items()}
    if code == 11000:
        pattern = err.get("keyPattern") or {"_id": 1}
        index_name = "_id_" if list(pattern) == ["_id"] else "_".join(f"{k}_{v}" for k, v in pattern.items())
        err["errmsg"] = f"E11000 duplicate key error collection: {ns} index: {index_name} dup key: {err.get('keyValue')}"
    return err


def _writes_reply(n: int, errors: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {"n": n, **extra}
    if errors:
        reply["writeErrors"] = errors
    return reply


# -- insert -----------------------------------------------------------------------


@command("insert")
def _insert(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    coll = eng.coll(ctx.db, name)
    ordered = ctx.arg("ordered", True)
    docs = ctx.docs("documents")
    n = 0
    errors: list[dict[str, Any]] = []
    for index, doc in enumerate(docs):
        try:
            if "_id" not in doc:
                doc = {"_id": bson.ObjectId(), **doc}
            doc = _id_first(doc)
            if len(_bytes(doc)) > MAX_BSON_SIZE:
                raise CommandError(10334, f"object to insert too large: document {index} exceeds {MAX_BSON_SIZE} bytes")
            _claim_or_wait(eng, ctx, name, doc["_id"])
            entry = eng.new_entry("insert", ctx.db, name, doc_key={"_id": doc["_id"]}, post=doc)
            _create_implicitly(eng, ctx, name)
            if not fastpath.insert(coll, doc):
                coll.insert_one(doc)
            entry.images = eng.info(ctx.db, name).images
            eng.record(ctx, entry)
            n += 1
        except (mongomock_ng.OperationFailure, CommandError) as exc:
            if isinstance(exc, CommandError) and exc.code == 112:
                raise
            errors.append(_write_error(index, exc, f"{ctx.db}.{name}"))
            if ordered:
                break
    return _writes_reply(n, errors)


# -- update -----------------------------------------------------------------------


def _is_replacement(update: Any) -> bool:
    if isinstance(update, list):
        return False
    if not isinstance(update, dict):
        raise CommandError(14, f"the update must be a document or a pipeline, got {type(update).__name__}")
    return not any(k.startswith("$") for k in update)


def _log_change(
    eng: Engine,
    ctx: Ctx,
    name: str,
    key: Any,
    pre: dict[str, Any],
    post: dict[str, Any] | None,
    replacement: bool,
    stored: bool = False,
    fields: set[str] | None = None,
) -> bool:
    """Log the change of one document; False when nothing changed.

    ``stored``: ``post`` is the stored document itself, so the log keeps copies of it.
    ``fields``: the only top-level fields that may differ (the others are the same, in the
    same order), so only they are compared and diffed: the same result, for less work.
    """
    if post is None:
        return False
    if fields is None:
        old, new = pre, post
    else:
        old, new = {k: v for k, v in pre.items() if k in fields}, {k: v for k, v in post.items() if k in fields}
    if _bytes(old) == _bytes(new):
        return False
    desc = None if replacement else update_description(old, new)
    op = "replace" if desc is None else "update"
    entry = eng.new_entry(op, ctx.db, name, doc_key={"_id": key}, pre=pre, post=post, update=desc)
    if stored:
        if desc is not None:
            desc["updatedFields"] = {path: storage.clone(value) for path, value in desc["updatedFields"].items()}
        # an update's post-image is kept only with changeStreamPreAndPostImages (see Engine.publish)
        entry.post = storage.clone(post) if op == "replace" or entry.images else None
    eng.record(ctx, entry)
    return True


def _create_implicitly(eng: Engine, ctx: Ctx, name: str) -> None:
    """Create a collection on its first write (logging its ``create`` before the write's
    own entry); it then outlives its last document.

    Inside a transaction the creation is part of it: an abort undoes it.
    """
    if not eng.exists(ctx.db, name):
        eng.create_collection(ctx, ctx.db, name)
    else:
        eng.info(ctx.db, name)


def _upsert(eng: Engine, ctx: Ctx, coll: Any, query: dict[str, Any], update: Any, replacement: bool, array_filters: Any) -> Any:
    _create_implicitly(eng, ctx, coll.name)
    if replacement:
        result = coll.replace_one(query, update, upsert=True)
    else:
        result = coll.update_one(query, update, upsert=True, array_filters=array_filters)
    key = result.upserted_id
    stored = coll.find_one({"_id": key})
    post = _id_first(stored)
    if post is not stored:  # MongoDB stores an upserted document with _id first
        coll.replace_one({"_id": key}, post)
    try:
        _claim_or_wait(eng, ctx, coll.name, key)
    except CommandError:
        coll.delete_one({"_id": key})  # the upsert never happened
        raise
    eng.record(ctx, eng.new_entry("insert", ctx.db, coll.name, doc_key={"_id": key}, post=post))
    return key


def _check_id_kept(update: dict[str, Any], key: Any) -> None:
    if "_id" in update and _bytes({"k": update["_id"]}) != _bytes({"k": key}):
        raise CommandError(66, "After applying the update, the (immutable) field '_id' was found to have been altered")


def _modify_one(
    eng: Engine, ctx: Ctx, coll: Any, key: Any, query: dict[str, Any], update: Any, replacement: bool, array_filters: Any
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
    """Update or replace the document ``key`` and log it: (before, after, changed).

    ``before`` is the caller's; ``after`` may be the stored document itself (copy it to keep it).
    """
    if isinstance(update, dict) and not replacement:
        fast = fastpath.apply_update(coll, key, update, array_filters)
        if fast is not None:
            pre, post, fields = fast
            return pre, post, _log_change(eng, ctx, coll.name, key, pre, post, replacement, stored=True, fields=fields)
        images = apply_by_id(coll, key, query, update, array_filters)
        if images is None:  # expired meanwhile (a TTL index)
            return None, None, False
        pre, post = images
        return pre, post, _log_change(eng, ctx, coll.name, key, pre, post, replacement, stored=True)
    pre = _read(coll, key)
    if replacement:
        _check_id_kept(update, key)
        coll.replace_one({"_id": key}, {"_id": key, **{k: v for k, v in update.items() if k != "_id"}})
    else:
        update_by_id(coll, key, query, pre, update, array_filters)
    post = _read(coll, key)
    return pre, post, _log_change(eng, ctx, coll.name, key, pre, post, replacement)


def _read(coll: Any, key: Any) -> Any:
    """A copy of the document ``key`` (None if there is none), as ``find_one({_id: key})`` gives it."""
    doc = storage.stored(coll, key)
    return None if doc is None else storage.clone(doc)


def _apply_update(eng: Engine, ctx: Ctx, coll: Any, stmt: dict[str, Any]) -> tuple[int, int, Any]:
    """Run one update statement: (matched, modified, upserted _id or None)."""
    query = stmt.get("q") or {}
    update = stmt.get("u")
    multi = bool(stmt.get("multi", False))
    array_filters = stmt.get("arrayFilters")
    replacement = _is_replacement(update)
    if replacement and multi:
        raise CommandError(9, "multi update is not supported for replacement-style update")
    ids = _claimed_ids(eng, ctx, coll, query, multi)
    if not ids:
        if stmt.get("upsert"):
            return 0, 0, _upsert(eng, ctx, coll, query, update, replacement, array_filters)
        return 0, 0, None
    modified = sum(_modify_one(eng, ctx, coll, key, query, update, replacement, array_filters)[2] for key in ids)
    return len(ids), modified, None


@command("update")
def _update(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    coll = eng.coll(ctx.db, name)
    ordered = ctx.arg("ordered", True)
    matched = modified = 0
    upserted: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, stmt in enumerate(ctx.docs("updates")):
        try:
            n, m, key = _apply_update(eng, ctx, coll, stmt)
        except (mongomock_ng.OperationFailure, CommandError) as exc:
            if isinstance(exc, CommandError) and exc.code == 112:
                raise
            errors.append(_write_error(index, exc, f"{ctx.db}.{name}"))
            if ordered:
                break
            continue
        matched += n
        modified += m
        if key is not None:
            upserted.append({"index": index, "_id": key})
    extra: dict[str, Any] = {"nModified": modified}
    if upserted:
        extra["upserted"] = upserted
    return _writes_reply(matched + len(upserted), errors, **extra)


# -- delete -----------------------------------------------------------------------


@command("delete")
def _delete(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    coll = eng.coll(ctx.db, name)
    ordered = ctx.arg("ordered", True)
    n = 0
    errors: list[dict[str, Any]] = []
    for index, stmt in enumerate(ctx.docs("deletes")):
        try:
            limit = stmt.get("limit", 0)
            if limit not in (0, 1):
                raise CommandError(9, f"The limit field in delete objects must be 0 or 1. Got {limit}")
            for key in _claimed_ids(eng, ctx, coll, stmt.get("q", {}), multi=limit == 0):
                n += _delete_one(eng, ctx, coll, key) is not None
        except (mongomock_ng.OperationFailure, CommandError) as exc:
            if isinstance(exc, CommandError) and exc.code == 112:
                raise
            errors.append(_write_error(index, exc, f"{ctx.db}.{name}"))
            if ordered:
                break
    return _writes_reply(n, errors)


def _delete_one(eng: Engine, ctx: Ctx, coll: Any, key: Any) -> dict[str, Any] | None:
    """Delete the document ``key`` and log it; return it (None if there was none)."""
    pre = storage.pop_doc(coll, key)  # no longer stored: ours to keep
    if pre is None:
        return None
    eng.record(ctx, eng.new_entry("delete", ctx.db, coll.name, doc_key={"_id": key}, pre=pre))
    return pre


# -- findAndModify ---------------------------------------------------------------------


def _project(eng: Engine, ctx: Ctx, doc: dict[str, Any] | None, fields: Any) -> dict[str, Any] | None:
    if doc is None or not fields:
        return doc
    from mongomock_ng.aggregate import process_pipeline

    out = list(process_pipeline([doc], eng.client[ctx.db], [{"$project": fields}], None))
    return _id_first(out[0]) if out else None


@command("findAndModify", "findandmodify")
def _find_and_modify(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    coll = eng.coll(ctx.db, name)
    query = ctx.arg("query") or {}
    sort = _sort(ctx.arg("sort"))
    update = ctx.arg("update")
    fields = ctx.arg("fields")
    if ctx.arg("remove"):
        if update is not None:
            raise CommandError(9, "Cannot specify both an update and remove=true")
        ids = _claimed_ids(eng, ctx, coll, query, False, sort)
        pre = _delete_one(eng, ctx, coll, ids[0]) if ids else None
        return {"lastErrorObject": {"n": int(pre is not None)}, "value": _project(eng, ctx, pre, fields)}
    if update is None:
        raise CommandError(9, "Either an update or remove=true must be specified")
    replacement = _is_replacement(update)
    ids = _claimed_ids(eng, ctx, coll, query, False, sort)
    if not ids:
        if not ctx.arg("upsert"):
            return {"lastErrorObject": {"n": 0, "updatedExisting": False}, "value": None}
        key = _upsert(eng, ctx, coll, query, update, replacement, ctx.arg("arrayFilters"))
        value = coll.find_one({"_id": key}) if ctx.arg("new") else None
        return {
            "lastErrorObject": {"n": 1, "updatedExisting": False, "upserted": key},
            "value": _project(eng, ctx, value and _id_first(value), fields),
        }
    pre, post, _ = _modify_one(eng, ctx, coll, ids[0], query, update, replacement, ctx.arg("arrayFilters"))
    value = storage.clone(post) if ctx.arg("new") else pre  # the reply is encoded after the lock is released
    return {"lastErrorObject": {"n": 1, "updatedExisting": True}, "value": _project(eng, ctx, value, fields)}


# -- reads ------------------------------------------------------------------------


@command("find")
def _find(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    coll = eng.coll(ctx.db, name)
    query = ctx.arg("filter") or {}
    if not isinstance(query, dict):
        raise CommandError(14, "filter must be a document")
    limit = int(ctx.arg("limit") or 0)
    projection = ctx.arg("projection") or None
    skip = int(ctx.arg("skip") or 0)
    sort = _sort(ctx.arg("sort"))
    docs: Iterator[Any]
    if not query and not projection and not skip and not limit and not sort:
        docs = iter(fastpath.scan(coll))  # a whole collection (a dump): encoded once
    else:
        cursor = coll.find(query, projection, skip=skip, limit=abs(limit), sort=sort)
        docs = (_id_first(d) for d in cursor) if projection else iter(cursor)
    single = bool(ctx.arg("singleBatch")) or limit < 0
    batch_size = ctx.arg("batchSize")
    if limit and (batch_size is None or abs(limit) < batch_size):
        batch_size = abs(limit)
    return cursor_reply(eng, f"{ctx.db}.{name}", docs, batch_size, single)


@command("getMore")
def _get_more(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    cid = int(ctx.body["getMore"])
    cursor = eng.get_cursor(cid)
    if cursor.kind == "changestream":
        from walkit.sandbox.changestream import get_more

        return get_more(eng, cid, cursor, ctx.arg("batchSize"), ctx.arg("maxTimeMS"))
    batch, rest = take_batch(cursor.docs, int(ctx.arg("batchSize") or 0))
    done = rest is None
    if rest is not None:
        cursor.docs = rest
    else:
        eng.drop_cursor(cid)
    return {"cursor": {"nextBatch": batch, "id": Int64(0 if done else cid), "ns": cursor.ns}}


@command("killCursors")
def _kill_cursors(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    killed, missing = [], []
    for cid in ctx.arg("cursors") or []:
        if eng.drop_cursor(int(cid)):
            killed.append(Int64(cid))
        else:
            missing.append(Int64(cid))
    return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": []}


@command("aggregate")
def _aggregate(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    pipeline = ctx.arg("pipeline")
    if not isinstance(pipeline, list):
        raise CommandError(14, "'pipeline' option must be specified as an array")
    batch_size = (ctx.arg("cursor") or {}).get("batchSize")
    if pipeline and isinstance(pipeline[0], dict) and "$changeStream" in pipeline[0]:
        from walkit.sandbox.changestream import open_stream

        return open_stream(eng, ctx, pipeline, batch_size)
    target = ctx.body[ctx.name]
    if not isinstance(target, str):
        raise CommandError(115, "the walkit sandbox runs collection-level aggregations only (and $changeStream)")
    result = eng.coll(ctx.db, target).aggregate(pipeline)
    return cursor_reply(eng, f"{ctx.db}.{target}", iter(result), batch_size)


@command("count")
def _count(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    kwargs = {k: int(ctx.arg(k)) for k in ("limit", "skip") if ctx.arg(k)}
    n = eng.coll(ctx.db, ctx.target).count_documents(ctx.arg("query") or {}, **kwargs)
    return {"n": n}


@command("distinct")
def _distinct(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    key = ctx.arg("key")
    if not isinstance(key, str):
        raise CommandError(14, "distinct needs a string 'key'")
    return {"values": eng.coll(ctx.db, ctx.target).distinct(key, ctx.arg("query") or {})}

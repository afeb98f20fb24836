"""The sandbox's fast paths give what mongomock-ng's general path gives.

Updates by ``_id`` run mongomock-ng's own operator code on a copy of the
stored document (:func:`walkit.sandbox.updates.apply_by_id`), or
:mod:`walkit.sandbox.fastpath` for the common operators; deletes pop the
document straight from the store, inserts store a copy and ``find({})`` reads
the store; the general path read the pre-image with ``find_one``, updated the
stored document in place and read the post-image again.  For random documents and random update statements, both
give the same replies, the same oplog entries (so the same change events:
updateDescription, pre- and post-images) and the same stored documents,
compared as BSON bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import bson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sandbox.test_diff import initial, operand, updates
from walkit.clock import SimulatedClock
from walkit.sandbox import crud, fastpath
from walkit.sandbox.engine import Ctx, Engine
from walkit.sandbox.oplog import Oplog
from walkit.sandbox.updates import update_by_id
from walkit.sandbox.wire import CODEC, OP_MSG, Request

START = datetime(2026, 1, 5, tzinfo=UTC)


# -- the general path, as it was --------------------------------------------------------


def _general_modify_one(
    eng: Engine, ctx: Ctx, coll: Any, key: Any, query: dict[str, Any], update: Any, replacement: bool, array_filters: Any
) -> tuple[Any, Any, bool]:
    pre = coll.find_one({"_id": key})
    if replacement:
        crud._check_id_kept(update, key)
        coll.replace_one({"_id": key}, {"_id": key, **{k: v for k, v in update.items() if k != "_id"}})
    else:
        update_by_id(coll, key, query, pre, update, array_filters)
    post = coll.find_one({"_id": key})
    return pre, post, crud._log_change(eng, ctx, coll.name, key, pre, post, replacement)


def _general_delete_one(eng: Engine, ctx: Ctx, coll: Any, key: Any) -> Any:
    pre = coll.find_one({"_id": key})
    if pre is None:
        return None
    coll.delete_one({"_id": key})
    eng.record(ctx, eng.new_entry("delete", ctx.db, coll.name, doc_key={"_id": key}, pre=pre))
    return pre


@contextmanager
def general_path() -> Iterator[None]:
    with (
        mock.patch.object(crud, "_modify_one", _general_modify_one),
        mock.patch.object(crud, "_delete_one", _general_delete_one),
        mock.patch.object(fastpath, "insert", lambda coll, doc: False),  # mongomock-ng's insert_one
        mock.patch.object(fastpath, "scan", lambda coll: list(coll.find({}))),  # mongomock-ng's find
    ):
        yield


# -- running commands ------------------------------------------------------------------------


def enc(doc: Any) -> bytes:
    return bson.encode(doc, codec_options=CODEC)


def run(eng: Engine, body: dict[str, Any]) -> bytes:
    return enc(eng.run(Request(1, OP_MSG, {**body, "$db": "d"}), 1))


def entries(eng: Engine) -> list[bytes]:
    keep = ("op", "coll", "doc_key", "pre", "post", "update", "images", "ts", "wall")
    return [enc({k: getattr(e, k) for k in keep}) for e in eng.oplog.entries]


def contents(eng: Engine) -> list[bytes]:
    return [enc(d) for d in eng.coll("d", "c").find()]


def replay(commands: list[dict[str, Any]], images: bool) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Replies, oplog entries and final documents of ``commands`` on a fresh engine."""
    eng = Engine(clock=SimulatedClock(START))
    run(eng, {"create": "c", "changeStreamPreAndPostImages": {"enabled": images}})
    replies = [run(eng, body) for body in commands]
    return replies, entries(eng), contents(eng)


def same_on_both_paths(commands: list[dict[str, Any]], images: bool) -> None:
    with general_path():
        expected = replay(commands, images)
    assert replay(commands, images) == expected


# -- random statements ------------------------------------------------------------------------

queries = st.sampled_from([{"_id": 1}, {"_id": 2}, {"_id": 9}, {"n": {"$gte": 0}}, {"a": {"$exists": True}}, {"l.x": 1}, {"l": 1}])
positional = st.sampled_from([{"$set": {"l.$": "p"}}, {"$inc": {"l.$.x": 1}}, {"$unset": {"l.$": ""}}])
statement = st.builds(  # (an upsert without an _id in its query would make a random ObjectId)
    lambda q, u, multi, upsert: {"q": q, "u": u, "multi": multi, "upsert": upsert and "_id" in q},
    queries, st.one_of(updates, positional), st.booleans(), st.booleans(),
)
array_filtered = st.builds(
    lambda v: {"q": {"_id": 1}, "u": {"$set": {"l.$[e]": v}}, "arrayFilters": [{"e": {"$gte": 1}}]}, operand
)
find_and_modify = st.builds(
    lambda q, u, new, fields: {"findAndModify": "c", "query": q, "update": u, "new": new, **({"fields": fields} if fields else {})},
    queries, updates, st.booleans(), st.sampled_from([None, {"l": 1}, {"a": 0}]),
)
command = st.one_of(
    st.lists(st.one_of(statement, array_filtered), min_size=1, max_size=3).flatmap(
        lambda s: st.booleans().map(lambda ordered: {"update": "c", "updates": s, "ordered": ordered})
    ),
    find_and_modify,
    st.builds(lambda q, limit: {"delete": "c", "deletes": [{"q": q, "limit": limit}]}, queries, st.sampled_from([0, 1])),
    st.builds(lambda q: {"findAndModify": "c", "query": q, "remove": True}, queries),
    st.just({"find": "c"}),
)


@settings(max_examples=300, deadline=None)
@given(docs=st.lists(initial, min_size=1, max_size=3), commands=st.lists(command, min_size=1, max_size=6), images=st.booleans())
def test_fast_and_general_paths_give_the_same_replies_events_and_documents(
    docs: list[dict[str, Any]], commands: list[dict[str, Any]], images: bool
) -> None:
    inserts = {"insert": "c", "documents": [{"_id": i, **doc} for i, doc in enumerate(docs, 1)]}
    same_on_both_paths([inserts, *commands], images)


def test_the_log_keeps_copies_not_the_stored_document() -> None:
    """A later in-place change (a pipeline update, a replacement) leaves logged images alone."""
    eng = Engine(clock=SimulatedClock(START))
    run(eng, {"create": "c", "changeStreamPreAndPostImages": {"enabled": True}})
    run(eng, {"insert": "c", "documents": [{"_id": 1, "l": [1], "d": {"k": 1}}]})
    run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$push": {"l": 2}, "$set": {"d": {"k": 2}}}}]})
    logged = entries(eng)
    run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": [{"$set": {"l": [9], "d": {"k": 9}}}]}]})
    run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"l": [], "d": {}}}]})
    assert entries(eng)[: len(logged)] == logged
    update = eng.oplog.entries[2]  # (after the collection's create and the insert)
    assert update.update == {"updatedFields": {"l.1": 2, "d.k": 2}, "removedFields": [], "truncatedArrays": []}
    assert update.post == {"_id": 1, "l": [1, 2], "d": {"k": 2}}


def test_a_failed_update_leaves_the_stored_document_and_logs_nothing() -> None:
    eng = Engine(clock=SimulatedClock(START))
    run(eng, {"insert": "c", "documents": [{"_id": 1, "s": "x", "n": 1}]})
    before = contents(eng)
    reply = bson.decode(run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"n": 2}, "$inc": {"s": 1}}}]}))
    assert reply["writeErrors"][0]["code"] == 14
    reply = bson.decode(run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"_id": 2}}}]}))
    assert reply["writeErrors"][0]["code"] == 66
    assert contents(eng) == before
    assert [e.op for e in eng.oplog.entries] == ["create", "insert"]  # the implicit create, the insert


# -- the oplog's tail ----------------------------------------------------------------------------


def test_read_after_from_either_end_gives_the_same_slice() -> None:
    import threading

    clock = SimulatedClock(START)
    oplog = Oplog(clock, 50, threading.RLock())
    for _ in range(80):  # past the bound: the oldest fell off
        entry = crud.Engine.new_entry.__get__(Engine(clock=clock))("insert", "d", "c")
        entry.ts = oplog.next_ts()
        oplog.append([entry])
    positions = [e.position for e in oplog.entries]
    for after, limit in itertools.product([(0, 0, 0), positions[0], positions[10], positions[-2], positions[-1]], [1, 5, 1000]):
        expected = [p for p in positions if p > after][:limit]
        assert [e.position for e in oplog.read_after(after, limit)] == expected

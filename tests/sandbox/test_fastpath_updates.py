"""``walkit.sandbox.fastpath`` gives exactly what the general path gives.

Operator updates (``$set``/``$unset``/``$inc``/``$mul``) and inserts have a
fast path that declines whatever it does not cover; for random documents and
random update documents (numeric types and int32/int64 overflow, missing
fields, nested paths, numeric components through arrays, type errors,
conflicting paths, ``_id``...) both paths give byte-identical replies
(``find`` included), oplog entries, change events and stored documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import bson
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sandbox.test_fastpath import contents, enc, entries, run
from walkit.clock import SimulatedClock
from walkit.sandbox import crud, fastpath
from walkit.sandbox.engine import Engine

START = datetime(2026, 1, 5, tzinfo=UTC)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


@contextmanager
def slow_path() -> Iterator[None]:
    """The general path for everything (the fast paths always decline)."""
    with (
        mock.patch.object(fastpath, "insert", lambda coll, doc: False),
        mock.patch.object(fastpath, "apply_update", lambda *a: None),
        mock.patch.object(fastpath, "scan", lambda coll: list(coll.find({}))),
    ):
        yield


# -- random documents and updates --------------------------------------------------------------

numbers = st.one_of(
    st.sampled_from([0, 1, -1, 2, INT32_MAX, INT32_MIN, INT32_MAX - 1, INT32_MIN + 1]),
    st.sampled_from([Int64(0), Int64(1), Int64(2**31), Int64(2**63 - 1), Int64(-(2**63)), Int64(-1)]),
    st.sampled_from([0.0, -0.0, 1.5, -2.5, float("nan"), float("inf"), 1e308]),
    st.sampled_from([Decimal128("1"), Decimal128("-0"), Decimal128("NaN"), Decimal128("1E+10"), Decimal128("2.50")]),
)
scalars = st.one_of(
    numbers,
    st.none(),
    st.booleans(),
    st.sampled_from(["", "s", "paid"]),
    st.sampled_from([ObjectId("65f0a1b2c3d4e5f60718293a"), datetime(2026, 1, 5, 12, 0, 0, 123456), Timestamp(5, 1)]),
)
keys = st.sampled_from(["a", "b", "n", "0", "1", "x"])
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=8)
documents = st.dictionaries(keys, values, max_size=5)

components = st.sampled_from(["a", "b", "n", "0", "1", "2", "01", "x", "c"])
odd_components = st.sampled_from(["$", "$[]", "", "_id", "$x"])
paths = st.lists(st.one_of(components, components, components, odd_components), min_size=1, max_size=3).map(".".join)
operands = st.one_of(values, numbers)
fields = st.dictionaries(paths, operands, min_size=1, max_size=3)
update_docs = st.dictionaries(
    st.sampled_from(["$set", "$unset", "$inc", "$mul", "$set", "$inc", "$min", "$push"]), fields, min_size=1, max_size=3
)
fast_update_docs = st.dictionaries(
    st.sampled_from(["$set", "$unset", "$inc", "$mul"]),
    st.dictionaries(st.lists(components, min_size=1, max_size=2).map(".".join), operands, min_size=1, max_size=2),
    min_size=1,
    max_size=3,
)
ids = st.sampled_from([1, 2, 3])
statement = st.builds(
    lambda key, u, by_field: {"q": {"n": {"$exists": True}} if by_field else {"_id": key}, "u": u},
    ids, st.one_of(update_docs, fast_update_docs), st.booleans(),
)
command = st.one_of(
    st.lists(statement, min_size=1, max_size=3).flatmap(lambda s: st.booleans().map(lambda o: {"update": "c", "updates": s, "ordered": o})),
    st.builds(lambda key, u, new: {"findAndModify": "c", "query": {"_id": key}, "update": u, "new": new}, ids, fast_update_docs, st.booleans()),
    st.lists(st.builds(lambda key, doc: {"_id": key, **doc}, ids, documents), min_size=1, max_size=2).flatmap(
        lambda d: st.booleans().map(lambda o: {"insert": "c", "documents": d, "ordered": o})
    ),
    st.builds(lambda key: {"delete": "c", "deletes": [{"q": {"_id": key}, "limit": 1}]}, ids),
    st.sampled_from([{"find": "c"}, {"find": "c", "filter": {}, "batchSize": 1, "singleBatch": True}]),
)


def replay(commands: list[dict[str, Any]], images: bool) -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
    """Replies, oplog entries, final documents and change events of ``commands`` on a fresh engine."""
    eng = Engine(clock=SimulatedClock(START))
    eng.oplog.epoch = "00000000"  # resume tokens name the server instance: the same for both runs
    run(eng, {"create": "c", "changeStreamPreAndPostImages": {"enabled": images}})
    stream = {"$changeStream": {"fullDocument": "whenAvailable", "fullDocumentBeforeChange": "whenAvailable"}}
    opened = eng.run(crud_request({"aggregate": "c", "pipeline": [stream], "cursor": {"batchSize": 0}}), 1)
    replies = [run(eng, body) for body in commands]
    more = eng.run(crud_request({"getMore": opened["cursor"]["id"], "collection": "c", "maxTimeMS": 1}), 1)
    events = [enc(bson.decode(ev.raw)) for ev in more["cursor"]["nextBatch"]]
    return replies, entries(eng), contents(eng), events


def crud_request(body: dict[str, Any]) -> Any:
    from walkit.sandbox.wire import OP_MSG, Request

    return Request(1, OP_MSG, {**body, "$db": "d"})


@settings(max_examples=400, deadline=None)
@given(docs=st.lists(documents, min_size=1, max_size=3), commands=st.lists(command, min_size=1, max_size=6), images=st.booleans())
def test_fast_paths_give_what_the_general_path_gives(docs: list[dict[str, Any]], commands: list[dict[str, Any]], images: bool) -> None:
    inserts = {"insert": "c", "documents": [{"_id": i, **doc} for i, doc in enumerate(docs, 1)]}
    with slow_path():
        expected = replay([inserts, *commands], images)
    assert replay([inserts, *commands], images) == expected


# -- what the fast path takes, and what it leaves to the general one ------------------------------------


def _engine_with(doc: dict[str, Any]) -> Engine:
    eng = Engine(clock=SimulatedClock(START))
    run(eng, {"insert": "c", "documents": [doc]})
    return eng


def test_the_simulations_writes_take_the_fast_path() -> None:
    eng = _engine_with({"_id": 1, "n": 0, "status": "new", "amount": 1.5, "tags": ["order"]})
    coll = eng.coll("d", "c")
    done = fastpath.apply_update(coll, 1, {"$inc": {"n": 1}, "$set": {"status": "paid", "d.e.f": Int64(3)}}, None)
    assert done is not None
    before, after, touched = done
    assert before == {"_id": 1, "n": 0, "status": "new", "amount": 1.5, "tags": ["order"]}
    assert enc(after) == enc({"_id": 1, "n": 1, "status": "paid", "amount": 1.5, "tags": ["order"], "d": {"e": {"f": Int64(3)}}})
    assert touched == {"n", "status", "d"}
    assert fastpath.insert(coll, {"_id": 2, "x": [1, {"y": 2}]})
    assert not fastpath.insert(coll, {"_id": 2})  # a duplicate: the general path answers E11000


def test_the_fast_path_declines_what_it_does_not_cover() -> None:
    eng = _engine_with({"_id": 1, "n": 1, "s": "x", "l": [1, {"a": 1}], "d": {"k": 1}})
    coll = eng.coll("d", "c")
    for update in [
        {"$push": {"l": 1}},
        {"$set": {"l.$": 1}},
        {"$set": {"l.5": 1}},  # past the array's end
        {"$set": {"s.t": 1}},  # through a scalar
        {"$set": {"l.a": 1}},  # through an array by name
        {"$unset": {"l.0": ""}},
        {"$inc": {"s": 1}},  # a type error
        {"$inc": {"n": "1"}},
        {"$set": {"_id": 2}},
        {"$set": {"d": 1}, "$inc": {"d.k": 1}},  # a conflict
        {"$set": {"a..b": 1}},
        {"$set": {}},
    ]:
        assert fastpath.apply_update(coll, 1, update, None) is None, update
    assert fastpath.apply_update(coll, 1, {"$set": {"l.1.a": 2}}, [{"e": 1}]) is None
    run(eng, {"createIndexes": "c", "indexes": [{"key": {"s": 1}, "name": "s_1", "unique": True}]})
    assert fastpath.apply_update(coll, 1, {"$set": {"n": 2}}, None) is None
    assert not fastpath.insert(coll, {"_id": 5})


def test_int32_overflow_widens_to_int64_on_the_fast_path() -> None:
    eng = _engine_with({"_id": 1, "n": INT32_MAX, "m": 2})
    with mock.patch.object(crud, "apply_by_id", side_effect=AssertionError("the general path ran")):
        reply = bson.decode(run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}, "$mul": {"m": Int64(3)}}}]}))
    assert reply["nModified"] == 1
    stored = eng.coll("d", "c").find_one({"_id": 1})
    assert type(stored["n"]) is Int64 and stored["n"] == 2**31
    assert type(stored["m"]) is Int64 and stored["m"] == 6
    assert eng.oplog.entries[-1].update == {"updatedFields": {"n": Int64(2**31), "m": Int64(6)}, "removedFields": [], "truncatedArrays": []}


def test_a_no_op_update_logs_nothing_on_the_fast_path() -> None:
    eng = _engine_with({"_id": 1, "n": 1, "s": "x"})
    with mock.patch.object(crud, "apply_by_id", side_effect=AssertionError("the general path ran")):
        reply = bson.decode(run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"n": 1}, "$unset": {"gone": ""}}}]}))
    assert (reply["n"], reply["nModified"]) == (1, 0)
    assert [e.op for e in eng.oplog.entries] == ["create", "insert"]  # the implicit create, the insert


def test_crud_uses_the_fast_paths() -> None:
    with mock.patch.object(crud, "apply_by_id", side_effect=AssertionError("the general path ran")):
        eng = _engine_with({"_id": 1, "n": 1})
        run(eng, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}]})
    assert eng.coll("d", "c").find_one({"_id": 1}) == {"_id": 1, "n": 2}

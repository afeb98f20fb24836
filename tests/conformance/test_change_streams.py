"""Change streams as the MongoDB manual ("Change Events", "Change Streams")
and the drivers' change-streams spec describe them, for MongoDB 7.0.

Every test runs through pymongo against ``mongo_uri``: a real replica set
passes them as well as the sandbox.  Where a shape depends on the server's
choice (an operator update may report a shortened array either as
``truncatedArrays`` or as the whole new array in ``updatedFields``), the test
asserts what both choices guarantee: applying the description to the
pre-image gives the post-image.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
from bson.binary import Binary
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from pymongo.database import Database
from pymongo.errors import OperationFailure
from pymongo.mongo_client import MongoClient
from pymongo.write_concern import WriteConcern

from tests.helpers import apply_update_description, take

AWAIT_MS = 100
PAD = "p" * 400  # keeps update deltas smaller than the document (no replace fallback)


# -- helpers ---------------------------------------------------------------------------


def assert_quiet(stream: Any) -> None:
    """No further event is waiting on ``stream``."""
    ev = stream.try_next()
    assert ev is None, f"unexpected event {ev!r}"


def ops(events: list[dict[str, Any]]) -> list[str]:
    return [e["operationType"] for e in events]


# -- event shapes --------------------------------------------------------------------------


def test_insert_event_shape(db: Database) -> None:
    coll = db.shapes
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        doc = {"_id": ObjectId(), "a": 1, "nested": {"b": [1, 2]}}
        coll.insert_one(doc)
        (ev,) = take(stream, 1)
    assert ev["operationType"] == "insert"
    assert set(ev["_id"]) == {"_data"}
    assert isinstance(ev["clusterTime"], Timestamp)
    assert isinstance(ev["wallTime"], datetime)
    assert ev["ns"] == {"db": db.name, "coll": "shapes"}
    assert ev["documentKey"] == {"_id": doc["_id"]}
    assert ev["fullDocument"] == doc
    assert "updateDescription" not in ev
    assert "fullDocumentBeforeChange" not in ev


def test_update_event_reports_dotted_paths_and_removed_fields(db: Database) -> None:
    coll = db.upd
    coll.insert_one({"_id": 1, "a": {"b": 1, "c": 1}, "n": 5, "gone": True, "pad": PAD})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"a.b": 2}, "$inc": {"n": 1}, "$unset": {"gone": ""}})
        (ev,) = take(stream, 1)
    assert ev["operationType"] == "update"
    assert ev["documentKey"] == {"_id": 1}
    assert ev["updateDescription"] == {"updatedFields": {"a.b": 2, "n": 6}, "removedFields": ["gone"], "truncatedArrays": []}
    assert "fullDocument" not in ev  # default: no image on update events


def test_pipeline_update_reports_truncated_arrays(db: Database) -> None:
    coll = db.trunc
    coll.insert_one({"_id": 1, "arr": [1, 2, 3, 4, 5], "pad": PAD})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, [{"$set": {"arr": {"$slice": ["$arr", 2]}}}])
        (ev,) = take(stream, 1)
    assert ev["operationType"] == "update"
    assert ev["updateDescription"] == {
        "updatedFields": {},
        "removedFields": [],
        "truncatedArrays": [{"field": "arr", "newSize": 2}],
    }


@pytest.mark.parametrize(
    "update",
    [
        {"$pop": {"arr": 1}},
        {"$pop": {"arr": -1}},
        {"$push": {"arr": {"$each": [9], "$slice": 2}}},
        {"$push": {"arr": {"$each": [9], "$slice": -3}}},
        {"$set": {"sub.x": {"deep": [1]}, "arr.1": 7}},
        {"$unset": {"sub.y": ""}, "$push": {"arr": 6}},
    ],
    ids=["pop-last", "pop-first", "push-slice-head", "push-slice-tail", "set-nested", "unset-push"],
)
def test_update_description_reproduces_the_post_image(db: Database, update: dict[str, Any]) -> None:
    coll = db.replayable
    pre = {"_id": "k", "arr": [1, 2, 3, 4, 5], "sub": {"x": 1, "y": 2}, "pad": PAD}
    coll.insert_one(pre)
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": "k"}, update)
        (ev,) = take(stream, 1)
    post = coll.find_one({"_id": "k"})
    assert ev["operationType"] == "update"
    assert set(ev["updateDescription"]) >= {"updatedFields", "removedFields", "truncatedArrays"}
    assert apply_update_description(pre, ev["updateDescription"]) == post


def test_replace_and_delete_event_shapes(db: Database) -> None:
    coll = db.repl
    coll.insert_one({"_id": 1, "a": 1})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.replace_one({"_id": 1}, {"b": 2})
        coll.delete_one({"_id": 1})
        replace, delete = take(stream, 2)
    assert replace["operationType"] == "replace"
    assert replace["fullDocument"] == {"_id": 1, "b": 2}
    assert replace["documentKey"] == {"_id": 1}
    assert "updateDescription" not in replace
    assert delete["operationType"] == "delete"
    assert delete["documentKey"] == {"_id": 1}
    assert delete["ns"] == {"db": db.name, "coll": "repl"}
    assert "fullDocument" not in delete


@pytest.mark.parametrize(
    "key",
    [ObjectId(), 42, Int64(1 << 40), 2.5, "text", Binary.from_uuid(uuid.uuid4()), Binary(b"\x00\x01", 0x80), {"a": 1, "b": "x"}],
    ids=["objectid", "int", "int64", "double", "string", "uuid", "binary", "document"],
)
def test_document_key_keeps_the_id_type(db: Database, key: Any) -> None:
    coll = db.keys
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": key, "v": 1})
        coll.update_one({"_id": key}, {"$set": {"v": 2}})
        coll.delete_one({"_id": key})
        events = take(stream, 3)
    for ev in events:
        got = ev["documentKey"]["_id"]
        assert got == key and type(got) is type(key), ev
        assert list(ev["documentKey"]) == ["_id"]
    if isinstance(key, Binary):
        assert events[0]["documentKey"]["_id"].subtype == key.subtype


def test_cluster_time_strictly_orders_events_outside_transactions(db: Database) -> None:
    coll = db.order
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        for i in range(5):
            coll.insert_one({"_id": i})
        coll.update_one({"_id": 0}, {"$set": {"x": 1}})
        coll.replace_one({"_id": 1}, {"y": 1})
        coll.delete_one({"_id": 2})
        events = take(stream, 8)
    times = [e["clusterTime"] for e in events]
    assert all(a < b for a, b in zip(times, times[1:], strict=False)), times
    tokens = [e["_id"]["_data"] for e in events]
    assert len(set(tokens)) == len(tokens)
    assert all(isinstance(e["wallTime"], datetime) for e in events)
    walls = [e["wallTime"] for e in events]
    assert walls == sorted(walls)


def test_transaction_events_share_cluster_time_and_carry_session(client: MongoClient, db: Database) -> None:
    db.create_collection("t1")
    db.create_collection("t2")
    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as session:
            with session.start_transaction():
                db.t1.insert_one({"_id": 1}, session=session)
                db.t2.insert_one({"_id": 2}, session=session)
                db.t1.update_one({"_id": 1}, {"$set": {"x": 1}}, session=session)
            with session.start_transaction():
                db.t1.delete_one({"_id": 1}, session=session)
                db.t2.delete_one({"_id": 2}, session=session)
            lsid = session.session_id
        events = take(stream, 5)
    first, second = events[:3], events[3:]
    assert ops(first) == ["insert", "insert", "update"]
    assert ops(second) == ["delete", "delete"]
    for group in (first, second):
        assert len({e["clusterTime"] for e in group}) == 1
        assert len({e["_id"]["_data"] for e in group}) == len(group)
        for ev in group:
            assert ev["lsid"]["id"] == lsid["id"]
            assert isinstance(ev["txnNumber"], Int64)
        assert len({e["txnNumber"] for e in group}) == 1
    assert first[0]["clusterTime"] < second[0]["clusterTime"]
    assert first[0]["txnNumber"] < second[0]["txnNumber"]
    assert [e["ns"]["coll"] for e in first] == ["t1", "t2", "t1"]


def test_aborted_transaction_produces_no_events(client: MongoClient, db: Database) -> None:
    db.create_collection("ab")
    with db.ab.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as session:
            session.start_transaction()
            db.ab.insert_one({"_id": "never"}, session=session)
            session.abort_transaction()
        db.ab.insert_one({"_id": "after"})
        (ev,) = take(stream, 1)
        assert_quiet(stream)
    assert ev["documentKey"] == {"_id": "after"}


# -- DDL events and invalidation -----------------------------------------------------------


def test_collection_stream_drop_then_invalidate(db: Database) -> None:
    coll = db.dropme
    coll.insert_one({"_id": 1})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.drop()
        drop, inv = take(stream, 2)
        assert not stream.alive
    assert drop["operationType"] == "drop"
    assert drop["ns"] == {"db": db.name, "coll": "dropme"}
    assert isinstance(drop["clusterTime"], Timestamp)
    assert "documentKey" not in drop
    assert inv["operationType"] == "invalidate"
    assert isinstance(inv["clusterTime"], Timestamp)
    assert isinstance(inv["wallTime"], datetime)
    assert inv["_id"] != drop["_id"]
    assert "ns" not in inv


def test_an_emptied_collection_still_exists_and_its_drop_invalidates(db: Database) -> None:
    coll = db.emptied  # created implicitly by the insert
    coll.insert_one({"_id": 1})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.delete_one({"_id": 1})
        assert "emptied" in db.list_collection_names()
        coll.drop()
        events = take(stream, 3)
        assert not stream.alive
    assert ops(events) == ["delete", "drop", "invalidate"]


def test_a_filtered_out_invalidate_still_ends_the_stream(db: Database) -> None:
    coll = db.filtered
    inserts_only = [{"$match": {"operationType": "insert"}}]
    with coll.watch(inserts_only, max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1})
        take(stream, 1)
        coll.drop()
        deadline = time.monotonic() + 10
        while stream.alive:
            assert time.monotonic() < deadline, "the stream was not closed by the drop"
            assert stream.try_next() is None  # neither drop nor invalidate passes the $match
        token = stream.resume_token
    coll.insert_one({"_id": 2})
    with pytest.raises(OperationFailure) as err:
        coll.watch(inserts_only, resume_after=token)
    assert err.value.code == 260  # the last token is the (hidden) invalidate's
    with coll.watch(inserts_only, start_after=token, max_await_time_ms=AWAIT_MS) as stream:
        (ev,) = take(stream, 1)
    assert ev["documentKey"] == {"_id": 2}


def test_collection_stream_rename_then_invalidate(db: Database) -> None:
    coll = db.src
    coll.insert_one({"_id": 1})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.rename("dst")
        rename, inv = take(stream, 2)
        assert not stream.alive
    assert rename["operationType"] == "rename"
    assert rename["ns"] == {"db": db.name, "coll": "src"}
    assert rename["to"] == {"db": db.name, "coll": "dst"}
    assert inv["operationType"] == "invalidate"


@pytest.mark.parametrize("existing", [False, True], ids=["new-name", "drop-target"])
def test_collection_stream_invalidated_by_a_rename_onto_it(db: Database, existing: bool) -> None:
    db.other.insert_one({"_id": 1})
    if existing:
        db.target.insert_one({"_id": "old"})
    with db.target.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.other.rename("target", dropTarget=existing)
        rename, inv = take(stream, 2)
        assert not stream.alive
    assert rename["operationType"] == "rename"
    assert rename["ns"] == {"db": db.name, "coll": "other"}
    assert rename["to"] == {"db": db.name, "coll": "target"}
    assert inv["operationType"] == "invalidate"


def test_collection_stream_invalidated_by_drop_database(client: MongoClient, db: Database) -> None:
    coll = db.victim
    coll.insert_one({"_id": 1})
    db.bystander.insert_one({"_id": 1})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        client.drop_database(db.name)
        events = take(stream, 2)
        assert not stream.alive
    assert ops(events) == ["drop", "invalidate"]
    assert events[0]["ns"] == {"db": db.name, "coll": "victim"}


def test_database_stream_survives_drop_and_rename_but_not_drop_database(client: MongoClient, db: Database) -> None:
    db.a.insert_one({"_id": 1})
    db.b.insert_one({"_id": 1})
    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.a.drop()
        db.b.rename("c")
        db.c.insert_one({"_id": 2})
        drop, rename, insert = take(stream, 3)
        assert stream.alive
        client.drop_database(db.name)
        tail = take(stream, 3)
        assert not stream.alive
    assert (drop["operationType"], drop["ns"]) == ("drop", {"db": db.name, "coll": "a"})
    assert rename["operationType"] == "rename" and rename["to"] == {"db": db.name, "coll": "c"}
    assert insert["ns"] == {"db": db.name, "coll": "c"}
    assert ops(tail) == ["drop", "dropDatabase", "invalidate"]
    assert tail[0]["ns"] == {"db": db.name, "coll": "c"}
    assert tail[1]["ns"] == {"db": db.name}


def test_database_stream_does_not_see_other_databases(client: MongoClient, db: Database) -> None:
    other = client[db.name + "_other"]
    try:
        with db.watch(max_await_time_ms=AWAIT_MS) as stream:
            other.c.insert_one({"_id": "elsewhere"})
            db.c.insert_one({"_id": "here"})
            (ev,) = take(stream, 1)
            assert_quiet(stream)
        assert ev["documentKey"] == {"_id": "here"}
    finally:
        client.drop_database(other.name)


def test_cluster_stream_is_never_invalidated(client: MongoClient, db: Database) -> None:
    db.x.insert_one({"_id": 0})
    match = [{"$match": {"ns.db": db.name}}]
    with client.watch(match, max_await_time_ms=AWAIT_MS) as stream:
        db.x.insert_one({"_id": 1})
        db.x.rename("y")
        db.y.drop()
        db.z.insert_one({"_id": 2})
        client.drop_database(db.name)
        db.after.insert_one({"_id": 3})
        events = take(stream, 7)
        assert stream.alive
        assert_quiet(stream)
    assert ops(events) == ["insert", "rename", "drop", "insert", "drop", "dropDatabase", "insert"]
    assert events[5]["ns"] == {"db": db.name}
    assert events[6]["ns"] == {"db": db.name, "coll": "after"}


def test_cluster_stream_sees_every_database(client: MongoClient, db: Database) -> None:
    other = client[db.name + "_b"]
    try:
        match = [{"$match": {"ns.db": {"$in": [db.name, other.name]}}}]
        with client.watch(match, max_await_time_ms=AWAIT_MS) as stream:
            db.c.insert_one({"_id": 1})
            other.c.insert_one({"_id": 2})
            events = take(stream, 2)
        assert [e["ns"]["db"] for e in events] == [db.name, other.name]
    finally:
        client.drop_database(other.name)


# -- fullDocument / fullDocumentBeforeChange ---------------------------------------------


def test_update_lookup_returns_current_document_or_none(db: Database) -> None:
    # Majority writes: every change is visible before the first lookup, on a real server too.
    coll = db.get_collection("lookup", write_concern=WriteConcern("majority"))
    coll.insert_one({"_id": 1, "v": 0})
    coll.insert_one({"_id": 2, "v": 0})
    with coll.watch(full_document="updateLookup", max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"v": 1}})
        coll.update_one({"_id": 1}, {"$set": {"v": 2}})
        coll.update_one({"_id": 2}, {"$set": {"v": 1}})
        coll.delete_one({"_id": 2})
        first, second, gone, delete = take(stream, 4)
    # The lookup happens when the event is read, not when it was written.
    assert first["fullDocument"] == {"_id": 1, "v": 2}
    assert first["updateDescription"]["updatedFields"] == {"v": 1}
    assert second["fullDocument"] == {"_id": 1, "v": 2}
    assert gone["operationType"] == "update" and gone["fullDocument"] is None
    assert delete["operationType"] == "delete" and "fullDocument" not in delete


def test_post_images_are_the_document_at_event_time(db: Database) -> None:
    db.create_collection("imgs", changeStreamPreAndPostImages={"enabled": True})
    coll = db.imgs
    coll.insert_one({"_id": 1, "v": 0})
    with coll.watch(full_document="required", full_document_before_change="required", max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"v": 1}})
        coll.update_one({"_id": 1}, {"$set": {"v": 2}})
        coll.replace_one({"_id": 1}, {"w": 3})
        coll.delete_one({"_id": 1})
        coll.insert_one({"_id": 2})
        u1, u2, rep, dele, ins = take(stream, 5)
    assert (u1["fullDocumentBeforeChange"], u1["fullDocument"]) == ({"_id": 1, "v": 0}, {"_id": 1, "v": 1})
    assert (u2["fullDocumentBeforeChange"], u2["fullDocument"]) == ({"_id": 1, "v": 1}, {"_id": 1, "v": 2})
    assert (rep["fullDocumentBeforeChange"], rep["fullDocument"]) == ({"_id": 1, "v": 2}, {"_id": 1, "w": 3})
    assert dele["fullDocumentBeforeChange"] == {"_id": 1, "w": 3}
    assert "fullDocument" not in dele
    assert ins["fullDocument"] == {"_id": 2}
    assert "fullDocumentBeforeChange" not in ins


def test_when_available_gives_null_without_images_and_images_after_coll_mod(db: Database) -> None:
    coll = db.later
    coll.insert_many([{"_id": 1, "v": 0}, {"_id": "stays"}])
    with coll.watch(
        full_document="whenAvailable", full_document_before_change="whenAvailable", max_await_time_ms=AWAIT_MS
    ) as stream:
        coll.update_one({"_id": 1}, {"$set": {"v": 1}})
        db.command("collMod", "later", changeStreamPreAndPostImages={"enabled": True})
        coll.update_one({"_id": 1}, {"$set": {"v": 2}})
        coll.delete_one({"_id": 1})
        before, after, dele = take(stream, 3)
    assert before["operationType"] == "update"
    assert before["fullDocument"] is None and before["fullDocumentBeforeChange"] is None
    assert after["fullDocument"] == {"_id": 1, "v": 2}
    assert after["fullDocumentBeforeChange"] == {"_id": 1, "v": 1}
    assert dele["fullDocumentBeforeChange"] == {"_id": 1, "v": 2}


def test_required_post_image_missing_is_an_error(db: Database) -> None:
    coll = db.noimg
    coll.insert_one({"_id": 1, "v": 0})
    with coll.watch(full_document="required", max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"v": 1}})
        with pytest.raises(OperationFailure) as err:
            take(stream, 1)
    assert err.value.code == 47  # NoMatchingDocument


def test_required_pre_image_missing_is_an_error(db: Database) -> None:
    coll = db.nopre
    coll.insert_one({"_id": 1, "v": 0})
    with coll.watch(full_document_before_change="required", max_await_time_ms=AWAIT_MS) as stream:
        coll.delete_one({"_id": 1})
        with pytest.raises(OperationFailure) as err:
            take(stream, 1)
    assert err.value.code == 47


# -- pipelines -------------------------------------------------------------------------------


def test_match_and_project_after_change_stream(db: Database) -> None:
    coll = db.piped
    pipeline = [
        {
            "$match": {
                "operationType": {"$in": ["insert", "delete"]},
                "$or": [{"fullDocument.keep": True}, {"operationType": "delete"}],
            }
        },
        {"$project": {"operationType": 1, "documentKey": 1, "ns": 1}},
    ]
    with coll.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1, "keep": True})
        coll.insert_one({"_id": 2, "keep": False})
        coll.update_one({"_id": 1}, {"$set": {"x": 1}})
        coll.delete_one({"_id": 2})
        events = take(stream, 2)
        assert_quiet(stream)
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [("insert", 1), ("delete", 2)]
    assert all(set(e) == {"_id", "operationType", "documentKey", "ns"} for e in events)


@pytest.mark.parametrize("stage", [{"$project": {"_id": 0}}, {"$addFields": {"_id": "mine"}}], ids=["project-out", "overwrite"])
def test_modifying_the_resume_token_is_an_error(db: Database, stage: dict[str, Any]) -> None:
    coll = db.badpipe
    with coll.watch([stage], max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as err:
            take(stream, 1)
    assert err.value.code == 280  # ChangeStreamFatalError


# -- awaitable getMore -----------------------------------------------------------------------


def test_max_await_time_ms_bounds_an_idle_get_more(db: Database) -> None:
    coll = db.idle
    for wait_ms in (100, 600):
        with coll.watch(max_await_time_ms=wait_ms) as stream:
            start = time.monotonic()
            assert stream.try_next() is None
            elapsed = time.monotonic() - start
        assert wait_ms / 1000 * 0.8 <= elapsed < wait_ms / 1000 + 1.5, (wait_ms, elapsed)


def test_event_written_while_get_more_waits_is_delivered(db: Database) -> None:
    coll = db.waiting
    coll.insert_one({"_id": 0})  # the collection exists before the writer thread runs
    with coll.watch(max_await_time_ms=5000) as stream:
        writer = threading.Timer(0.3, coll.insert_one, args=({"_id": "late"},))
        start = time.monotonic()
        writer.start()
        try:
            ev = stream.try_next()  # one getMore, woken by the write
        finally:
            writer.join()
        elapsed = time.monotonic() - start
    assert ev is not None and ev["documentKey"] == {"_id": "late"}
    assert 0.25 <= elapsed < 4.0, elapsed


# -- errors ------------------------------------------------------------------------------------


def test_unknown_change_stream_option_is_rejected(db: Database) -> None:
    with pytest.raises(OperationFailure) as err:
        db.command("aggregate", "c", pipeline=[{"$changeStream": {"noSuchOption": True}}], cursor={})
    assert err.value.code == 40415


def test_two_resume_options_are_rejected(db: Database) -> None:
    coll = db.two
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1})
        (ev,) = take(stream, 1)
    combos = [
        {"resumeAfter": ev["_id"], "startAtOperationTime": ev["clusterTime"]},
        {"resumeAfter": ev["_id"], "startAfter": ev["_id"]},
        {"startAfter": ev["_id"], "startAtOperationTime": ev["clusterTime"]},
    ]
    for spec in combos:
        with pytest.raises(OperationFailure) as err:
            db.command("aggregate", "two", pipeline=[{"$changeStream": spec}], cursor={})
        assert err.value.code == 40674, spec

"""The sandbox's expanded change events (``showExpandedEvents``, MongoDB 6.0+).

Shapes as the MongoDB manual's "Change Events" pages give them
(https://www.mongodb.com/docs/manual/reference/change-events/): ``create``,
``createIndexes``, ``dropIndexes``, ``modify``, ``drop``, ``rename``, and
``collectionUUID`` on every event about a collection; and, without the
option, streams exactly as before expanded events existed.  Every test runs
through real pymongo against its own sandbox (``sandbox_uri``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import bson
import pymongo
import pytest
from bson.binary import Binary
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo import IndexModel
from pymongo.errors import OperationFailure

from tests.helpers import take
from tests.sandbox.test_fastpath import general_path
from walkit.clock import SimulatedClock
from walkit.sandbox.engine import Engine
from walkit.sandbox.wire import CODEC, OP_MSG, Request

AWAIT_MS = 50
ID_INDEX = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
DDL = ("create", "createIndexes", "dropIndexes", "modify")
#: The keys (and their order) of events without showExpandedEvents, as the sandbox gave them before
#: (``lsid`` and ``txnNumber`` aside: they follow ``wallTime`` in a transaction's events).
PLAIN_KEYS = {
    "insert": ["_id", "operationType", "clusterTime", "wallTime", "fullDocument", "ns", "documentKey"],
    "update": ["_id", "operationType", "clusterTime", "wallTime", "ns", "documentKey", "updateDescription"],
    "replace": ["_id", "operationType", "clusterTime", "wallTime", "fullDocument", "ns", "documentKey"],
    "delete": ["_id", "operationType", "clusterTime", "wallTime", "ns", "documentKey"],
    "rename": ["_id", "operationType", "clusterTime", "wallTime", "ns", "to"],
    "drop": ["_id", "operationType", "clusterTime", "wallTime", "ns"],
    "dropDatabase": ["_id", "operationType", "clusterTime", "wallTime", "ns"],
}


@pytest.fixture
def client(sandbox_uri: str) -> Iterator[pymongo.MongoClient]:
    c: pymongo.MongoClient = pymongo.MongoClient(sandbox_uri, serverSelectionTimeoutMS=5000)
    yield c
    c.close()


def watch(target: Any, **kw: Any) -> Any:
    return target.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS, **kw)


def uuid_of(db: Any, name: str) -> Binary:
    (info,) = db.list_collections(filter={"name": name})
    return info["info"]["uuid"]


def quiet_until_sentinel(stream: Any, coll: Any) -> None:
    """Nothing arrives on ``stream`` before a write made now (so nothing was logged meanwhile)."""
    coll.insert_one({"_id": "sentinel"})
    (ev,) = take(stream, 1)
    assert (ev["operationType"], ev["documentKey"]) == ("insert", {"_id": "sentinel"}), ev


def ops(events: list[dict[str, Any]]) -> list[str]:
    return [e["operationType"] for e in events]


# -- create ---------------------------------------------------------------------------------------


def test_create_event_carries_the_options_list_collections_reports(client: pymongo.MongoClient) -> None:
    """Manual, "create Event": operationDescription holds the new collection's options and its idIndex."""
    db = client.d
    with watch(db) as stream:
        db.create_collection(
            "orders", capped=True, size=1000, max=50, validator={"n": {"$gte": 0}}, validationLevel="moderate",
            validationAction="warn", collation={"locale": "fr", "strength": 2}, changeStreamPreAndPostImages={"enabled": True},
        )
        (ev,) = take(stream, 1)
    (info,) = db.list_collections(filter={"name": "orders"})
    options = {
        "capped": True, "size": 1024, "max": 50, "changeStreamPreAndPostImages": {"enabled": True},
        "validator": {"n": {"$gte": 0}}, "validationLevel": "moderate", "validationAction": "warn",
        "collation": {"locale": "fr", "strength": 2},
    }
    assert info["options"] == options  # the size rounded up to a multiple of 256, as MongoDB does
    assert list(info["options"]) == list(options)  # in MongoDB's order
    assert "idIndex" not in info["options"] and info["idIndex"] == ID_INDEX
    assert list(ev) == ["_id", "operationType", "clusterTime", "collectionUUID", "wallTime", "ns", "operationDescription"]
    assert ev["operationType"] == "create"
    assert ev["ns"] == {"db": "d", "coll": "orders"}
    assert ev["operationDescription"] == {**options, "idIndex": ID_INDEX}
    assert list(ev["operationDescription"]) == [*options, "idIndex"]
    uuid = info["info"]["uuid"]
    assert isinstance(uuid, Binary) and uuid.subtype == 4 and ev["collectionUUID"] == uuid


def test_implicit_create_comes_before_the_write_that_made_it(client: pymongo.MongoClient) -> None:
    """A first insert, upsert or createIndexes creates the collection: its create event comes first."""
    db = client.d
    with watch(db) as stream:
        db.a.insert_one({"_id": 1})
        db.b.update_one({"_id": 2}, {"$set": {"x": 1}}, upsert=True)
        db.c.create_index("k")
        db.a.insert_one({"_id": 3})  # the collection exists now: no second create
        events = take(stream, 7)
    assert [(e["operationType"], e["ns"]["coll"]) for e in events] == [
        ("create", "a"), ("insert", "a"), ("create", "b"), ("insert", "b"), ("create", "c"), ("createIndexes", "c"), ("insert", "a"),
    ]
    for create, write in zip(events[:6:2], events[1:6:2], strict=True):
        assert create["clusterTime"] < write["clusterTime"]
        assert create["_id"]["_data"] < write["_id"]["_data"]  # resume tokens in the same order
        assert create["collectionUUID"] == write["collectionUUID"] == uuid_of(db, create["ns"]["coll"])
        assert create["operationDescription"] == {"idIndex": ID_INDEX}


def test_a_collection_stream_sees_its_own_collections_ddl_only(client: pymongo.MongoClient) -> None:
    db = client.d
    with watch(db.mine) as stream:
        db.other.insert_one({"_id": 1})
        db.other.create_index("x")
        db.mine.insert_one({"_id": 1})
        db.mine.create_index("y")
        events = take(stream, 3)
        quiet_until_sentinel(stream, db.mine)
    assert ops(events) == ["create", "insert", "createIndexes"]
    assert {e["ns"]["coll"] for e in events} == {"mine"}


# -- indexes --------------------------------------------------------------------------------------


def test_create_indexes_lists_every_index_built_with_its_options(client: pymongo.MongoClient) -> None:
    """Manual, "createIndexes Event": operationDescription.indexes holds the specs, as listIndexes gives them."""
    db = client.d
    db.c.insert_one({"_id": 1, "a": 1})
    models = [
        IndexModel([("a", 1)], unique=True, partialFilterExpression={"a": {"$gt": 0}}),
        IndexModel([("b", -1), ("c", 1)], name="bc", sparse=True, collation={"locale": "en", "strength": 1}),
        IndexModel([("t", 1)], expireAfterSeconds=3600, hidden=True),
    ]
    with watch(db) as stream:
        db.c.create_indexes(models)
        (ev,) = take(stream, 1)  # a non-empty collection: one event for the command (commitIndexBuild)
        db.c.create_indexes(models)  # all exist already: nothing built, no event
        quiet_until_sentinel(stream, db.c)
    listed = [dict(ix) for ix in db.c.list_indexes()]
    assert listed[0] == ID_INDEX
    assert ev["operationType"] == "createIndexes"
    assert ev["collectionUUID"] == uuid_of(db, "c")
    assert ev["operationDescription"] == {"indexes": listed[1:]}
    assert listed[1:] == [
        {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": True, "partialFilterExpression": {"a": {"$gt": 0}}},
        {"v": 2, "key": {"b": -1, "c": 1}, "name": "bc", "sparse": True, "collation": {"locale": "en", "strength": 1}},
        {"v": 2, "key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 3600, "hidden": True},
    ]
    assert [list(ix)[:3] for ix in listed] == [["v", "key", "name"]] * 4


def test_indexes_on_an_empty_collection_are_one_event_each(client: pymongo.MongoClient) -> None:
    """MongoDB logs an index built on an empty collection as its own createIndexes oplog entry."""
    db = client.d
    db.create_collection("e")
    with watch(db) as stream:
        db.e.create_indexes([IndexModel([("x", 1)]), IndexModel([("y", 1)])])
        events = take(stream, 2)
    assert ops(events) == ["createIndexes", "createIndexes"]
    assert [[ix["name"] for ix in e["operationDescription"]["indexes"]] for e in events] == [["x_1"], ["y_1"]]


def test_index_kinds_are_stored_and_listed_in_mongodbs_form(client: pymongo.MongoClient) -> None:
    db = client.d
    db.k.insert_one({"_id": 1, "t": "words", "loc": {"type": "Point", "coordinates": [1, 2]}, "h": 1})
    db.k.create_index([("t", "text")], weights={"t": 5}, default_language="french")
    db.k.create_index([("loc", "2dsphere")])
    db.k.create_index([("h", "hashed")])
    db.k.create_index([("$**", 1)], wildcardProjection={"t": 0})
    listed = {ix["name"]: dict(ix) for ix in db.k.list_indexes()}
    assert listed["t_text"] == {
        "v": 2, "key": {"_fts": "text", "_ftsx": 1}, "name": "t_text", "weights": {"t": 5}, "default_language": "french",
        "language_override": "language", "textIndexVersion": 3,
    }
    assert listed["loc_2dsphere"] == {"v": 2, "key": {"loc": "2dsphere"}, "name": "loc_2dsphere", "2dsphereIndexVersion": 3}
    assert listed["h_hashed"] == {"v": 2, "key": {"h": "hashed"}, "name": "h_hashed"}
    assert listed["$**_1"] == {"v": 2, "key": {"$**": 1}, "name": "$**_1", "wildcardProjection": {"t": 0}}
    # what a restore sends back (listIndexes' own form) is the same index, not a new one
    reply = db.command("createIndexes", "k", indexes=[listed["t_text"]])
    assert reply["numIndexesBefore"] == reply["numIndexesAfter"] == 5
    with pytest.raises(OperationFailure) as err:
        db.command("createIndexes", "k", indexes=[{"key": {"z": 1}, "name": "z_1", "bogus": True}])
    assert err.value.code == 197


def test_drop_indexes_is_one_event_per_index_with_its_full_spec(client: pymongo.MongoClient) -> None:
    """Manual, "dropIndexes Event": operationDescription.indexes holds the dropped index's spec."""
    db = client.d
    db.c.insert_one({"_id": 1})
    db.c.create_index("a", unique=True)
    db.c.create_index([("b", 1)], expireAfterSeconds=60)
    specs = [dict(ix) for ix in db.c.list_indexes()][1:]
    with watch(db) as stream:
        db.c.drop_indexes()
        events = take(stream, 2)
        with pytest.raises(OperationFailure) as err:
            db.c.drop_index("_id_")
        assert err.value.code == 72
        quiet_until_sentinel(stream, db.c)
    assert ops(events) == ["dropIndexes", "dropIndexes"]
    assert [e["operationDescription"] for e in events] == [{"indexes": [spec]} for spec in specs]
    assert all(e["collectionUUID"] == uuid_of(db, "c") for e in events)
    assert [ix["name"] for ix in db.c.list_indexes()] == ["_id_"]


# -- modify (collMod) -------------------------------------------------------------------------------


def test_modify_reports_the_change_and_the_state_before_it(client: pymongo.MongoClient) -> None:
    """Manual, "modify Event": operationDescription is what changed, stateBeforeChange what was."""
    db = client.d
    db.create_collection("m", validator={"a": {"$exists": True}})
    db.m.create_index([("t", 1)], expireAfterSeconds=100)
    db.m.create_index("h")
    uuid = uuid_of(db, "m")
    with watch(db) as stream:
        db.command("collMod", "m", validator={"b": {"$exists": True}}, validationLevel="moderate")
        reply = db.command("collMod", "m", index={"keyPattern": {"t": 1}, "expireAfterSeconds": 200})
        db.command("collMod", "m", index={"name": "h_1", "hidden": True})
        options, ttl, hide = take(stream, 3)
    assert list(options) == ["_id", "operationType", "clusterTime", "collectionUUID", "wallTime", "ns", "operationDescription", "stateBeforeChange"]
    assert options["operationType"] == "modify" and options["collectionUUID"] == uuid
    assert options["operationDescription"] == {"validator": {"b": {"$exists": True}}, "validationLevel": "moderate"}
    assert options["stateBeforeChange"] == {"collectionOptions": {"uuid": uuid, "validator": {"a": {"$exists": True}}}}
    assert ttl["operationDescription"] == {"index": {"name": "t_1", "expireAfterSeconds": 200}}
    assert ttl["stateBeforeChange"] == {
        "collectionOptions": {"uuid": uuid, "validator": {"b": {"$exists": True}}, "validationLevel": "moderate"},
        "indexOptions": {"expireAfterSeconds": 100},
    }
    assert (reply["expireAfterSeconds_old"], reply["expireAfterSeconds_new"]) == (100, 200)
    assert hide["operationDescription"] == {"index": {"name": "h_1", "hidden": True}}
    assert hide["stateBeforeChange"]["indexOptions"] == {"hidden": False}
    (info,) = db.list_collections(filter={"name": "m"})
    assert info["options"] == {"validator": {"b": {"$exists": True}}, "validationLevel": "moderate"}
    listed = {ix["name"]: dict(ix) for ix in db.m.list_indexes()}
    assert listed["t_1"]["expireAfterSeconds"] == 200
    assert listed["h_1"]["hidden"] is True
    db.command("collMod", "m", index={"name": "h_1", "hidden": False})
    assert "hidden" not in {ix["name"]: dict(ix) for ix in db.m.list_indexes()}["h_1"]  # MongoDB lists a visible index without it


def test_collmod_changes_the_options_a_backup_must_reproduce(client: pymongo.MongoClient) -> None:
    db = client.d
    db.create_collection("cap", capped=True, size=4096)
    db.create_collection("clu", clusteredIndex={"key": {"_id": 1}, "unique": True}, expireAfterSeconds=60)
    with watch(db) as stream:
        db.command("collMod", "cap", cappedSize=8192, cappedMax=10, changeStreamPreAndPostImages={"enabled": True})
        db.command("collMod", "clu", expireAfterSeconds="off")
        cap, clu = take(stream, 2)
    infos = {i["name"]: i for i in db.list_collections()}
    assert infos["cap"]["options"] == {"capped": True, "size": 8192, "max": 10, "changeStreamPreAndPostImages": {"enabled": True}}
    assert cap["operationDescription"] == {"cappedSize": 8192, "cappedMax": 10, "changeStreamPreAndPostImages": {"enabled": True}}
    assert cap["stateBeforeChange"]["collectionOptions"] == {"uuid": infos["cap"]["info"]["uuid"], "capped": True, "size": 4096}
    clustered = {"v": 2, "key": {"_id": 1}, "name": "_id_", "unique": True}
    assert infos["clu"]["options"] == {"clusteredIndex": clustered}
    assert "idIndex" not in infos["clu"]  # a clustered collection has none
    assert clu["stateBeforeChange"]["collectionOptions"]["expireAfterSeconds"] == Int64(60)
    assert [dict(ix) for ix in db.clu.list_indexes()] == [{**clustered, "clustered": True}]


@pytest.mark.parametrize(("change", "code"), [
    ({"noSuchOption": 1}, 40415),  # MongoDB's strict parser: "BSON field 'collMod.noSuchOption' is an unknown field."
    ({"index": {"name": "nope", "hidden": True}}, 27),
    ({"index": {"name": "a_1", "keyPattern": {"a": 1}, "hidden": True}}, 72),
    ({"index": {"name": "a_1"}}, 72),  # nothing to change
    ({"index": {"name": "a_1", "hidden": True, "bogus": 1}}, 40415),
    ({"cappedSize": 4096}, 72),  # not a capped collection
    ({"expireAfterSeconds": 10}, 72),  # not a clustered collection
    ({"validationLevel": "sometimes"}, 2),
    ({"validator": {"a": 1}, "unknown": True}, 40415),  # nothing applied when one field fails
])
def test_collmod_errors_change_nothing_and_log_nothing(client: pymongo.MongoClient, change: dict[str, Any], code: int) -> None:
    db = client.d
    db.c.insert_one({"_id": 1})
    db.c.create_index("a")
    before = (list(db.list_collections()), list(db.c.list_indexes()))
    with watch(db) as stream:
        with pytest.raises(OperationFailure) as err:
            db.command("collMod", "c", **change)
        assert err.value.code == code, err.value
        quiet_until_sentinel(stream, db.c)
    assert (list(db.list_collections()), list(db.c.list_indexes())) == before
    with pytest.raises(OperationFailure) as err:
        db.command("collMod", "missing", validator={})
    assert err.value.code == 26


@pytest.mark.parametrize(("options", "code"), [
    ({"capped": True}, 72),  # "the 'size' field is required when 'capped' is true"
    ({"noSuchOption": 1}, 40415),
    ({"validationAction": "shout"}, 2),
    ({"expireAfterSeconds": 10}, 72),  # needs a clustered collection
    ({"clusteredIndex": {"key": {"a": 1}, "unique": True}}, 2),
    ({"changeStreamPreAndPostImages": {"enabled": True, "extra": 1}}, 40415),
    ({"viewOn": "c", "pipeline": []}, 115),  # no views in the sandbox
])
def test_create_refuses_what_mongodb_refuses(client: pymongo.MongoClient, options: dict[str, Any], code: int) -> None:
    with pytest.raises(OperationFailure) as err:
        client.d.create_collection("x", **options)
    assert err.value.code == code, err.value
    assert "x" not in client.d.list_collection_names()
    if options == {"capped": True}:
        assert "the 'size' field is required when 'capped' is true" in str(err.value)


# -- drop, rename, dropDatabase ----------------------------------------------------------------------


def test_rename_keeps_the_uuid_and_names_the_target_it_replaced(client: pymongo.MongoClient) -> None:
    """Manual, "rename Event": operationDescription {to, dropTarget} with expanded events."""
    db = client.d
    db.src.insert_one({"_id": 1})
    db.dst.insert_one({"_id": 2})
    src_uuid, dst_uuid = uuid_of(db, "src"), uuid_of(db, "dst")
    with watch(db) as stream:
        db.src.rename("dst", dropTarget=True)
        db.dst.insert_one({"_id": 3})
        db.dst.drop()
        rename, insert, drop = take(stream, 3)
    assert list(rename) == ["_id", "operationType", "clusterTime", "collectionUUID", "wallTime", "ns", "to", "operationDescription"]
    assert rename["collectionUUID"] == src_uuid
    assert rename["to"] == {"db": "d", "coll": "dst"}
    assert rename["operationDescription"] == {"to": {"db": "d", "coll": "dst"}, "dropTarget": dst_uuid}
    assert insert["collectionUUID"] == src_uuid  # a same-database rename keeps the UUID
    assert list(drop) == ["_id", "operationType", "clusterTime", "collectionUUID", "wallTime", "ns"]
    assert drop["collectionUUID"] == src_uuid


def test_rename_without_a_target_and_drop_database(client: pymongo.MongoClient) -> None:
    db = client.d
    db.a.insert_one({"_id": 1})
    uuid = uuid_of(db, "a")
    with watch(client) as stream:
        db.a.rename("b")
        assert uuid_of(db, "b") == uuid
        client.drop_database("d")
        rename, drop, drop_db = take(stream, 3)
    assert rename["operationDescription"] == {"to": {"db": "d", "coll": "b"}}
    assert (drop["operationType"], drop["collectionUUID"]) == ("drop", uuid)
    assert drop_db["operationType"] == "dropDatabase" and "collectionUUID" not in drop_db


# -- CRUD events -------------------------------------------------------------------------------------


def test_crud_events_carry_the_collection_uuid(client: pymongo.MongoClient) -> None:
    """Manual: collectionUUID is on every event about a collection (6.0+, expanded events)."""
    db = client.d
    db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
    uuid = uuid_of(db, "c")
    with watch(db.c, full_document="whenAvailable", full_document_before_change="whenAvailable") as stream:
        db.c.insert_one({"_id": 1, "a": 1, "pad": "p" * 200})
        db.c.update_one({"_id": 1}, {"$set": {"a": 2}})
        db.c.replace_one({"_id": 1}, {"b": 1})
        db.c.delete_one({"_id": 1})
        insert, update, replace, delete = take(stream, 4)
    for ev in (insert, update, replace, delete):
        assert ev["collectionUUID"] == uuid
        assert list(ev)[:5] == ["_id", "operationType", "clusterTime", "collectionUUID", "wallTime"]
    assert update["updateDescription"] == {"updatedFields": {"a": 2}, "removedFields": [], "truncatedArrays": [], "disambiguatedPaths": {}}
    assert update["fullDocument"] == {"_id": 1, "a": 2, "pad": "p" * 200}
    assert list(update) == [
        "_id", "operationType", "clusterTime", "collectionUUID", "wallTime", "fullDocument", "ns", "documentKey", "updateDescription",
        "fullDocumentBeforeChange",
    ]
    assert delete["fullDocumentBeforeChange"] == {"_id": 1, "b": 1}


# -- without the flag ----------------------------------------------------------------------------------


def mixed_workload(client: pymongo.MongoClient) -> None:
    db = client.d
    db.create_collection("opts", validator={"a": {"$exists": True}})
    db.c.insert_one({"_id": 1, "n": 1, "pad": "p" * 200})
    db.c.create_index("n")
    db.c.update_one({"_id": 1}, {"$inc": {"n": 1}})
    db.command("collMod", "c", index={"name": "n_1", "hidden": True})
    db.c.replace_one({"_id": 1}, {"n": 9})
    db.c.drop_index("n_1")
    with client.start_session() as session, session.start_transaction():
        db.t.insert_one({"_id": 1}, session=session)
        db.c.delete_one({"_id": 1}, session=session)
    db.c.rename("c2")
    db.c2.drop()
    client.drop_database("d")


def strip_expanded(ev: dict[str, Any]) -> dict[str, Any]:
    """An expanded event as the same stream without the flag shows it."""
    out = {k: v for k, v in ev.items() if k not in ("collectionUUID", "operationDescription")}
    if "updateDescription" in out:
        out["updateDescription"] = {k: v for k, v in out["updateDescription"].items() if k != "disambiguatedPaths"}
    return out


@pytest.mark.parametrize("level", ["collection", "database", "cluster"])
def test_without_show_expanded_events_streams_are_as_before(client: pymongo.MongoClient, level: str) -> None:
    target = {"collection": client.d.c, "database": client.d, "cluster": client}[level]
    with target.watch(max_await_time_ms=AWAIT_MS) as plain, watch(target) as expanded:
        mixed_workload(client)
        wanted = {
            "collection": ["insert", "update", "replace", "delete", "rename", "invalidate"],
            "database": ["insert", "update", "replace", "insert", "delete", "rename", "drop", "drop", "drop", "dropDatabase", "invalidate"],
            "cluster": ["insert", "update", "replace", "insert", "delete", "rename", "drop", "drop", "drop", "dropDatabase"],
        }[level]
        plain_events = take(plain, len(wanted))
        n_ddl = {"collection": 4, "database": 6, "cluster": 6}[level]  # create (of c; of opts and t too), createIndexes, modify, dropIndexes
        expanded_events = take(expanded, len(wanted) + n_ddl)
    assert ops(plain_events) == wanted
    for ev in plain_events:
        if ev["operationType"] != "invalidate":
            assert [k for k in ev if k not in ("lsid", "txnNumber")] == PLAIN_KEYS[ev["operationType"]], ev
        assert "collectionUUID" not in ev and "operationDescription" not in ev
    shown = [strip_expanded(e) for e in expanded_events if e["operationType"] not in DDL]
    assert shown == plain_events  # the same events, tokens and all: the DDL entries are only skipped
    ddl = [e["operationType"] for e in expanded_events if e["operationType"] in DDL]
    assert len(ddl) == n_ddl and {"create", "createIndexes", "modify", "dropIndexes"} <= set(ddl)
    txn = [e for e in plain_events if "lsid" in e]
    assert txn and [list(e)[4:6] for e in txn] == [["lsid", "txnNumber"]] * len(txn)  # where they always were


def test_an_idle_plain_stream_moves_past_ddl_and_resumes_after_it(client: pymongo.MongoClient) -> None:
    db = client.d
    db.c.insert_one({"_id": 0})
    with db.c.watch(max_await_time_ms=AWAIT_MS) as stream:
        before = stream.resume_token
        db.c.create_index("x")
        db.command("collMod", "c", index={"name": "x_1", "hidden": True})
        assert stream.try_next() is None
        idle = stream.resume_token
        assert idle["_data"] > before["_data"]  # the postBatchResumeToken moved past the DDL entries
    db.c.insert_one({"_id": 1})
    with db.c.watch(resume_after=idle, max_await_time_ms=AWAIT_MS) as resumed:
        (ev,) = take(resumed, 1)
        assert ev["documentKey"] == {"_id": 1}
        assert resumed.try_next() is None


def test_resuming_across_ddl_events(client: pymongo.MongoClient) -> None:
    db = client.d
    with watch(db) as stream:
        db.c.insert_one({"_id": 1})
        db.c.create_index("x")
        db.c.drop_index("x_1")
        db.c.insert_one({"_id": 2})
        create, insert1, created, dropped, insert2 = take(stream, 5)
    assert ops([create, insert1, created, dropped, insert2]) == ["create", "insert", "createIndexes", "dropIndexes", "insert"]
    with watch(db, resume_after=create["_id"]) as resumed:
        assert take(resumed, 4) == [insert1, created, dropped, insert2]
    with watch(db, start_after=created["_id"]) as resumed:
        assert take(resumed, 2) == [dropped, insert2]
    with db.watch(resume_after=created["_id"], max_await_time_ms=AWAIT_MS) as plain:  # a DDL token resumes a plain stream too
        (ev,) = take(plain, 1)
        assert ev["documentKey"] == {"_id": 2} and "collectionUUID" not in ev
    with watch(db, start_at_operation_time=created["clusterTime"]) as resumed:
        assert ops(take(resumed, 3)) == ["createIndexes", "dropIndexes", "insert"]


# -- transactions --------------------------------------------------------------------------------------


def test_a_collection_created_in_a_transaction_commits_with_it(client: pymongo.MongoClient) -> None:
    db = client.d
    with watch(db) as stream:
        with client.start_session() as session, session.start_transaction():
            db.t.insert_one({"_id": 1}, session=session)
            db.command("create", "explicit", session=session)
            db.explicit.create_index("k", session=session)
        events = take(stream, 4)
    assert ops(events) == ["create", "insert", "create", "createIndexes"]
    assert len({e["clusterTime"] for e in events}) == 1
    assert [e["_id"]["_data"] for e in events] == sorted(e["_id"]["_data"] for e in events)
    assert all(e["lsid"] == events[0]["lsid"] and e["txnNumber"] == events[0]["txnNumber"] for e in events)
    assert list(events[0])[:6] == ["_id", "operationType", "clusterTime", "txnNumber", "lsid", "collectionUUID"]
    assert events[0]["collectionUUID"] == events[1]["collectionUUID"] == uuid_of(db, "t")


def test_an_aborted_transaction_leaves_no_create(client: pymongo.MongoClient) -> None:
    db = client.d
    db.existing.insert_one({"_id": 0})
    with watch(db) as stream:
        with client.start_session() as session:
            session.start_transaction()
            db.t.insert_one({"_id": 1}, session=session)
            db.command("create", "u", session=session)
            session.abort_transaction()
        with client.start_session() as session, pytest.raises(OperationFailure) as err:
            with session.start_transaction():
                db.existing.create_index("k", session=session)
        assert err.value.code == 263  # not on a collection the transaction did not create
        quiet_until_sentinel(stream, db.existing)
    assert sorted(db.list_collection_names()) == ["existing"]


# -- the fast path -------------------------------------------------------------------------------------


def test_the_implicit_create_is_the_same_on_the_fast_and_general_paths() -> None:
    def logged() -> list[bytes]:
        eng = Engine(clock=SimulatedClock(datetime(2026, 1, 5, tzinfo=UTC)))
        for body in ({"insert": "c", "documents": [{"_id": 1, "a": [1, {"b": 2}]}]}, {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"x": 1}}}]}):
            eng.run(Request(1, OP_MSG, {**body, "$db": "d"}), 1)
        uuid = eng.colls[("d", "c")].uuid
        assert all(e.uuid == uuid for e in eng.oplog.entries)
        keep = ("op", "coll", "doc_key", "pre", "post", "update", "desc", "ts", "wall")
        return [bson.encode({k: getattr(e, k) for k in keep}, codec_options=CODEC) for e in eng.oplog.entries]

    with general_path():
        expected = logged()
    got = logged()
    assert got == expected
    assert [bson.decode(e)["op"] for e in got] == ["create", "insert", "update"]
    assert bson.decode(got[0])["desc"] == {"idIndex": ID_INDEX}
    assert isinstance(bson.decode(got[1])["ts"], Timestamp)

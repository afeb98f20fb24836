"""CRUD and namespace commands behave as MongoDB 7.0 does, through pymongo.

Runs against whatever ``mongo_uri`` names (a real replica set or the
sandbox); nothing here may rely on a sandbox-only behaviour.
"""

from __future__ import annotations

from typing import Any

import pymongo
import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError
from pymongo.monitoring import CommandListener, CommandStartedEvent, CommandSucceededEvent

# -- inserts ------------------------------------------------------------------------


def test_insert_one_and_many_store_documents_with_id_first(db: Database) -> None:
    res = db.c.insert_one({"a": 1, "b": "x"})
    assert isinstance(res.inserted_id, ObjectId)
    assert list(db.c.find_one({"_id": res.inserted_id})) == ["_id", "a", "b"]
    many = db.c.insert_many([{"n": i} for i in range(5)])
    assert len(many.inserted_ids) == 5
    assert db.c.count_documents({}) == 6
    db.c.insert_one({"a": 2, "_id": "late"})  # _id given last is stored first
    assert list(db.c.find_one({"_id": "late"})) == ["_id", "a"]


def test_ordered_insert_many_stops_at_the_duplicate(db: Database) -> None:
    db.c.insert_one({"_id": 2})
    with pytest.raises(BulkWriteError) as info:
        db.c.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}], ordered=True)
    details = info.value.details
    assert details["nInserted"] == 1
    [err] = details["writeErrors"]
    assert err["code"] == 11000 and err["index"] == 1
    assert err["keyValue"] == {"_id": 2}
    assert sorted(d["_id"] for d in db.c.find()) == [1, 2]


def test_unordered_insert_many_continues_after_the_duplicate(db: Database) -> None:
    db.c.insert_one({"_id": 2})
    with pytest.raises(BulkWriteError) as info:
        db.c.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}, {"_id": 1}], ordered=False)
    details = info.value.details
    assert details["nInserted"] == 2
    assert [(e["index"], e["code"], e["keyValue"]) for e in details["writeErrors"]] == [(1, 11000, {"_id": 2}), (3, 11000, {"_id": 1})]
    assert sorted(d["_id"] for d in db.c.find()) == [1, 2, 3]


def test_insert_one_duplicate_raises_duplicate_key_error(db: Database) -> None:
    db.c.insert_one({"_id": "k"})
    with pytest.raises(DuplicateKeyError) as info:
        db.c.insert_one({"_id": "k", "v": 1})
    assert info.value.code == 11000
    assert info.value.details["keyValue"] == {"_id": "k"}
    assert db.c.find_one({"_id": "k"}) == {"_id": "k"}


# -- updates ------------------------------------------------------------------------


def test_update_operators(db: Database) -> None:
    db.c.insert_one({"_id": 1, "a": {"b": 1}, "gone": True, "n": 5, "tags": ["x", "y"], "s": [1, 2]})
    res = db.c.update_one(
        {"_id": 1},
        {
            "$set": {"a.c.d": "deep", "a.b": 2},
            "$unset": {"gone": ""},
            "$inc": {"n": 3, "fresh": Int64(2)},
            "$push": {"tags": "z"},
            "$pull": {"s": 1},
            "$addToSet": {"set": {"$each": [1, 1, 2]}},
        },
    )
    assert (res.matched_count, res.modified_count) == (1, 1)
    doc = db.c.find_one({"_id": 1})
    assert doc == {"_id": 1, "a": {"b": 2, "c": {"d": "deep"}}, "n": 8, "tags": ["x", "y", "z"], "s": [2], "fresh": 2, "set": [1, 2]}
    assert isinstance(doc["fresh"], Int64)
    db.c.update_one({"_id": 1}, {"$addToSet": {"tags": "x"}})
    assert db.c.find_one({"_id": 1})["tags"] == ["x", "y", "z"]


def test_numeric_update_operators_keep_mongodb_types(db: Database) -> None:
    db.c.insert_one({"_id": 1, "i": 1, "l": Int64(5), "big": 2**31 - 1, "d": Decimal128("1.5"), "f": 1})
    db.c.update_one({"_id": 1}, {"$inc": {"i": Int64(1), "l": 1, "big": 1, "d": 1, "f": 0.5, "new": Int64(3)}, "$mul": {"m": Int64(4)}})
    doc = db.c.find_one({"_id": 1})
    assert {k: (type(v).__name__, v) for k, v in doc.items() if k != "_id"} == {
        "i": ("Int64", 2),
        "l": ("Int64", 6),
        "big": ("Int64", 2**31),
        "d": ("Decimal128", Decimal128("2.5")),
        "f": ("float", 1.5),
        "new": ("Int64", 3),
        "m": ("Int64", 0),
    }
    db.c.update_one({"_id": 1}, {"$mul": {"i": 3, "f": 2}})
    assert db.c.find_one({"_id": 1}, {"i": 1, "f": 1}) == {"_id": 1, "i": 6, "f": 3.0}
    with pytest.raises(WriteError) as info:
        db.c.update_one({"_id": 1}, {"$inc": {"l": "x"}})
    assert info.value.code == 14
    db.c.insert_one({"_id": 2, "s": "text"})
    with pytest.raises(WriteError) as info:
        db.c.update_one({"_id": 2}, {"$inc": {"s": 1}})
    assert info.value.code == 14


def test_update_path_rules(db: Database) -> None:
    db.c.insert_one({"_id": 1, "a": 0, "l": [1, 2], "e": []})
    with pytest.raises(WriteError) as info:
        db.c.update_one({"_id": 1}, {"$set": {"a.b": 1}})
    assert info.value.code == 28
    with pytest.raises(WriteError) as info:
        db.c.update_one({"_id": 1}, {"$set": {"l.name": 1}})
    assert info.value.code == 28
    with pytest.raises(WriteError) as info:
        db.c.update_one({"_id": 1}, {"$frobnicate": {"a": 1}})
    assert info.value.code == 9
    db.c.update_one({"_id": 1}, {"$unset": {"l.0": ""}, "$set": {"e.1.x": 0}})
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "a": 0, "l": [None, 2], "e": [None, {"x": 0}]}
    # New fields are appended in lexicographic order of their names.
    db.c.update_one({"_id": 1}, {"$set": {"z": 1, "b": 2, "m": {"y": 1, "c": 2}}})
    doc = db.c.find_one({"_id": 1})
    assert list(doc) == ["_id", "a", "l", "e", "b", "m", "z"]
    assert list(doc["m"]) == ["y", "c"]  # a whole value keeps its own order


def test_noop_update_matches_without_modifying(db: Database) -> None:
    db.c.insert_one({"_id": 1, "a": 1})
    res = db.c.update_one({"_id": 1}, {"$set": {"a": 1}})
    assert (res.matched_count, res.modified_count) == (1, 0)
    res = db.c.update_one({"_id": 99}, {"$set": {"a": 1}})
    assert (res.matched_count, res.modified_count, res.upserted_id) == (0, 0, None)


def test_update_many_with_positional_and_array_filters(db: Database) -> None:
    db.c.insert_many(
        [
            {"_id": 1, "grades": [80, 95, 60], "kind": "a"},
            {"_id": 2, "grades": [95, 95, 70], "kind": "a"},
            {"_id": 3, "grades": [95], "kind": "b"},
        ]
    )
    res = db.c.update_many({"kind": "a", "grades": 95}, {"$set": {"grades.$": 100}})
    assert (res.matched_count, res.modified_count) == (2, 2)
    assert db.c.find_one({"_id": 1})["grades"] == [80, 100, 60]
    assert db.c.find_one({"_id": 2})["grades"] == [100, 95, 70]
    res = db.c.update_many({}, {"$inc": {"grades.$[low]": 5}}, array_filters=[{"low": {"$lt": 75}}])
    assert (res.matched_count, res.modified_count) == (3, 2)
    assert [d["grades"] for d in db.c.find().sort("_id", 1)] == [[80, 100, 65], [100, 95, 75], [95]]


def test_positional_in_array_of_documents(db: Database) -> None:
    db.c.insert_one({"_id": 1, "items": [{"sku": "a", "q": 1}, {"sku": "b", "q": 2}]})
    db.c.update_one({"items.sku": "b"}, {"$set": {"items.$.q": 20}})
    db.c.update_one({"_id": 1}, {"$set": {"items.$[it].seen": True}}, array_filters=[{"it.q": {"$gte": 1}}])
    assert db.c.find_one({"_id": 1})["items"] == [{"sku": "a", "q": 1, "seen": True}, {"sku": "b", "q": 20, "seen": True}]


def test_upsert_returns_id_and_stores_it_first(db: Database) -> None:
    res = db.c.update_one({"name": "x"}, {"$set": {"v": 1}}, upsert=True)
    assert isinstance(res.upserted_id, ObjectId)
    assert (res.matched_count, res.modified_count) == (0, 0)
    doc = db.c.find_one({"_id": res.upserted_id})
    assert list(doc) == ["_id", "name", "v"] and doc["name"] == "x"
    res = db.c.update_one({"v": 7}, {"$set": {"w": 1}, "$setOnInsert": {"_id": "mine"}}, upsert=True)
    assert res.upserted_id == "mine"
    assert list(db.c.find_one({"_id": "mine"})) == ["_id", "v", "w"]
    res = db.c.replace_one({"_id": 42}, {"r": True}, upsert=True)
    assert res.upserted_id == 42
    assert db.c.find_one({"_id": 42}) == {"_id": 42, "r": True}
    # An upsert that matches updates instead.
    res = db.c.update_one({"name": "x"}, {"$set": {"v": 2}}, upsert=True)
    assert (res.matched_count, res.modified_count, res.upserted_id) == (1, 1, None)


def test_replace_one_keeps_id_and_refuses_to_change_it(db: Database) -> None:
    db.c.insert_one({"_id": 1, "a": 1, "b": 2})
    res = db.c.replace_one({"_id": 1}, {"c": 3})
    assert (res.matched_count, res.modified_count) == (1, 1)
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "c": 3}
    db.c.replace_one({"_id": 1}, {"d": 4, "_id": 1})  # the same _id is fine
    assert list(db.c.find_one({"_id": 1})) == ["_id", "d"]
    with pytest.raises(WriteError) as info:
        db.c.replace_one({"_id": 1}, {"_id": 2, "e": 5})
    assert info.value.code == 66
    with pytest.raises(WriteError) as info:
        db.c.update_one({"_id": 1}, {"$set": {"_id": 3}})
    assert info.value.code == 66
    assert list(db.c.find()) == [{"_id": 1, "d": 4}]


# -- deletes ------------------------------------------------------------------------


def test_delete_one_and_many(db: Database) -> None:
    db.c.insert_many([{"_id": i, "even": i % 2 == 0} for i in range(6)])
    assert db.c.delete_one({"even": True}).deleted_count == 1
    assert db.c.delete_many({"even": True}).deleted_count == 2
    assert db.c.delete_many({"even": True}).deleted_count == 0
    assert sorted(d["_id"] for d in db.c.find()) == [1, 3, 5]
    assert db.c.delete_many({}).deleted_count == 3
    assert db.c.count_documents({}) == 0


# -- findAndModify --------------------------------------------------------------------


def test_find_one_and_update(db: Database) -> None:
    db.c.insert_many([{"_id": i, "q": i * 10} for i in range(3)])
    before = db.c.find_one_and_update({}, {"$inc": {"q": 1}}, sort=[("q", -1)])
    assert before == {"_id": 2, "q": 20}
    after = db.c.find_one_and_update({}, {"$inc": {"q": 1}}, sort=[("q", -1)], projection={"q": 1, "_id": 0}, return_document=ReturnDocument.AFTER)
    assert after == {"q": 22}
    assert db.c.find_one_and_update({"_id": 9}, {"$set": {"q": 1}}) is None
    assert db.c.count_documents({}) == 3
    up = db.c.find_one_and_update({"_id": 9}, {"$set": {"q": 1}}, upsert=True, return_document=ReturnDocument.AFTER)
    assert up == {"_id": 9, "q": 1}
    up = db.c.find_one_and_update({"_id": 10}, {"$set": {"q": 1}}, upsert=True)
    assert up is None and db.c.find_one({"_id": 10}) == {"_id": 10, "q": 1}


def test_find_one_and_replace(db: Database) -> None:
    db.c.insert_many([{"_id": 1, "k": "a"}, {"_id": 2, "k": "a"}])
    old = db.c.find_one_and_replace({"k": "a"}, {"k": "b", "new": True}, sort=[("_id", -1)])
    assert old == {"_id": 2, "k": "a"}
    assert db.c.find_one({"_id": 2}) == {"_id": 2, "k": "b", "new": True}
    new = db.c.find_one_and_replace({"k": "a"}, {"k": "c"}, return_document=ReturnDocument.AFTER, projection={"_id": 1})
    assert new == {"_id": 1}
    up = db.c.find_one_and_replace({"_id": 3}, {"k": "z"}, upsert=True, return_document=ReturnDocument.AFTER)
    assert up == {"_id": 3, "k": "z"}
    with pytest.raises(OperationFailure) as info:
        db.c.find_one_and_replace({"_id": 1}, {"_id": 5})
    assert info.value.code == 66


def test_find_one_and_delete(db: Database) -> None:
    db.c.insert_many([{"_id": i, "p": i % 2} for i in range(4)])
    gone = db.c.find_one_and_delete({"p": 1}, sort=[("_id", -1)], projection={"p": 0})
    assert gone == {"_id": 3}
    assert db.c.find_one_and_delete({"_id": 99}) is None
    assert sorted(d["_id"] for d in db.c.find()) == [0, 1, 2]


# -- reads ------------------------------------------------------------------------------


class _Recorder(CommandListener):
    """Keeps every command started and every reply, in order."""

    def __init__(self) -> None:
        self.commands: list[CommandStartedEvent] = []
        self.replies: list[CommandSucceededEvent] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.commands.append(event)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        self.replies.append(event)

    def failed(self, event: Any) -> None:
        pass


def test_find_with_filter_sort_projection_skip_limit(db: Database) -> None:
    db.c.insert_many([{"_id": i, "g": i % 3, "x": i * i, "y": "drop me"} for i in range(20)])
    got = list(db.c.find({"g": {"$ne": 0}}, {"x": 1}).sort([("x", -1)]).skip(2).limit(4))
    assert got == [{"_id": i, "x": i * i} for i in (16, 14, 13, 11)]
    got = list(db.c.find({"g": 0}, {"y": 0, "_id": 0}).sort("_id", 1).limit(2))
    assert got == [{"g": 0, "x": 0}, {"g": 0, "x": 9}]
    assert db.c.find_one({"x": {"$gt": 300}}, sort=[("x", 1)]) == {"_id": 18, "g": 0, "x": 324, "y": "drop me"}


def test_find_across_many_getmore_batches(mongo_uri: str, db: Database) -> None:
    db.c.insert_many([{"_id": i} for i in range(25)])
    rec = _Recorder()
    mc: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, event_listeners=[rec])
    try:
        coll = mc[db.name].c
        got = [d["_id"] for d in coll.find({}, batch_size=4).sort("_id", 1)]
        assert got == list(range(25))
        names = [e.command_name for e in rec.commands]
        assert names.count("find") == 1 and names.count("getMore") == 6
        batches = [len(r.reply["cursor"].get("firstBatch", r.reply["cursor"].get("nextBatch", []))) for r in rec.replies if r.command_name in ("find", "getMore")]
        assert batches == [4, 4, 4, 4, 4, 4, 1]
        assert rec.replies[-1].reply["cursor"]["id"] == 0
        # A limit smaller than the batches closes the cursor without a killCursors.
        rec.commands.clear()
        assert len(list(coll.find({}, batch_size=4, limit=6))) == 6
        assert [e.command_name for e in rec.commands] == ["find", "getMore"]
    finally:
        mc.close()


def test_count_documents_and_distinct(db: Database) -> None:
    db.c.insert_many([{"k": k, "tags": t} for k, t in [("a", [1, 2]), ("b", [2]), ("a", [3]), ("c", [])]])
    assert db.c.count_documents({}) == 4
    assert db.c.count_documents({"k": "a"}) == 2
    assert db.c.count_documents({}, skip=1, limit=2) == 2
    assert db.c.estimated_document_count() == 4
    assert sorted(db.c.distinct("k")) == ["a", "b", "c"]
    assert sorted(db.c.distinct("tags")) == [1, 2, 3]
    assert sorted(db.c.distinct("k", {"tags": 2})) == ["a", "b"]
    assert db.c.distinct("nope") == []


def test_aggregate_match_group_sort(db: Database) -> None:
    db.c.insert_many([{"shop": s, "amount": a} for s, a in [("x", 5), ("y", 7), ("x", 10), ("z", 1), ("y", 1)]])
    got = list(
        db.c.aggregate(
            [
                {"$match": {"amount": {"$gte": 2}}},
                {"$group": {"_id": "$shop", "total": {"$sum": "$amount"}, "n": {"$sum": 1}}},
                {"$sort": {"total": -1}},
            ]
        )
    )
    assert got == [{"_id": "x", "total": 15, "n": 2}, {"_id": "y", "total": 7, "n": 1}]
    many = list(db.c.aggregate([{"$sort": {"amount": 1}}], batchSize=2))
    assert [d["amount"] for d in many] == [1, 1, 5, 7, 10]


def test_bulk_write_mixes_operations(db: Database) -> None:
    db.c.insert_many([{"_id": i, "v": 0} for i in range(4)])
    res = db.c.bulk_write(
        [
            pymongo.InsertOne({"_id": 10, "v": 1}),
            pymongo.UpdateOne({"_id": 0}, {"$set": {"v": 5}}),
            pymongo.UpdateMany({"v": 0}, {"$inc": {"v": 2}}),
            pymongo.ReplaceOne({"_id": 1}, {"replaced": True}),
            pymongo.DeleteOne({"_id": 2}),
            pymongo.UpdateOne({"_id": 20}, {"$set": {"v": 9}}, upsert=True),
            pymongo.DeleteMany({"v": 5}),
        ]
    )
    assert res.inserted_count == 1
    assert res.matched_count == 5 and res.modified_count == 5
    assert res.deleted_count == 2
    assert res.upserted_ids == {5: 20}
    assert list(db.c.find().sort("_id", 1)) == [{"_id": 1, "replaced": True}, {"_id": 3, "v": 2}, {"_id": 10, "v": 1}, {"_id": 20, "v": 9}]


def test_bulk_write_error_reports_index_and_counts(db: Database) -> None:
    db.c.insert_one({"_id": 1})
    with pytest.raises(BulkWriteError) as info:
        db.c.bulk_write([pymongo.InsertOne({"_id": 2}), pymongo.InsertOne({"_id": 1}), pymongo.DeleteOne({"_id": 2})], ordered=False)
    d = info.value.details
    assert (d["nInserted"], d["nRemoved"]) == (1, 1)
    assert [(e["index"], e["code"]) for e in d["writeErrors"]] == [(1, 11000)]


# -- collections, indexes, databases ----------------------------------------------------


def test_create_collection_and_list_collections(db: Database) -> None:
    db.create_collection("plain")
    db.create_collection("imaged", changeStreamPreAndPostImages={"enabled": True})
    with pytest.raises(OperationFailure) as info:
        db.command("create", "plain")
    assert info.value.code == 48
    infos = {c["name"]: c for c in db.list_collections()}
    assert set(infos) == {"plain", "imaged"}
    assert infos["imaged"]["options"] == {"changeStreamPreAndPostImages": {"enabled": True}}
    assert infos["plain"]["options"] == {}
    assert infos["plain"]["type"] == "collection"
    uuids = [c["info"]["uuid"] for c in infos.values()]
    assert all(isinstance(u, Binary) and u.subtype == 4 and len(u) == 16 for u in uuids)
    assert uuids[0] != uuids[1]
    assert sorted(db.list_collection_names()) == ["imaged", "plain"]
    assert [c["name"] for c in db.list_collections(filter={"name": "plain"})] == ["plain"]


def test_indexes_create_list_drop_and_unique_violation(db: Database) -> None:
    db.c.insert_one({"email": "a@x", "n": 1})
    name = db.c.create_index([("email", 1)], unique=True)
    assert name == "email_1"
    assert db.c.create_index([("n", -1), ("email", 1)]) == "n_-1_email_1"
    indexes = {i["name"]: i for i in db.c.list_indexes()}
    assert set(indexes) == {"_id_", "email_1", "n_-1_email_1"}
    assert indexes["email_1"]["unique"] is True
    assert dict(indexes["n_-1_email_1"]["key"]) == {"n": -1, "email": 1}
    assert list(db.c.index_information()) == ["_id_", "email_1", "n_-1_email_1"]
    with pytest.raises(DuplicateKeyError) as info:
        db.c.insert_one({"email": "a@x"})
    assert info.value.code == 11000
    assert info.value.details["keyValue"] == {"email": "a@x"}
    assert db.c.count_documents({}) == 1
    db.c.insert_one({"email": "b@x"})
    with pytest.raises(DuplicateKeyError):
        db.c.update_one({"email": "b@x"}, {"$set": {"email": "a@x"}})
    db.c.drop_index("email_1")
    db.c.insert_one({"email": "a@x"})
    assert db.c.count_documents({"email": "a@x"}) == 2
    assert [i["name"] for i in db.c.list_indexes()] == ["_id_", "n_-1_email_1"]
    with pytest.raises(OperationFailure) as info:
        db.c.drop_index("email_1")
    assert info.value.code == 27


def test_drop_and_drop_database(client: pymongo.MongoClient, db: Database) -> None:
    db.a.insert_one({"x": 1})
    db.b.insert_one({"x": 1})
    db.a.drop()
    assert db.list_collection_names() == ["b"]
    db.a.drop()  # dropping what is gone is fine
    assert db.name in client.list_database_names()
    client.drop_database(db.name)
    assert db.name not in client.list_database_names()
    assert db.list_collection_names() == []


def test_rename_collection(db: Database) -> None:
    db.src.insert_many([{"_id": 1}, {"_id": 2}])
    db.src.create_index("k")
    db.other.insert_one({"_id": "o"})
    db.src.rename("dst")
    assert sorted(db.list_collection_names()) == ["dst", "other"]
    assert [d["_id"] for d in db.dst.find().sort("_id", 1)] == [1, 2]
    assert "k_1" in db.dst.index_information()
    with pytest.raises(OperationFailure) as info:
        db.dst.rename("other")
    assert info.value.code == 48
    assert db.other.find_one() == {"_id": "o"}
    db.dst.rename("other", dropTarget=True)
    assert db.list_collection_names() == ["other"]
    assert db.other.count_documents({}) == 2


def test_list_database_names(client: pymongo.MongoClient, db: Database) -> None:
    assert db.name not in client.list_database_names()
    db.c.insert_one({})
    names = client.list_database_names()
    assert db.name in names and "admin" in names
    assert {"name": db.name} in list(client.list_databases(nameOnly=True))


# -- errors ------------------------------------------------------------------------------


def test_unknown_command_is_code_59(db: Database) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("noSuchCommandAtAll")
    assert info.value.code == 59
    assert info.value.details["codeName"] == "CommandNotFound"


def test_getmore_on_unknown_or_killed_cursor_is_code_43(client: pymongo.MongoClient, db: Database) -> None:
    db.c.insert_many([{"_id": i} for i in range(10)])
    with client.start_session() as s:
        with pytest.raises(OperationFailure) as info:
            db.command("getMore", Int64(123456789), collection="c", session=s)
        assert info.value.code == 43
        reply = db.command("find", "c", batchSize=2, session=s)
        cid = reply["cursor"]["id"]
        assert cid != 0 and len(reply["cursor"]["firstBatch"]) == 2
        more = db.command("getMore", cid, collection="c", batchSize=3, session=s)
        assert [d["_id"] for d in more["cursor"]["nextBatch"]] == [2, 3, 4]
        killed = db.command("killCursors", "c", cursors=[cid], session=s)
        assert killed["cursorsKilled"] == [cid]
        with pytest.raises(OperationFailure) as info:
            db.command("getMore", cid, collection="c", session=s)
        assert info.value.code == 43

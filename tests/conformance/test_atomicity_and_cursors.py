"""A failed write changes nothing; transactions hold their documents; cursor
batches respect batchSize 0 and the 16 MiB reply limit."""

from __future__ import annotations

import threading
import time

import pymongo
import pytest
from pymongo.errors import OperationFailure, PyMongoError


def test_a_failed_update_changes_nothing_and_logs_nothing(db: pymongo.database.Database) -> None:
    db.c.insert_one({"_id": 1, "s": "text"})
    with db.c.watch(max_await_time_ms=200) as stream:
        with pytest.raises(OperationFailure) as info:
            db.c.update_one({"_id": 1}, {"$set": {"a": 1}, "$inc": {"s": 1}})
        assert info.value.code == 14  # TypeMismatch: $inc on a string
        with pytest.raises(OperationFailure):
            db.c.find_one_and_update({"_id": 1}, {"$set": {"b": 1}, "$inc": {"s": 1}})
        assert db.c.find_one({"_id": 1}) == {"_id": 1, "s": "text"}
        db.c.insert_one({"_id": "marker"})
        assert stream.next()["documentKey"] == {"_id": "marker"}


def test_a_plain_write_waits_for_the_transaction_holding_its_document(client: pymongo.MongoClient, db: pymongo.database.Database) -> None:
    db.c.insert_one({"_id": 1, "n": 0})
    done = threading.Event()
    with client.start_session() as session:
        session.start_transaction()
        db.c.update_one({"_id": 1}, {"$set": {"n": 1}}, session=session)

        def plain_write() -> None:
            try:
                db.c.update_one({"_id": 1}, {"$inc": {"n": 10}})
            except PyMongoError:
                pass
            done.set()

        writer = threading.Thread(target=plain_write)
        writer.start()
        time.sleep(0.3)
        assert not done.is_set()  # blocked behind the open transaction
        session.commit_transaction()
    writer.join(30)
    assert done.is_set()
    assert db.c.find_one({"_id": 1})["n"] == 11


def test_an_aborted_transaction_restores_deleted_and_updated_documents(client: pymongo.MongoClient, db: pymongo.database.Database) -> None:
    db.c.insert_many([{"_id": 1, "v": "a"}, {"_id": 2, "v": "b"}])
    with client.start_session() as session:
        session.start_transaction()
        db.c.delete_one({"_id": 1}, session=session)
        db.c.update_one({"_id": 2}, {"$set": {"v": "changed"}}, session=session)
        db.c.insert_one({"_id": 3}, session=session)
        session.abort_transaction()
    assert list(db.c.find().sort("_id", 1)) == [{"_id": 1, "v": "a"}, {"_id": 2, "v": "b"}]


def test_batch_size_zero_gives_an_empty_first_batch(db: pymongo.database.Database) -> None:
    db.c.insert_many([{"_id": i} for i in range(10)])
    reply = db.command("find", "c", batchSize=0)
    assert reply["cursor"]["firstBatch"] == []
    assert reply["cursor"]["id"] != 0
    more = db.command("getMore", reply["cursor"]["id"], collection="c")
    assert [d["_id"] for d in more["cursor"]["nextBatch"]] == list(range(10))
    reply = db.command("aggregate", "c", pipeline=[], cursor={"batchSize": 0})
    assert reply["cursor"]["firstBatch"] == []


def test_large_documents_come_back_in_batches_within_the_message_limit(db: pymongo.database.Database) -> None:
    big = "x" * (4_500_000)
    db.c.insert_many([{"_id": i, "big": big} for i in range(12)])
    ids = [d["_id"] for d in db.c.find({}, {"_id": 1, "big": 1})]
    assert ids == list(range(12))

"""Multi-document transactions through pymongo's ``with_transaction``.

Committed writes appear together (one clusterTime, each event with ``lsid``
and ``txnNumber``); aborted ones leave nothing in the data or in a change
stream; a conflict between two open transactions is a WriteConflict labelled
TransientTransactionError.
"""

from __future__ import annotations

from typing import Any

import pymongo
import pytest
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

AWAIT_MS = 300


def drain(stream: Any) -> list[dict[str, Any]]:
    """Every event the stream has now (it waits AWAIT_MS for each batch)."""
    out = []
    while (ev := stream.try_next()) is not None:
        out.append(ev)
    return out


def test_committed_transaction_is_visible_and_streamed_as_one(client: pymongo.MongoClient, db: Database) -> None:
    db.create_collection("acct")
    db.create_collection("log")
    db.acct.insert_many([{"_id": "a", "bal": 100}, {"_id": "b", "bal": 0}])

    def transfer(s: ClientSession) -> str:
        db.acct.update_one({"_id": "a"}, {"$inc": {"bal": -30}}, session=s)
        db.acct.update_one({"_id": "b"}, {"$inc": {"bal": 30}}, session=s)
        db.log.insert_one({"_id": 1, "what": "transfer"}, session=s)
        db.acct.delete_one({"_id": "gone"}, session=s)  # matches nothing: no event
        return "done"

    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as s:
            assert s.with_transaction(transfer) == "done"
            lsid = s.session_id
        db.log.insert_one({"_id": 2, "what": "after"})
        events = drain(stream)
    assert {d["_id"]: d["bal"] for d in db.acct.find()} == {"a": 70, "b": 30}
    assert db.log.find_one({"_id": 1}) == {"_id": 1, "what": "transfer"}
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [("update", "a"), ("update", "b"), ("insert", 1), ("insert", 2)]
    txn_events, after = events[:3], events[3]
    assert len({e["clusterTime"] for e in txn_events}) == 1
    assert after["clusterTime"] > txn_events[0]["clusterTime"]
    assert all(e["lsid"]["id"] == lsid["id"] for e in txn_events)
    assert len({e["txnNumber"] for e in txn_events}) == 1 and txn_events[0]["txnNumber"] >= 1
    assert "lsid" not in after and "txnNumber" not in after
    assert txn_events[0]["updateDescription"]["updatedFields"] == {"bal": 70}
    assert len({str(e["_id"]) for e in events}) == 4  # distinct resume tokens


def test_aborted_transaction_leaves_no_trace(client: pymongo.MongoClient, db: Database) -> None:
    db.c.insert_many([{"_id": 1, "v": "keep"}, {"_id": 2, "v": "keep"}])
    before = list(db.c.find().sort("_id", 1))
    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as s:
            s.start_transaction()
            db.c.insert_one({"_id": 3, "v": "new"}, session=s)
            db.c.update_one({"_id": 1}, {"$set": {"v": "changed"}, "$push": {"l": 1}}, session=s)
            db.c.replace_one({"_id": 2}, {"other": True}, session=s)
            db.c.delete_one({"_id": 1}, session=s)
            db.fresh.insert_one({"_id": "x"}, session=s)
            assert db.c.count_documents({}, session=s) == 2  # the transaction sees its own writes
            s.abort_transaction()
        db.c.insert_one({"_id": "marker"})
        events = drain(stream)
    assert list(db.c.find({"_id": {"$ne": "marker"}}).sort("_id", 1)) == before
    assert [list(d) for d in db.c.find({"_id": {"$in": [1, 2]}}).sort("_id", 1)] == [["_id", "v"], ["_id", "v"]]
    assert db.fresh.find_one() is None
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [("insert", "marker")]


def test_exception_in_callback_aborts(client: pymongo.MongoClient, db: Database) -> None:
    db.c.insert_one({"_id": 1, "n": 0})

    def fails(s: ClientSession) -> None:
        db.c.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=s)
        db.c.insert_one({"_id": 2}, session=s)
        raise RuntimeError("boom")

    with db.c.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as s:
            with pytest.raises(RuntimeError, match="boom"):
                s.with_transaction(fails)
            assert not s.in_transaction
        events = drain(stream)
    assert list(db.c.find()) == [{"_id": 1, "n": 0}]
    assert events == []


def test_server_error_inside_a_transaction_aborts_it(client: pymongo.MongoClient, db: Database) -> None:
    db.c.insert_one({"_id": 1})
    with client.start_session() as s:
        s.start_transaction()
        db.c.insert_one({"_id": 2}, session=s)
        with pytest.raises(DuplicateKeyError):
            db.c.insert_one({"_id": 1}, session=s)
        with pytest.raises(OperationFailure) as info:
            s.commit_transaction()
        assert info.value.code == 251  # NoSuchTransaction: the server already aborted it
        assert info.value.has_error_label("TransientTransactionError")
    assert list(db.c.find()) == [{"_id": 1}]


def test_write_conflict_between_two_open_transactions(client: pymongo.MongoClient, db: Database) -> None:
    db.c.insert_one({"_id": 1, "v": 0})
    with client.start_session() as s1, client.start_session() as s2:
        s1.start_transaction()
        s2.start_transaction()
        db.c.update_one({"_id": 1}, {"$set": {"v": 1}}, session=s1)
        with pytest.raises(OperationFailure) as info:
            db.c.update_one({"_id": 1}, {"$set": {"v": 2}}, session=s2)
        assert info.value.code == 112
        assert info.value.has_error_label("TransientTransactionError")
        s1.commit_transaction()
        with pytest.raises(OperationFailure) as info:
            s2.commit_transaction()
        assert info.value.code == 251
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "v": 1}


def test_with_transaction_retries_a_conflicted_callback(client: pymongo.MongoClient, db: Database) -> None:
    db.c.insert_one({"_id": 1, "v": 0})
    calls = []
    with client.start_session() as blocker, client.start_session() as s:
        blocker.start_transaction()
        db.c.update_one({"_id": 1}, {"$inc": {"v": 10}}, session=blocker)

        def bump(session: ClientSession) -> None:
            calls.append(1)
            if len(calls) == 2:  # the blocker finishes between the attempts
                blocker.commit_transaction()
            db.c.update_one({"_id": 1}, {"$inc": {"v": 1}}, session=session)  # the first attempt conflicts

        s.with_transaction(bump)
    assert len(calls) == 2
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "v": 11}

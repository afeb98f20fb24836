"""Resuming change streams (MongoDB manual, "Resume a Change Stream"; drivers'
change-streams spec): ``resumeAfter``, ``startAfter``, ``startAtOperationTime``
and the ``postBatchResumeToken`` of an idle stream.

The promise checked everywhere: resuming from a token yields exactly the
events after it -- nothing lost, nothing repeated.  Runs against a real
MongoDB 7.0 replica set as well as the sandbox.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure
from pymongo.mongo_client import MongoClient

from tests.helpers import take

AWAIT_MS = 100


def rest(stream: Any) -> list[dict[str, Any]]:
    """Every event already waiting on ``stream`` (stops at the first empty getMore)."""
    out: list[dict[str, Any]] = []
    while stream.alive:
        ev = stream.try_next()
        if ev is None:
            break
        out.append(ev)
    return out


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["_id"]["_data"] for e in events]


def history(client: MongoClient, db: Database) -> list[dict[str, Any]]:
    """A mixed history on ``db.h``: single writes and one transaction in the middle."""
    coll = db.h
    coll.insert_one({"_id": 0})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1})
        coll.update_one({"_id": 1}, {"$set": {"v": 1}})
        with client.start_session() as session:
            with session.start_transaction():
                coll.insert_one({"_id": 2}, session=session)
                coll.insert_one({"_id": 3}, session=session)
                coll.delete_one({"_id": 0}, session=session)
        coll.replace_one({"_id": 2}, {"r": 1})
        coll.delete_one({"_id": 3})
        events = take(stream, 7)
    assert [e["operationType"] for e in events] == ["insert", "update", "insert", "insert", "delete", "replace", "delete"]
    return events


@pytest.mark.parametrize("option", ["resume_after", "start_after"])
def test_resuming_from_any_event_yields_exactly_the_following_events(client: MongoClient, db: Database, option: str) -> None:
    events = history(client, db)
    for k, ev in enumerate(events):
        with db.h.watch(max_await_time_ms=AWAIT_MS, **{option: ev["_id"]}) as stream:
            got = rest(stream)
        assert ids(got) == ids(events[k + 1 :]), f"resumed after event {k}"
        assert [g["documentKey"] for g in got] == [e["documentKey"] for e in events[k + 1 :]]


def test_start_at_operation_time_includes_events_at_that_time(client: MongoClient, db: Database) -> None:
    events = history(client, db)
    for ev in events:
        at = ev["clusterTime"]
        with db.h.watch(start_at_operation_time=at, max_await_time_ms=AWAIT_MS) as stream:
            got = rest(stream)
        assert ids(got) == ids([e for e in events if e["clusterTime"] >= at])


def test_resumed_stream_keeps_following_new_events(client: MongoClient, db: Database) -> None:
    coll = db.follow
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1})
        (first,) = take(stream, 1)
    coll.insert_one({"_id": 2})
    with coll.watch(resume_after=first["_id"], max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 3})
        got = take(stream, 2)
        assert stream.try_next() is None
    assert [e["documentKey"]["_id"] for e in got] == [2, 3]


def test_database_and_cluster_streams_resume_too(client: MongoClient, db: Database) -> None:
    match = [{"$match": {"ns.db": db.name}}]
    with client.watch(match, max_await_time_ms=AWAIT_MS) as stream:
        db.a.insert_one({"_id": 1})
        db.b.insert_one({"_id": 2})
        db.a.drop()
        db.b.insert_one({"_id": 3})
        events = take(stream, 4)
    with client.watch(match, resume_after=events[0]["_id"], max_await_time_ms=AWAIT_MS) as stream:
        assert ids(rest(stream)) == ids(events[1:])
    with db.watch(resume_after=events[1]["_id"], max_await_time_ms=AWAIT_MS) as stream:
        got = rest(stream)
    assert [e["operationType"] for e in got] == ["drop", "insert"]


# -- invalidate ---------------------------------------------------------------------------


def _invalidated(coll: Collection) -> tuple[dict[str, Any], dict[str, Any]]:
    coll.insert_one({"_id": 1})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.drop()
        drop, inv = take(stream, 2)
    assert (drop["operationType"], inv["operationType"]) == ("drop", "invalidate")
    return drop, inv


def test_resume_after_an_invalidate_is_refused(db: Database) -> None:
    _, inv = _invalidated(db.inv)
    with pytest.raises(OperationFailure) as err:
        with db.inv.watch(resume_after=inv["_id"], max_await_time_ms=AWAIT_MS) as stream:
            stream.try_next()
    assert err.value.code == 260  # InvalidResumeToken


def test_start_after_an_invalidate_follows_the_recreated_collection(db: Database) -> None:
    _, inv = _invalidated(db.inv)
    db.inv.insert_one({"_id": "reborn"})
    with db.inv.watch(start_after=inv["_id"], max_await_time_ms=AWAIT_MS) as stream:
        (ev,) = take(stream, 1)
        db.inv.insert_one({"_id": "more"})
        (ev2,) = take(stream, 1)
        assert stream.alive
    assert ev["operationType"] == "insert" and ev["documentKey"] == {"_id": "reborn"}
    assert ev2["documentKey"] == {"_id": "more"}


def test_resume_after_the_drop_event_yields_the_invalidate_again(db: Database) -> None:
    drop, inv = _invalidated(db.inv)
    with db.inv.watch(resume_after=drop["_id"], max_await_time_ms=AWAIT_MS) as stream:
        (again,) = take(stream, 1)
        assert not stream.alive
    assert again["operationType"] == "invalidate"
    assert again["_id"] == inv["_id"]


# -- postBatchResumeToken -------------------------------------------------------------------


def test_idle_stream_token_advances_and_resumes_without_loss_or_repeat(db: Database) -> None:
    coll, noise = db.watched, db.noise
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": "seen"})
        take(stream, 1)
        seen_token = stream.resume_token
        noise.insert_one({"_id": 1})
        noise.insert_one({"_id": 2})
        deadline = time.monotonic() + 15
        idle_token = seen_token
        while idle_token == seen_token:
            assert time.monotonic() < deadline, "postBatchResumeToken never advanced on an idle stream"
            assert stream.try_next() is None
            idle_token = stream.resume_token
        assert idle_token["_data"] > seen_token["_data"]  # tokens sort in stream order
    coll.insert_one({"_id": "after-1"})
    coll.insert_one({"_id": "after-2"})
    for token in (idle_token, seen_token):
        with coll.watch(resume_after=token, max_await_time_ms=AWAIT_MS) as stream:
            got = rest(stream)
        assert [e["documentKey"]["_id"] for e in got] == ["after-1", "after-2"]


def test_token_of_a_fresh_empty_stream_resumes_every_later_event(db: Database) -> None:
    coll = db.fresh
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        assert stream.try_next() is None
        token = stream.resume_token
    assert token is not None and set(token) == {"_data"}
    coll.insert_one({"_id": 1})
    coll.update_one({"_id": 1}, {"$set": {"x": 1}})
    with coll.watch(resume_after=token, max_await_time_ms=AWAIT_MS) as stream:
        got = rest(stream)
    assert [e["operationType"] for e in got] == ["insert", "update"]

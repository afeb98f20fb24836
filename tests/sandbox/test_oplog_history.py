"""The sandbox's bounded oplog: history loss (286), keeping up, and time.

Sandbox-only behaviour: each test runs its own ``Sandbox`` with a tiny oplog
and a :class:`walkit.SimulatedClock`, so it can roll the oplog over in a few
writes and read clusterTime / wallTime off a clock it controls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from walkit import SimulatedClock
from walkit.sandbox import Sandbox

AWAIT_MS = 50
START = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


@contextmanager
def server(oplog_size: int = 100_000, clock: SimulatedClock | None = None) -> Iterator[pymongo.MongoClient]:
    with Sandbox(oplog_size=oplog_size, clock=clock) as box:
        client: pymongo.MongoClient = pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=5000)
        try:
            yield client
        finally:
            client.close()


def take(stream: Any, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(200):
        ev = stream.try_next()
        if ev is not None:
            out.append(ev)
            if len(out) == n:
                return out
    raise AssertionError(f"only {len(out)} of {n} events arrived")


def rest(stream: Any) -> list[dict[str, Any]]:
    out = []
    while stream.alive and (ev := stream.try_next()) is not None:
        out.append(ev)
    return out


def history_lost(fn: Any) -> None:
    with pytest.raises(OperationFailure) as err:
        fn()
    assert err.value.code == 286, err.value
    assert err.value.details["codeName"] == "ChangeStreamHistoryLost"


# -- history that fell off ---------------------------------------------------------------


def test_token_that_fell_off_the_oplog_cannot_be_resumed() -> None:
    with server(oplog_size=5, clock=SimulatedClock(START)) as client:
        coll = client.d.c
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            coll.insert_one({"_id": "first"})
            (first,) = take(stream, 1)
        for i in range(8):
            coll.insert_one({"_id": i})
        history_lost(lambda: coll.watch(resume_after=first["_id"]))
        history_lost(lambda: coll.watch(start_after=first["_id"]))
        history_lost(lambda: coll.watch(start_at_operation_time=first["clusterTime"]))
        history_lost(lambda: client.d.watch(resume_after=first["_id"]))
        history_lost(lambda: client.watch(resume_after=first["_id"]))


def test_resume_at_the_edge_of_the_window() -> None:
    with server(oplog_size=4, clock=SimulatedClock(START)) as client:
        coll = client.d.c
        tokens = []
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            for i in range(10):
                coll.insert_one({"_id": i})
                tokens.append(take(stream, 1)[0]["_id"])
        # Entries 6..9 remain: resuming after 5 needs only them; after 4 needs 5 too.
        with coll.watch(resume_after=tokens[5], max_await_time_ms=AWAIT_MS) as stream:
            assert [e["documentKey"]["_id"] for e in rest(stream)] == [6, 7, 8, 9]
        history_lost(lambda: coll.watch(resume_after=tokens[4]))


def test_get_more_of_a_stream_that_fell_behind_fails_with_286() -> None:
    with server(oplog_size=5, clock=SimulatedClock(START)) as client:
        coll = client.d.c
        with coll.watch(max_await_time_ms=AWAIT_MS, batch_size=2) as stream:
            coll.insert_one({"_id": 0})
            take(stream, 1)  # reads fine while it keeps up
            for i in range(1, 9):
                coll.insert_one({"_id": i})
            history_lost(stream.try_next)
            assert not stream.alive


def test_token_from_before_the_server_started_is_lost() -> None:
    with server(clock=SimulatedClock(START)) as old:
        with old.d.c.watch(max_await_time_ms=AWAIT_MS) as stream:
            old.d.c.insert_one({"_id": 1})
            (ev,) = take(stream, 1)
            assert stream.try_next() is None
            idle_token = stream.resume_token
    with server(clock=SimulatedClock(START + timedelta(hours=1))) as new:
        new.d.c.insert_one({"_id": 1})
        for token in (ev["_id"], idle_token):
            history_lost(lambda token=token: new.d.c.watch(resume_after=token))
        history_lost(lambda: new.d.c.watch(start_at_operation_time=ev["clusterTime"]))


def test_token_of_another_server_instance_in_the_window_is_history_lost() -> None:
    # Same clock, so the token's clusterTime lies inside the new server's window:
    # only the instance id in the token tells them apart (a restart loses the oplog).
    clock = SimulatedClock(START)
    with server(clock=clock) as other:
        with other.d.c.watch(max_await_time_ms=AWAIT_MS) as stream:
            for i in range(3):
                other.d.c.insert_one({"_id": i})
            foreign = take(stream, 3)[-1]["_id"]
    with server(clock=SimulatedClock(START)) as client:
        client.d.c.insert_one({"_id": "mine"})
        history_lost(lambda: client.d.c.watch(resume_after=foreign))


# -- keeping up ---------------------------------------------------------------------------------


def test_a_stream_that_keeps_up_never_loses_history() -> None:
    with server(oplog_size=3, clock=SimulatedClock(START)) as client:
        coll = client.d.create_collection("c")  # (its create is an oplog entry too, before the stream opens)
        seen = []
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            for i in range(60):
                coll.insert_one({"_id": i})
                if i % 3 == 2:  # three writes between polls fill the oplog exactly
                    seen += [e["documentKey"]["_id"] for e in take(stream, 3)]
            assert stream.alive
        assert seen == list(range(60))


def test_an_idle_stream_keeps_up_through_other_collections_writes() -> None:
    with server(oplog_size=3, clock=SimulatedClock(START)) as client:
        watched, noise = client.d.watched, client.d.noise
        with watched.watch(max_await_time_ms=AWAIT_MS) as stream:
            watched.insert_one({"_id": "last"})
            (last,) = take(stream, 1)
            for i in range(30):
                noise.insert_one({"_id": i})
                assert stream.try_next() is None
            idle_token = stream.resume_token
            watched.insert_one({"_id": "next"})
            (nxt,) = take(stream, 1)
        assert nxt["documentKey"] == {"_id": "next"}
        # The idle stream's postBatchResumeToken is still resumable; the last event's token is not.
        with watched.watch(resume_after=idle_token, max_await_time_ms=AWAIT_MS) as resumed:
            assert [e["_id"] for e in rest(resumed)] == [nxt["_id"]]
        history_lost(lambda: watched.watch(resume_after=last["_id"]))


def test_a_transaction_larger_than_the_oplog_is_never_split() -> None:
    with server(oplog_size=3, clock=SimulatedClock(START)) as client:
        coll = client.d.c
        coll.insert_one({"_id": "exists"})
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            with client.start_session() as session:
                with session.start_transaction():
                    for i in range(6):
                        coll.insert_one({"_id": i}, session=session)
            events = take(stream, 6)
        assert [e["documentKey"]["_id"] for e in events] == list(range(6))
        assert len({e["clusterTime"] for e in events}) == 1


# -- time ---------------------------------------------------------------------------------------


def test_simulated_clock_drives_cluster_time_and_wall_time() -> None:
    clock = SimulatedClock(START)
    with server(clock=clock) as client:
        coll = client.d.c
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            coll.insert_one({"_id": 1})
            coll.insert_one({"_id": 2})
            clock.advance(hours=25)
            coll.insert_one({"_id": 3})
            a, b, c = take(stream, 3)
    secs = int(START.timestamp())
    assert a["clusterTime"].time == secs and b["clusterTime"].time == secs
    assert b["clusterTime"].inc == a["clusterTime"].inc + 1
    assert c["clusterTime"] == Timestamp(secs + 25 * 3600, 1)
    assert a["wallTime"] == b["wallTime"] == START.replace(tzinfo=None)
    assert c["wallTime"] == (START + timedelta(hours=25)).replace(tzinfo=None)


def test_cluster_time_never_goes_backwards_with_the_clock() -> None:
    clock = SimulatedClock(START)
    with server(clock=clock) as client:
        coll = client.d.c
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            coll.insert_one({"_id": 1})
            clock.set(START - timedelta(days=1))
            coll.insert_one({"_id": 2})
            a, b = take(stream, 2)
    assert b["clusterTime"] > a["clusterTime"]
    assert b["wallTime"] == (START - timedelta(days=1)).replace(tzinfo=None)  # wallTime is the clock's, as in MongoDB


def test_a_transaction_events_share_the_commit_wall_time() -> None:
    clock = SimulatedClock(START)
    with server(clock=clock) as client:
        coll = client.d.c
        coll.insert_one({"_id": "exists"})
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            with client.start_session() as session:
                with session.start_transaction():
                    coll.insert_one({"_id": 1}, session=session)
                    clock.advance(10)
                    coll.insert_one({"_id": 2}, session=session)
                    clock.advance(10)
            events = take(stream, 2)
    assert {e["wallTime"] for e in events} == {(START + timedelta(seconds=20)).replace(tzinfo=None)}
    assert {e["clusterTime"] for e in events} == {Timestamp(int(START.timestamp()) + 20, 1)}


def test_start_at_operation_time_before_the_server_started_is_lost() -> None:
    with server(clock=SimulatedClock(START)) as client:
        history_lost(lambda: client.d.c.watch(start_at_operation_time=Timestamp(int(START.timestamp()) - 60, 1)))
        with client.d.c.watch(
            start_at_operation_time=Timestamp(int(START.timestamp()) + 1, 0), max_await_time_ms=AWAIT_MS
        ) as stream:
            assert stream.try_next() is None


def test_a_change_stream_that_fails_closes_its_cursor() -> None:
    with Sandbox() as box:
        client: pymongo.MongoClient = pymongo.MongoClient(box.uri)
        with pytest.raises(OperationFailure):
            with client.d.c.watch([{"$match": {"$bogus": 1}}], max_await_time_ms=AWAIT_MS) as stream:
                client.d.c.insert_one({"_id": 1})
                stream.try_next()
        assert box.engine.cursors == {}
        assert box.engine.cursor_seen == {}
        client.close()

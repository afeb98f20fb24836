"""``LinkedSandboxProcess``: a sandbox in a child process on a clock this process
drives, and ``simulate`` on it gives what it gives on an in-process sandbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pymongo

from walkit.lab.simulate import simulate
from walkit.sandbox.linked import LinkedSandboxProcess

START = datetime(2026, 1, 5, tzinfo=UTC)


def test_the_child_runs_at_the_time_the_parent_sets() -> None:
    with LinkedSandboxProcess(START) as box:
        client: pymongo.MongoClient = pymongo.MongoClient(box.uri, tz_aware=True)
        try:
            coll = client.d.c
            with coll.watch() as stream:
                box.clock.set(START + timedelta(hours=3))
                coll.insert_one({"_id": 1})
                box.clock.advance(minutes=5)
                coll.update_one({"_id": 1}, {"$set": {"x": 1}})
                first, second = stream.next(), stream.next()
            assert first["wallTime"] == START + timedelta(hours=3)
            assert first["clusterTime"].time == int((START + timedelta(hours=3)).timestamp())
            assert second["wallTime"] == START + timedelta(hours=3, minutes=5)
            assert box.clock.now() == START + timedelta(hours=3, minutes=5)
        finally:
            client.close()
    assert box.returncode == 0


def test_the_child_stops_when_its_parent_goes() -> None:
    box = LinkedSandboxProcess(START)
    try:
        assert box.proc.stdin is not None
        box.proc.stdin.close()  # what the parent's exit does
        assert box.proc.wait(10) == 0
    finally:
        box.stop()


def test_simulate_gives_the_same_results_in_a_child_process() -> None:
    runs = [simulate(2, 400, seed=4, failure_rate=0.3, sandbox_process=process, verify_restores=1) for process in (False, True)]
    here, child = runs
    assert here.events.equals(child.events)
    assert here.recovery.equals(child.recovery)
    columns = [c for c in here.uploads.columns if c != "bytes"]  # bundle ids are random
    assert here.uploads[columns].equals(child.uploads[columns])
    assert {k: v for k, v in here.summary.items() if k not in ("seconds", "bundle_bytes_total")} == {
        k: v for k, v in child.summary.items() if k not in ("seconds", "bundle_bytes_total")
    }
    assert child.summary["restore_checks_passed"] == child.summary["restore_checks"] == 1


def test_a_deferred_clock_setting_runs_first_on_its_connection() -> None:
    from walkit.lab.workload import DATABASE, Pipe

    with LinkedSandboxProcess(START) as box:
        client: pymongo.MongoClient = pymongo.MongoClient(box.uri, tz_aware=True)
        pipe = Pipe(box.port)
        try:
            later = START + timedelta(hours=2)
            with client[DATABASE].c.watch(max_await_time_ms=100) as stream:
                pipe.send([box.clock.set_deferred(later), {"insert": "c", "documents": [{"_id": 1}]}])
                assert box.clock.now() == later  # this process's clock at once
                pipe.wait()
                event = next((e for e in iter(stream.try_next, None)), None)
                assert event is not None and event["wallTime"] == later  # the child's, before the insert
        finally:
            pipe.close()
            client.close()


def test_a_capped_await_answers_an_idle_change_stream_sooner() -> None:
    import time

    with LinkedSandboxProcess(START, max_await_ms=20) as box:
        client: pymongo.MongoClient = pymongo.MongoClient(box.uri)
        try:
            with client.d.c.watch(max_await_time_ms=2000) as stream:
                began = time.monotonic()
                assert stream.try_next() is None  # an empty batch, well before 2 s
                assert time.monotonic() - began < 1.0
                client.d.c.insert_one({"_id": 1})
                assert stream.next()["documentKey"] == {"_id": 1}
        finally:
            client.close()


def test_the_pipe_answers_in_order_and_raises_on_the_first_error() -> None:
    from pymongo.errors import BulkWriteError, OperationFailure

    from walkit.lab.workload import DATABASE, Pipe
    from walkit.sandbox import Sandbox

    with Sandbox(0) as box:
        pipe = Pipe(box.port)
        try:
            pipe.send([{"insert": "c", "documents": [{"_id": i}]} for i in range(5)])
            pipe.wait()
            pipe.send([{"insert": "c", "documents": [{"_id": 1}]}, {"noSuchCommand": 1}, {"insert": "c", "documents": [{"_id": 9}]}])
            try:
                pipe.wait()
            except BulkWriteError as exc:
                assert exc.details["writeErrors"][0]["code"] == 11000
            else:
                raise AssertionError("the duplicate key was not reported")
            pipe.send([{"noSuchCommand": 1}])
            try:
                pipe.wait()
            except OperationFailure as exc:
                assert exc.code == 59
            else:
                raise AssertionError("the unknown command was not reported")
            pipe.send([{"delete": "c", "deletes": [{"q": {}, "limit": 0}]}])
            pipe.wait()  # still in step: every reply of the failed batch was read
            assert box.engine.coll(DATABASE, "c").count_documents({}) == 0
        finally:
            pipe.close()

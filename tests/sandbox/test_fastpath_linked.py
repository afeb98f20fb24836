"""``LinkedSandboxProcess``: a sandbox in a child process on a clock this process
drives, and ``simulate`` on it gives what it gives on an in-process sandbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pymongo

from walkit.sandbox.linked import LinkedSandboxProcess
from walkit.simulate import simulate

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

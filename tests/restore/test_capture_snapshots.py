"""Capture on a fresh home begins with a snapshot, so every instant after it started is restorable."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pymongo
from bson.raw_bson import RawBSONDocument

from tests.helpers import capturing
from walkit import Target, list_snapshots, state_at, take_snapshot
from walkit.home import Home
from walkit.wal.capture import ChangeCapture
from walkit.wal.format import read_records

ROOT = Path(__file__).resolve().parents[2]


def _wait(predicate: object, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_fresh_home_begins_with_a_snapshot(mongo_uri: str, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with pymongo.MongoClient(mongo_uri) as client:
        db = client["initial_snap"]
        db.items.insert_many([{"_id": i, "before": True} for i in range(5)])  # there before capture
        with capturing(mongo_uri, home.path, database=db.name, initial_snapshot=True) as cap:
            _wait(lambda: cap.stats.snapshots, "no initial snapshot")
            db.items.insert_one({"_id": 99})
            db.items.delete_one({"_id": 0})
            _wait(lambda: len(list(read_records(home.wal_dir))) == 2, "capture did not catch up")
    (snap,) = list_snapshots(home)
    assert snap.id == cap.stats.snapshots[0] and snap.database == "initial_snap" and not cap.stats.snapshot_errors
    last = list(read_records(home.wal_dir))[-1]
    ids = sorted(RawBSONDocument(raw)["_id"] for raw in state_at(home, Target("seq", last.seq))["initial_snap.items"])
    assert ids == [1, 2, 3, 4, 99]  # documents from before capture, changed by the WAL


def test_no_initial_snapshot_when_asked_or_when_the_home_is_not_fresh(mongo_uri: str, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with capturing(mongo_uri, home.path, database="no_initial", initial_snapshot=False) as cap:
        time.sleep(0.3)
    assert not cap.stats.snapshots and list_snapshots(home) == []
    again = ChangeCapture(mongo_uri, home, database="no_initial", initial_snapshot=True)  # resumes: not fresh
    ready = threading.Event()
    again.on_ready = lambda _cap: ready.set()
    thread = threading.Thread(target=again.run, daemon=True)
    thread.start()
    assert ready.wait(20)
    time.sleep(0.5)
    again.stop()
    thread.join(20)
    assert not again.stats.snapshots and list_snapshots(home) == []
    help_text = subprocess.run([sys.executable, "-m", "walkit", "capture", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "--no-initial-snapshot" in help_text


def test_capture_on_a_fresh_home_starts_from_its_snapshot(mongo_uri: str, tmp_path: Path) -> None:
    """A snapshot taken before capture ran: capture starts at the scan's start, so nothing between is missed."""
    home = Home(tmp_path / "home")
    with pymongo.MongoClient(mongo_uri) as client:
        db = client["from_snap"]
        db.items.insert_many([{"_id": i} for i in range(3)])
        snap = take_snapshot(mongo_uri, home, database=db.name, progress=False)
        db.items.insert_one({"_id": 10})  # while no capture runs
        db.items.update_one({"_id": 1}, {"$set": {"late": True}})
        with capturing(mongo_uri, home.path, database=db.name, initial_snapshot=True) as cap:
            db.items.delete_one({"_id": 2})
            _wait(lambda: [r.event()["operationType"] for r in read_records(home.wal_dir)][-1:] == ["delete"], "capture did not catch up")
        expected = sorted(d["_id"] for d in db.items.find())
    assert not cap.stats.snapshots, "a snapshot was there already: no initial one"
    recs = list(read_records(home.wal_dir))
    # from the change at the scan's start on (the snapshot holds it too: replay is idempotent),
    # including the two made while no capture ran
    ops = [r.event()["operationType"] for r in recs]
    assert ops[-3:] == ["insert", "update", "delete"] and ops[:-3] in ([], ["insert"]), ops
    assert recs[0].get("ct") >= snap.start
    first = next(read_records(home.wal_dir, kinds=("c",)))
    assert first.get("ct") == snap.start and first.get("tok") is None
    last = list(read_records(home.wal_dir))[-1]
    got = state_at(home, Target("seq", last.seq))["from_snap.items"]
    assert sorted(RawBSONDocument(raw)["_id"] for raw in got) == expected == [0, 1, 10]

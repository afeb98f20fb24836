"""Capture keeps schema changes (MongoDB 6.0+ ``showExpandedEvents``) in the WAL, in order; on an
older server it says so once, and restores take options and indexes from the snapshots.

MongoDB manual, "Change Events" (create, createIndexes, dropIndexes, modify) and
"$changeStream" (showExpandedEvents, new in 6.0).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.helpers import capturing, unique
from walkit import Target, metadata_at, state_at, take_snapshot
from walkit.home import Home
from walkit.wal import capture as capture_module
from walkit.wal.format import read_records


def _ours(home: Path, db: str) -> list[dict[str, Any]]:
    return [ev for ev in (r.event() for r in read_records(Home(home).wal_dir)) if (ev.get("ns") or {}).get("db") == db]


def _caught_up(home: Path, db: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while len(events := _ours(home, db)) < n:
        assert time.monotonic() < deadline, f"capture wrote {len(events)} of {n} events"
        time.sleep(0.05)
    return events


def test_schema_changes_are_in_the_wal_in_order_with_the_collection_uuid(mongo_uri: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri)
    db = client[unique("ddl")]
    try:
        with capturing(mongo_uri, home, database=db.name):
            db.create_collection("c", capped=True, size=1 << 20, max=50)
            db.c.insert_one({"_id": 1, "a": 1})
            db.c.create_index([("a", -1)], name="a_desc", unique=True)
            db.command("collMod", "c", validator={"a": {"$type": "int"}}, validationLevel="moderate")
            db.c.drop_index("a_desc")
            db.c.insert_one({"_id": 2, "a": 2})
            events = _caught_up(home, db.name, 6)
        uuid = next(db.list_collections(filter={"name": "c"}))["info"]["uuid"]
    finally:
        client.drop_database(db.name)
        client.close()
    ops = [ev["operationType"] for ev in events]
    assert ops == ["create", "insert", "createIndexes", "modify", "dropIndexes", "insert"], ops
    create = events[0]["operationDescription"]
    assert (create["capped"], create["size"], create["max"]) == (True, 1 << 20, 50)
    assert [ix["name"] for ix in events[2]["operationDescription"]["indexes"]] == ["a_desc"]
    assert events[3]["operationDescription"]["validationLevel"] == "moderate"
    assert all(ev["collectionUUID"] == uuid for ev in events), "every event names its collection's uuid"


def test_an_old_server_is_said_once_and_restores_take_metadata_from_the_snapshots(
    mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = capture_module.require_replica_set
    monkeypatch.setattr(capture_module, "require_replica_set", lambda client, uri=None: dict(real(client, uri), maxWireVersion=13))  # 5.0
    caplog.set_level(logging.WARNING, logger="walkit.capture")
    home = tmp_path / "home"
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri)
    db = client[unique("old")]
    try:
        db.plain.insert_one({"_id": 0})
        take_snapshot(mongo_uri, Home(home), database=db.name, progress=False)
        with capturing(mongo_uri, home, database=db.name):
            db.create_collection("late", collation={"locale": "fr", "strength": 2})
            db.late.create_index("k", name="k_1", sparse=True)
            db.late.insert_one({"_id": 1, "k": "é"})
            db.plain.create_index("x", name="x_1")
            db.late.insert_one({"_id": 2, "k": "e"})
            events = _caught_up(home, db.name, 3)  # plain's insert (capture starts at the snapshot's start), late's two
            time.sleep(0.3)  # anything else (a DDL event) would be written by now
            events = _ours(home, db.name)
            at_insert = events[1]  # the target: before the next snapshot, so restored from the first one
            take_snapshot(mongo_uri, Home(home), database=db.name, progress=False)
    finally:
        client.drop_database(db.name)
        client.close()
    assert [(ev["operationType"], ev["ns"]["coll"]) for ev in events] == [("insert", "plain"), ("insert", "late"), ("insert", "late")], "no DDL before 6.0"
    said = [r for r in caplog.records if "reports no schema changes" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    seq = [r.seq for r in read_records(Home(home).wal_dir) if r.kind == "e" and r.event()["_id"] == at_insert["_id"]][0]
    meta = metadata_at(Home(home), Target("seq", seq), database=db.name)
    # the collection made after the first snapshot: its metadata from the next snapshot that holds it
    assert meta[f"{db.name}.late"]["options"]["collation"]["locale"] == "fr"
    assert [ix["name"] for ix in meta[f"{db.name}.late"]["indexes"]] == ["_id_", "k_1"]
    # one the first snapshot holds: as that snapshot had it (the later index is not known at this instant)
    assert [ix["name"] for ix in meta[f"{db.name}.plain"]["indexes"]] == ["_id_"]
    assert sorted(state_at(Home(home), Target("seq", seq), database=db.name)) == [f"{db.name}.late", f"{db.name}.plain"]

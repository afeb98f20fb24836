"""The restorable window begins where a snapshot is consistent, even before capture's first record."""

from __future__ import annotations

import time
from pathlib import Path

import pymongo

from tests.helpers import capturing, unique
from walkit.home import Home
from walkit.restore.local import restore, state_at
from walkit.restore.plan import Target
from walkit.restore.snapshot import take_snapshot
from walkit.wal.format import read_records


def test_the_instant_a_snapshot_is_consistent_from_restores_when_capture_started_after_it(mongo_uri: str, tmp_path: Path) -> None:
    db_name = unique("edge")
    home = tmp_path / "home"
    with pymongo.MongoClient(mongo_uri) as client:
        client[db_name].items.insert_many([{"_id": i, "v": i} for i in range(5)])
        snap = take_snapshot(mongo_uri, Home(home), database=db_name, progress=False)  # capture will start at this scan's start
        time.sleep(0.3)  # so that capture's first record is written measurably after the snapshot is consistent
        with capturing(mongo_uri, home, database=db_name):
            client[db_name].items.insert_one({"_id": 99})
            deadline = time.monotonic() + 20
            while not any(rec.event().get("documentKey", {}).get("_id") == 99 for rec in read_records(Home(home).wal_dir, kinds=("e",))):
                assert time.monotonic() < deadline, "capture did not record the insert"
                time.sleep(0.02)
        client.drop_database(db_name)
    first_record = min(rec.wt for rec in read_records(Home(home).wal_dir, kinds=("e", "c")) if rec.kind == "c")
    assert snap.end_wall < first_record, "the edge is not exercised: capture began before the snapshot was consistent"
    # the window starts at the snapshot's consistency, which is before capture's first checkpoint
    state = state_at(Home(home), Target("at", snap.end_wall), database=db_name)
    assert len(state[f"{db_name}.items"]) == 5
    last = max(rec.seq for rec in read_records(Home(home).wal_dir))
    after = restore(Home(home), Target("seq", last), as_dataframes=True, database=db_name).frames
    assert sorted(after[f"{db_name}.items"]["_id"]) == [0, 1, 2, 3, 4, 99]

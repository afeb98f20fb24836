"""The original design's createWALWriter keeps working as create_wal_writer."""

from __future__ import annotations

import time
from pathlib import Path

import pymongo
import pytest

from walkit import ConfigError, create_wal_writer, read_records


def _events(home: Path) -> list[str]:
    return [rec.get("ev")["operationType"] for rec in read_records(home / "wal") if rec.kind == "e"]


def test_create_wal_writer_captures_the_chosen_collections(sandbox_uri: str, tmp_path: Path) -> None:
    writer = create_wal_writer(database="order_db", collections=["orders"], exclude_collections=None, uri=sandbox_uri, home=tmp_path).start()
    client: pymongo.MongoClient = pymongo.MongoClient(sandbox_uri)
    deadline = time.monotonic() + 10
    # The stream is open once its starting position is saved as a checkpoint record.
    while time.monotonic() < deadline and not (
        (tmp_path / "wal").exists() and any(True for _ in read_records(tmp_path / "wal", kinds=("c",)))
    ):
        time.sleep(0.05)
    client.order_db.orders.insert_one({"_id": 1})  # orders does not exist yet: a create event comes first (MongoDB 6.0+)
    client.order_db.logs.insert_one({"_id": 1})
    client.order_db.orders.delete_one({"_id": 1})
    while writer.capture.stats.changes < 2 and time.monotonic() < deadline:  # both document changes captured
        time.sleep(0.05)
    stats = writer.stop()
    assert not writer.running
    assert (stats.events, stats.changes) == (3, 2)
    assert _events(tmp_path) == ["create", "insert", "delete"]
    create = next(rec.get("ev") for rec in read_records(tmp_path / "wal") if rec.kind == "e")
    assert dict(create["ns"]) == {"db": "order_db", "coll": "orders"}
    assert create["collectionUUID"] == next(client.order_db.list_collections(filter={"name": "orders"}))["info"]["uuid"]
    client.close()


def test_create_wal_writer_needs_a_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONGODB_URI", raising=False)
    with pytest.raises(ConfigError):
        create_wal_writer(database="order_db")


def test_stop_reraises_what_stopped_capture(tmp_path: Path) -> None:
    from tests.conftest import free_port

    writer = create_wal_writer(uri=f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=200&directConnection=true", home=tmp_path).start()
    time.sleep(1.0)
    with pytest.raises(pymongo.errors.ServerSelectionTimeoutError):
        writer.stop()

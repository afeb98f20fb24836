"""Capture keeps every change exactly: BSON types byte-for-byte, and the right shapes.

Capture runs in a thread (``ChangeCapture.run``) against the ``mongo_uri``
server, one unique database per test; each test waits (bounded) until the
expected number of events is in the WAL, stops capture, and reads the WAL
back with ``read_records``:

- the first write into a collection that does not exist yet comes after
  the ``create`` event of MongoDB 6.0+ (``showExpandedEvents``), which names
  the collection and its ``collectionUUID``;
- a document holding every BSON type comes back as the very bytes that
  ``bson.encode`` makes of what was inserted;
- nested updates (``$set`` on dotted paths, ``$unset``, ``$push``) carry an
  ``updateDescription`` that, applied to the document before, gives the
  document the server has after; replace, delete, rename, drop and
  dropDatabase (+ invalidate) have their documented shapes, in order;
- the events of a multi-document transaction are consecutive and share
  ``clusterTime``, ``lsid`` and ``txnNumber``.
"""

from __future__ import annotations

import struct
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson import DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp, json_util
from bson.binary import Binary, BinaryVectorDtype
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument

from tests.helpers import apply_update_description, capturing
from walkit.wal.events import ChangeEvent
from walkit.wal.format import Record, read_records, verify

#: Decoding that keeps every type as it was inserted (dates outside datetime's range too).
KEEP = CodecOptions(tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
WAIT = 20.0


# -- helpers -------------------------------------------------------------------------


def wait_records(home: Path, count: int) -> list[Record]:
    """The WAL's event records once there are at least ``count`` (bounded wait)."""
    deadline = time.monotonic() + WAIT
    while True:
        records = list(read_records(home / "wal"))
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, f"only {len(records)} of {count} events reached the WAL: {[r.get('ev')['operationType'] for r in records]}"
        time.sleep(0.02)


def final_records(home: Path, count: int) -> list[Record]:
    """After capture stopped: exactly ``count`` events, seq 1..count, WAL intact."""
    records = list(read_records(home / "wal"))
    ops = [r.get("ev")["operationType"] for r in records]
    assert len(records) == count, ops
    assert [r.seq for r in records] == list(range(1, count + 1))
    report = verify(home / "wal")
    assert report.ok, report.problems
    return records


def ev(rec: Record) -> RawBSONDocument:
    return rec.get("ev")


def collection_uuid(db: pymongo.database.Database, coll: str) -> Any:
    return next(db.list_collections(filter={"name": coll}))["info"]["uuid"]


def assert_create(rec: Record, db: str, coll: str, uuid: Any = None) -> None:
    """``rec`` is the ``create`` event of ``db.coll`` (a collection made implicitly: just the _id index)."""
    event = ev(rec)
    assert event["operationType"] == "create"
    assert dict(event["ns"]) == {"db": db, "coll": coll}
    assert event["collectionUUID"] is not None
    if uuid is not None:
        assert event["collectionUUID"] == uuid
    assert dict(event["operationDescription"]["idIndex"]["key"]) == {"_id": 1}
    assert "documentKey" not in event and "fullDocument" not in event


def every_type() -> dict[str, Any]:
    """One document with every BSON type, in awkward variants."""
    payload = b"\x00\x01\xfe\xff"
    binaries = {
        "generic": Binary(payload, 0),
        "function": Binary(payload, 1),
        "old": Binary(struct.pack("<i", len(payload)) + payload, 2),
        "uuid_old": Binary(uuid.uuid4().bytes, 3),
        "uuid": Binary(uuid.uuid4().bytes, 4),
        "md5": Binary(bytes(range(16)), 5),
        "encrypted": Binary(payload, 6),
        "column": Binary(payload, 7),
        "sensitive": Binary(payload, 8),
        "vector": Binary.from_vector([1.5, -2.0], BinaryVectorDtype.FLOAT32),
        "user": Binary(payload, 128),
        "user_max": Binary(payload, 255),
        "empty": Binary(b"", 0),
    }
    return {
        "_id": ObjectId(),
        "oid": ObjectId("000000000000000000000000"),
        "dec": Decimal128("-1.234567890123456789012345678901234E-6000"),
        "dec_nan": Decimal128("NaN"),
        "dec_negzero": Decimal128("-0.00"),
        "int64": Int64(-(2**63)),
        "int64_small": Int64(1),
        "int32": -(2**31),
        "double": 0.1,
        "nan": float("nan"),
        "negzero": -0.0,
        "inf": float("inf"),
        "ninf": float("-inf"),
        "before_1970": datetime(1901, 12, 13, 20, 45, 52, 123000, tzinfo=UTC),
        "after_2038": datetime(2262, 4, 11, 23, 47, 16, 854000, tzinfo=UTC),
        "beyond_python": DatetimeMS(2**62),
        "before_year_1": DatetimeMS(-(2**62)),
        "binaries": binaries,
        "regex": Regex("^a.b$", "imsux"),
        "regex_plain": Regex("x", ""),
        "code": Code("function () { return x + y; }", {"x": 1, "y": {"z": [2]}}),
        "code_plain": Code("1 + 1"),
        "ts": Timestamp(2**32 - 1, 7),
        "min": MinKey(),
        "max": MaxKey(),
        "ref": DBRef("other", ObjectId(), "elsewhere", extra=Int64(5)),
        "ref_plain": DBRef("other", 7),
        "arrays": [[], [[]], [1, "two", 3.0, None, [{"deep": [{}]}]], {}],
        "empty_doc": {},
        "empty_array": [],
        "nested": {"a": {"b": {"c": {"d": {"e": [1, {"f": MinKey()}]}}}}},
        "ключ": {"値": "ünïcødé ✓", "emoji 🙂": "🙂", "": "empty key"},
        "none": None,
        "yes": True,
        "no": False,
        "string": "a\x00b",  # an embedded NUL survives as a BSON string
        "long_string": "x" * 5000,
    }


# -- the tests -----------------------------------------------------------------------


def test_every_bson_type_round_trips_byte_for_byte(mongo_uri: str, db: pymongo.database.Database, tmp_path: Path) -> None:
    doc = every_type()
    expected = bson.encode(doc)
    with capturing(mongo_uri, tmp_path, database=db.name):
        db.things.insert_one(doc)  # things does not exist yet: create, then insert
        records = wait_records(tmp_path, 2)
    create, rec = final_records(tmp_path, 2)
    assert records[1].seq == rec.seq == 2
    assert_create(create, db.name, "things", collection_uuid(db, "things"))
    event = ev(rec)
    assert event["collectionUUID"] == ev(create)["collectionUUID"]
    assert event["operationType"] == "insert"
    assert dict(event["ns"]) == {"db": db.name, "coll": "things"}
    assert event["documentKey"]["_id"] == doc["_id"]
    full = event["fullDocument"]
    assert isinstance(full, RawBSONDocument)
    assert bytes(full.raw) == expected  # byte for byte, key order included
    # and the decoded view keeps every type (no lossy conversion on the way back)
    back = bson.decode(bytes(full.raw), KEEP)
    assert back["int64"] == doc["int64"] and type(back["int64"]) is Int64
    assert type(back["int32"]) is int
    assert struct.pack("<d", back["negzero"]) == struct.pack("<d", -0.0)
    assert back["nan"] != back["nan"]
    assert back["before_1970"] == doc["before_1970"] and back["after_2038"] == doc["after_2038"]
    assert back["beyond_python"] == doc["beyond_python"] and back["before_year_1"] == doc["before_year_1"]
    subtypes = {k: (getattr(v, "subtype", 0), bytes(v)) for k, v in back["binaries"].items()}  # subtype 0 decodes as bytes
    assert subtypes == {k: (v.subtype, bytes(v)) for k, v in doc["binaries"].items()}
    assert (back["regex"].pattern, back["regex"].flags) == (doc["regex"].pattern, doc["regex"].flags)
    assert back["code"] == doc["code"] and back["code"].scope == doc["code"].scope
    assert back["ref"] == doc["ref"]
    # ChangeEvent hands out the same bytes, not a re-encoding
    change = ChangeEvent.from_record(rec)
    assert change.operation == "insert" and change.seq == 2
    assert bytes(change.full_document.raw) == expected
    assert bytes(change.raw.raw) == bytes(event.raw)
    # `walkit wal show --json` (canonical Extended JSON) loses nothing either
    read_json = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
    shown = json_util.loads(change.to_json(), json_options=read_json)
    assert bson.encode(shown["fullDocument"]) == expected
    assert shown["seq"] == 2 and shown["op"] == "insert" and shown["documentKey"] == {"_id": doc["_id"]}
    assert change.describe().split()[:1] == ["2"] and "things" in change.describe()
    # and the server holds what we inserted (so the comparison above is the server's view too)
    stored = db.with_options(codec_options=CodecOptions(document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO)).things.find_one({"_id": doc["_id"]})
    assert bytes(stored.raw) == expected


def test_updates_replace_and_delete_have_the_documented_shapes(mongo_uri: str, db: pymongo.database.Database, tmp_path: Path) -> None:
    coll = db.get_collection("orders", codec_options=KEEP)
    start = {"_id": 1, "status": "new", "lines": [{"sku": "a", "qty": 1}], "meta": {"tags": ["x"], "by": "ann", "n": Int64(1)}, "gone": True}
    updates = [
        {"$set": {"meta.by": "bob", "lines.0.qty": 3, "meta.deep.er": Decimal128("1.10")}},
        {"$unset": {"gone": "", "meta.n": ""}},
        {"$push": {"lines": {"sku": "b", "qty": 2}, "meta.tags": {"$each": ["y", "z"]}}},
        {"$set": {"status": "paid", "paidAt": datetime(1969, 7, 20, 20, 17, tzinfo=UTC)}, "$inc": {"meta.count": Int64(2)}},
    ]
    replacement = {"_id": 1, "status": "replaced", "ts": Timestamp(5, 6)}
    states = []
    with capturing(mongo_uri, tmp_path, database=db.name):
        coll.insert_one(start)  # orders does not exist yet: a create event comes first
        for update in updates:
            coll.update_one({"_id": 1}, update)
            states.append(coll.find_one({"_id": 1}))
        coll.replace_one({"_id": 1}, replacement)
        coll.delete_one({"_id": 1})
        wait_records(tmp_path, 8)
    create, *records = final_records(tmp_path, 8)
    uuid = collection_uuid(db, "orders")
    assert_create(create, db.name, "orders", uuid)
    assert [ev(r)["operationType"] for r in records] == ["insert", "update", "update", "update", "update", "replace", "delete"]
    assert all(ev(r)["collectionUUID"] == uuid for r in records)
    assert bytes(ev(records[0])["fullDocument"].raw) == bson.encode(start)

    # each updateDescription, applied in order to the document before it, gives the server's document after it
    current = bson.decode(bson.encode(start), KEEP)
    for rec, after in zip(records[1:5], states, strict=True):
        event = ev(rec)
        assert dict(event["documentKey"]) == {"_id": 1}
        desc = bson.decode(bytes(event["updateDescription"].raw), KEEP)
        assert set(desc) >= {"updatedFields", "removedFields"}
        assert not any(k.startswith("$") for k in desc["updatedFields"]), "values, not operators"
        current = apply_update_description(current, desc)
        assert current == after
    removed = bson.decode(bytes(ev(records[2])["updateDescription"].raw), KEEP)["removedFields"]
    assert sorted(removed) == ["gone", "meta.n"]
    assert any(k == "meta.by" for k in bson.decode(bytes(ev(records[1])["updateDescription"].raw))["updatedFields"])

    replace = ev(records[5])
    assert "updateDescription" not in replace
    assert bytes(replace["fullDocument"].raw) == bson.encode(replacement)
    delete = ev(records[6])
    assert dict(delete["documentKey"]) == {"_id": 1}
    assert delete.get("fullDocument") is None and "updateDescription" not in delete
    assert [ChangeEvent.from_record(r).operation for r in records] == [ev(r)["operationType"] for r in records]


def test_rename_drop_and_drop_database_in_order(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    db = client[name]
    try:
        with capturing(mongo_uri, tmp_path, database=name):
            db.a.insert_one({"_id": "a1"})
            db.b.insert_one({"_id": "b1"})
            db.a.rename("a2")
            db.b.drop()
            db.c.insert_one({"_id": "c1"})
            uuids = {coll: collection_uuid(db, coll) for coll in ("a2", "c")}
            client.drop_database(name)
            wait_records(tmp_path, 12)
            # a database stream ends with invalidate; capture starts after it and goes on
            db.d.insert_one({"_id": "after"})
            wait_records(tmp_path, 14)
        records = final_records(tmp_path, 14)
        uuids["d"] = collection_uuid(db, "d")
    finally:
        client.drop_database(name)
    ops = [(ev(r)["operationType"], (ev(r).get("ns") or {}).get("coll")) for r in records]
    # each first write into a collection that does not exist yet follows its create event (MongoDB 6.0+)
    assert ops[:8] == [("create", "a"), ("insert", "a"), ("create", "b"), ("insert", "b"), ("rename", "a"), ("drop", "b"), ("create", "c"), ("insert", "c")]
    # dropDatabase: a drop per collection (in the server's order), then dropDatabase, then invalidate
    assert sorted(ops[8:10]) == [("drop", "a2"), ("drop", "c")]
    assert ops[10:] == [("dropDatabase", None), ("invalidate", None), ("create", "d"), ("insert", "d")]
    for index, coll in ((0, "a"), (2, "b"), (6, "c"), (12, "d")):
        assert_create(records[index], name, coll)
    # collectionUUID: a rename keeps it; every event about a collection carries its own
    uuid_of = {ev(r)["operationType"] + ":" + ev(r)["ns"]["coll"]: ev(r)["collectionUUID"] for r in records if "coll" in (ev(r).get("ns") or {})}
    assert uuid_of["create:a"] == uuid_of["insert:a"] == uuid_of["rename:a"] == uuid_of["drop:a2"] == uuids["a2"]
    assert uuid_of["create:c"] == uuid_of["insert:c"] == uuid_of["drop:c"] == uuids["c"]
    assert uuid_of["create:d"] == uuid_of["insert:d"] == uuids["d"]
    assert uuid_of["create:b"] == uuid_of["insert:b"] == uuid_of["drop:b"]
    assert len({uuid_of["create:a"], uuid_of["create:b"], uuid_of["create:c"], uuid_of["create:d"]}) == 4
    rename = ev(records[4])
    assert dict(rename["ns"]) == {"db": name, "coll": "a"}
    assert dict(rename["to"]) == {"db": name, "coll": "a2"}
    assert dict(rename["operationDescription"]["to"]) == {"db": name, "coll": "a2"}
    assert ChangeEvent.from_record(records[4]).to["coll"] == "a2"
    assert dict(ev(records[10])["ns"]) == {"db": name}
    assert "ns" not in ev(records[11])
    for index in (4, 5, 8, 9, 10, 11):
        assert "documentKey" not in ev(records[index]) and "fullDocument" not in ev(records[index])
    assert bytes(ev(records[13])["fullDocument"].raw) == bson.encode({"_id": "after"})
    cluster_times = [rec.get("ct") for rec in records]
    assert cluster_times == sorted(cluster_times)
    assert cluster_times[10] == cluster_times[11]  # the invalidate belongs to the dropDatabase


def test_transaction_events_share_cluster_time_and_txn_number(mongo_uri: str, client: pymongo.MongoClient, db: pymongo.database.Database, tmp_path: Path) -> None:
    db.create_collection("accounts")
    db.accounts.insert_many([{"_id": "alice", "balance": 100}, {"_id": "bob", "balance": 0}])
    with capturing(mongo_uri, tmp_path, database=db.name):
        db.accounts.insert_one({"_id": "before"})
        with client.start_session() as session:
            with session.start_transaction():
                db.accounts.update_one({"_id": "alice"}, {"$inc": {"balance": -40}}, session=session)
                db.accounts.update_one({"_id": "bob"}, {"$inc": {"balance": 40}}, session=session)
                db.accounts.insert_one({"_id": "audit", "amount": Decimal128("40.00")}, session=session)
                db.accounts.delete_one({"_id": "before"}, session=session)
        db.accounts.insert_one({"_id": "after"})
        wait_records(tmp_path, 6)
    records = final_records(tmp_path, 6)
    events = [ev(r) for r in records]
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [
        ("insert", "before"), ("update", "alice"), ("update", "bob"), ("insert", "audit"), ("delete", "before"), ("insert", "after"),
    ]
    txn = events[1:5]
    assert len({e["clusterTime"] for e in txn}) == 1
    assert len({int(e["txnNumber"]) for e in txn}) == 1
    assert len({bytes(e["lsid"].raw) for e in txn}) == 1
    assert all(rec.get("ct") == txn[0]["clusterTime"] for rec in records[1:5])
    for outside in (events[0], events[5]):
        assert "txnNumber" not in outside and "lsid" not in outside
        assert outside["clusterTime"] != txn[0]["clusterTime"]
    assert events[0]["clusterTime"] < txn[0]["clusterTime"] < events[5]["clusterTime"]
    assert [ChangeEvent.from_record(r).txn_number for r in records] == [None, *[int(txn[0]["txnNumber"])] * 4, None]
    assert bytes(events[3]["fullDocument"].raw) == bson.encode({"_id": "audit", "amount": Decimal128("40.00")})


@pytest.mark.parametrize("value", [float("nan"), -0.0, Decimal128("-0E+6111"), DatetimeMS(-1), Int64(2**63 - 1)], ids=["nan", "negzero", "dec-negzero", "ms-before-epoch", "int64-max"])
def test_awkward_values_as_document_keys(mongo_uri: str, db: pymongo.database.Database, tmp_path: Path, value: Any) -> None:
    """_id values that compare equal to others or are hard to decode keep their exact bytes in documentKey."""
    doc = {"_id": {"k": value}, "v": 1}
    with capturing(mongo_uri, tmp_path, database=db.name):
        db.keys.insert_one(doc)  # keys does not exist yet: create, then insert
        db.keys.delete_one({"v": 1})  # (the sandbox does not match NaN == NaN in queries as MongoDB does)
        wait_records(tmp_path, 3)
    create, insert, delete = final_records(tmp_path, 3)
    assert_create(create, db.name, "keys", collection_uuid(db, "keys"))
    assert bytes(ev(insert)["fullDocument"].raw) == bson.encode(doc)
    assert bytes(ev(delete)["documentKey"].raw) == bson.encode({"_id": doc["_id"]})

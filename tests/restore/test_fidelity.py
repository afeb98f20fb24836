"""Fidelity: every restore path gives back exactly what the live database held at the same instant.

One module-scoped scenario: a fresh database with a realistic corpus (collections with every
option kind, indexes of every kind, odd and very long names, documents from ``{_id}`` to 15 MiB,
every BSON type, deep nesting, dotted and ``$``-prefixed field names inside subdocuments), one
snapshot, then DDL and writes in mixed order with capture running.  After each step a checkpoint
records the WAL's last seq and the live state (documents as raw BSON in ``_id`` order, options
from listCollections, index specs from listIndexes).  Each checkpoint is then restored through
``state_at``, ``restore(to_dump=...)``, ``restore(as_dataframes=True)``,
``restore(to_uri=..., to_db=...)`` and the Explorer, and (after one upload) two of them from the
off-site copy; documents must be equal byte for byte, options and indexes equal (index ``key``
order included).  A target that refuses an option or an index must fail with RestoreError naming
the collection and what was refused, leaving nothing behind.  Last, an update that adds fields
(two operators; an aggregation pipeline) must come back into MongoDB with the live field order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson import json_util
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo.database import Database
from pymongo.errors import OperationFailure

from tests.helpers import capturing, unique
from walkit import RestoreError, SnapshotInfo, Target, restore, restore_from_external, state_at, take_snapshot
from walkit.home import Home
from walkit.lab.widgets import Explorer
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import Policy, quota_dir, upload
from walkit.providers import FileSystemBackupProvider
from walkit.restore.dumpnames import dump_stem
from walkit.wal.format import read_records

RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
DOC = CodecOptions(tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
MB = 1 << 20
FAR = datetime(2100, 1, 1, tzinfo=UTC)  # TTL dates that never expire, even on a real server
LONG_NAME = "%" * 60 + "L" * 100  # escaped: 280 bytes, so mongodump cuts it and appends a SHA-1
ODD_NAMES = ["50%off", "a b?c,d;e", "&+:=@ok", "naïve-é", LONG_NAME]


def blob(size: int, seed: int = 0) -> bytes:
    pattern = bytes((i * 7 + seed) % 256 for i in range(256))
    return (pattern * (size // 256 + 1))[:size]


# -- the live state ------------------------------------------------------------------------------


@dataclass
class Coll:
    """One collection as the server lists it."""

    docs: list[bytes]
    options: dict[str, Any]
    indexes: dict[str, dict[str, Any]]
    uuid: str


State = dict[str, Coll]


def id_order(raw: bytes) -> bytes:
    return bson.encode({"_id": RawBSONDocument(raw, RAW)["_id"]})


def index_spec(spec: Any) -> dict[str, Any]:
    out = {k: v for k, v in dict(spec).items() if k != "ns"}
    out["key"] = dict(out["key"])
    return out


def plain_options(options: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(options or {}).items() if k != "idIndex"}


def read_state(db: Database) -> State:
    """Every collection of ``db``: documents (raw, ``_id`` order), options, index specs by name, uuid (hex)."""
    out: State = {}
    for info in db.list_collections():
        name = info["name"]
        if name.startswith("system."):
            continue
        docs = sorted((d.raw for d in db.get_collection(name, codec_options=RAW).find({})), key=id_order)
        indexes = {str(ix["name"]): index_spec(ix) for ix in db[name].list_indexes()}
        raw_uuid = (info.get("info") or {}).get("uuid")
        out[name] = Coll(docs, plain_options(info.get("options")), indexes, bytes(raw_uuid).hex() if raw_uuid is not None else "")
    return out


# -- comparisons ---------------------------------------------------------------------------------


def _ids(docs: list[bytes]) -> list[Any]:
    return [RawBSONDocument(raw, RAW)["_id"] for raw in docs]


def same_documents(where: str, name: str, got: list[bytes], want: list[bytes]) -> None:
    """Byte for byte, with a message that names the first document that differs (never dumps megabytes)."""
    assert _ids(got) == _ids(want), f"{where}: {name}: _ids {_ids(got)!r} != live {_ids(want)!r}"
    for g, w in zip(got, want, strict=True):
        if g != w:
            at = next((i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b), min(len(g), len(w)))
            doc_id = RawBSONDocument(w, RAW)["_id"]
            fail = f"{where}: {name}: document {doc_id!r} differs from the live one ({len(g)} vs {len(w)} bytes, first difference at byte {at})"
            raise AssertionError(fail)


def same_metadata(where: str, name: str, options: Any, indexes: Any, live: Coll) -> None:
    got_options = dict(options)
    assert "idIndex" not in got_options, f"{where}: {name}: options carry idIndex: {got_options!r}"
    assert got_options == live.options, f"{where}: {name}: options {got_options!r} != live {live.options!r}"
    specs = indexes.values() if isinstance(indexes, dict) else indexes
    got = {str(ix["name"]): index_spec(ix) for ix in specs}
    assert got == live.indexes, f"{where}: {name}: indexes {got!r} != live {live.indexes!r}"
    got_keys = {n: list(s["key"].items()) for n, s in got.items()}
    want_keys = {n: list(s["key"].items()) for n, s in live.indexes.items()}
    assert got_keys == want_keys, f"{where}: {name}: index key order {got_keys!r} != live {want_keys!r}"


def same_names(where: str, got: Any, live: State) -> None:
    assert sorted(got) == sorted(live), f"{where}: collections {sorted(got)!r} != live {sorted(live)!r}"


def read_dump(where: str, folder: Path, database: str, live: State) -> None:
    """Check a mongodump folder against the live state: names, file stems, metadata, documents."""
    assert [p.name for p in folder.iterdir()] == [database], f"{where}: dump holds {[p.name for p in folder.iterdir()]!r}, not only {database!r}"
    base = folder / database
    metas: dict[str, dict[str, Any]] = {}
    stems = set()
    for path in sorted(base.glob("*.metadata.json")):
        stem = path.name[: -len(".metadata.json")]
        stems.add(stem)
        meta = json_util.loads(path.read_text(encoding="utf-8"))
        name = meta.get("collectionName")
        assert isinstance(name, str) and name, f"{where}: {path.name}: no collectionName"
        assert stem == dump_stem(name), f"{where}: {name}: file stem {stem!r} != mongodump's {dump_stem(name)!r}"
        assert meta.get("type") == "collection", f"{where}: {name}: type {meta.get('type')!r}"
        assert isinstance(meta.get("uuid"), str) and meta["uuid"], f"{where}: {name}: uuid missing or empty: {meta.get('uuid')!r}"
        assert isinstance(meta.get("indexes"), list) and meta["indexes"], f"{where}: {name}: indexes missing or empty"
        assert isinstance(meta.get("options"), dict), f"{where}: {name}: options missing: {meta.get('options')!r}"
        metas[name] = meta
    bson_stems = {p.name[: -len(".bson")] for p in base.glob("*.bson")}
    assert bson_stems == stems, f"{where}: .bson files {sorted(bson_stems)!r} != metadata files {sorted(stems)!r}"
    same_names(where, metas, live)
    for name, meta in metas.items():
        with (base / f"{dump_stem(name)}.bson").open("rb") as f:
            docs = [d.raw for d in bson.decode_file_iter(f, RAW)]
        same_documents(where, name, docs, live[name].docs)
        same_metadata(where, name, meta["options"], meta["indexes"], live[name])
        assert meta["uuid"] == live[name].uuid, f"{where}: {name}: uuid {meta['uuid']!r} != live {live[name].uuid!r}"


# -- the scenario --------------------------------------------------------------------------------


def corpus(db: Database) -> None:
    """Everything before the snapshot."""
    db.create_collection("capped", capped=True, size=MB, max=100)
    db.capped.insert_many([{"_id": i, "n": i, "at": datetime(2020, 1, 1 + i, tzinfo=UTC)} for i in range(5)])
    db.create_collection(
        "validated", validator={"$jsonSchema": {"bsonType": "object", "required": ["name"]}}, validationLevel="moderate", validationAction="error"
    )
    db.validated.insert_many([{"_id": i, "name": f"v{i}", "kind": "k"} for i in range(4)])
    db.create_collection("collated", collation={"locale": "fr", "strength": 2})
    db.collated.insert_many([{"_id": 1, "name": "côte"}, {"_id": 2, "name": "Cote"}, {"_id": 3, "name": "coté"}])
    db.create_collection("images", changeStreamPreAndPostImages={"enabled": True})
    db.images.insert_many([{"_id": i, "n": i, "tags": ["a"]} for i in range(5)])
    db.create_collection("plain")
    db.plain.insert_one({"_id": 1, "x": "plain"})
    db.create_collection("empty")
    db.create_collection("indexed", validator={"a": {"$exists": True}}, validationAction="warn")
    db.indexed.insert_many([
        {"_id": i, "a": i % 3, "b": i, "p": i, "exp": FAR, "name": f"N{i}", "h": i, **({"s": i} if i % 2 else {})} for i in range(10)
    ])
    db.command("createIndexes", "indexed", indexes=[
        {"key": {"a": 1, "b": -1}, "name": "a_b_unique", "unique": True},
        {"key": {"s": 1}, "name": "s_sparse", "sparse": True},
        {"key": {"p": 1}, "name": "p_partial", "partialFilterExpression": {"p": {"$gt": 1}}},
        {"key": {"exp": 1}, "name": "exp_ttl", "expireAfterSeconds": 3600},
        {"key": {"name": 1}, "name": "name_collation", "collation": {"locale": "de", "strength": 2}},
        {"key": {"h": -1}, "name": "h_hidden", "hidden": True},
    ])
    deep: dict[str, Any] = {"leaf": Decimal128("-0.000")}
    for level in range(80):
        deep = {"n": deep, "level": level}
    every = {
        "_id": 1, "oid": ObjectId("5f0c9a1b2c3d4e5f60718293"), "dec": Decimal128("1234.5678901234567890"), "i64": Int64(-(2**62)),
        "i32": -7, "dbl": 1.5, "nan": float("nan"), "negzero": -0.0, "inf": float("-inf"), "bool": True, "null": None,
        "before1970": datetime(1901, 12, 13, 20, 45, 52, 123000, tzinfo=UTC), "after2038": datetime(2999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        "bin0": Binary(b"\x00\x01\xff", 0), "bin4": Binary(uuid.UUID(int=0x1234).bytes, 4), "bin5": Binary(b"\x5a" * 16, 5),
        "bin80": Binary(b"user-defined", 0x80), "regex": Regex("^ab?c.*$", "imsx"), "code": Code("function () { return x; }"),
        "code_scope": Code("function () { return x + y; }", {"x": 1, "y": Int64(2)}), "ts": Timestamp(1700000000, 7),
        "min": MinKey(), "max": MaxKey(), "ref": DBRef("other", ObjectId("5f0c9a1b2c3d4e5f60718294"), "elsewhere"),
        "nested": [[1, [2, [3, []]]], [], {}, [{}]], "empty_array": [], "empty_doc": {},
        "ünïcødé 鍵": "値", "emoji 🗝": "🔒",
    }
    db.types.insert_many([
        {"_id": 0},
        every,
        {"_id": 2, "deep": deep},
        {"_id": 3, "sub": {"a.b": 1, "x": {"c.d": [1, {"e.f": 2}]}, "$price": Decimal128("9.99")}},
        {"_id": 4, "many": list(range(10_000)), "strings": [f"s{i}" for i in range(1000)]},
    ])
    db.big.insert_many([
        {"_id": "5k", "data": "x" * 5000},
        {"_id": "100k", "data": Binary(blob(100_000, 1))},
        {"_id": "1m", "data": Binary(blob(MB, 2)), "arr": [1, 2]},
    ])
    db.big.insert_one({"_id": "8m", "data": Binary(blob(8 * MB, 3)), "note": "eight"})
    db.big.insert_one({"_id": "15m", "data": Binary(blob(15 * MB, 4)), "note": "fifteen"})
    for n, name in enumerate(ODD_NAMES):
        db[name].insert_many([{"_id": 1, "name": name}, {"_id": 2, "n": n}])
    db.command("createIndexes", "50%off", indexes=[{"key": {"n": -1, "name": 1}, "name": "n_desc_name"}])


def create_with_options(db: Database) -> None:
    db.create_collection("late_capped", capped=True, size=64 * 1024, max=20)
    db.late_capped.insert_one({"_id": 1, "v": "late"})
    db.create_collection(
        "late_validated", validator={"u": {"$type": "int"}}, validationLevel="moderate", validationAction="warn",
        collation={"locale": "de", "strength": 1},
    )
    db.late_validated.insert_many([{"_id": i, "u": i, "v": -i, "exp": FAR, "p": i, "name": f"n{i}"} for i in range(3)])


def create_indexes(db: Database) -> None:
    db.command("createIndexes", "late_validated", indexes=[
        {"key": {"u": 1, "v": -1}, "name": "u_v_unique", "unique": True},
        {"key": {"exp": 1}, "name": "exp_ttl", "expireAfterSeconds": 600},
        {"key": {"p": -1}, "name": "p_partial", "partialFilterExpression": {"p": {"$gte": 1}}},
        {"key": {"s": 1}, "name": "s_sparse", "sparse": True},
        {"key": {"h": 1}, "name": "h_hidden", "hidden": True},
        {"key": {"name": 1}, "name": "name_fr", "collation": {"locale": "fr", "strength": 3}},
    ])


def collmod_capped(db: Database) -> None:
    db.command("collMod", "late_capped", cappedSize=128 * 1024, cappedMax=50)


def update_1mb_small(db: Database) -> None:
    db.big.update_one({"_id": "1m"}, {"$set": {"small": "s"}, "$inc": {"arr.0": 10}})


def drop_index(db: Database) -> None:
    db.indexed.drop_index("s_sparse")


def collmod_validator(db: Database) -> None:
    db.command("collMod", "validated", validator={"$jsonSchema": {"bsonType": "object", "required": ["name", "kind"]}}, validationLevel="strict")


def collmod_indexes(db: Database) -> None:
    db.command("collMod", "indexed", index={"name": "exp_ttl", "expireAfterSeconds": 7200})
    db.command("collMod", "indexed", index={"keyPattern": {"p": 1}, "hidden": True})


def update_8mb_big(db: Database) -> None:
    db.big.update_one({"_id": "8m"}, {"$set": {"extra": Binary(blob(MB, 5)), "note": "eight+1"}})


def rename(db: Database) -> None:
    db.indexed.rename("indexed_renamed")


def after_rename(db: Database) -> None:
    db.command("createIndexes", "indexed_renamed", indexes=[{"key": {"r": 1, "a": -1}, "name": "r_after_rename"}])
    db.indexed_renamed.insert_one({"_id": 100, "a": 9, "b": 9, "r": "new"})
    db.indexed_renamed.update_one({"_id": 1}, {"$set": {"r": "set"}})
    db.command("collMod", "indexed_renamed", index={"name": "h_hidden", "hidden": False})  # unhidden: listed without the field


def drop(db: Database) -> None:
    db.capped.drop()


def unset_and_push(db: Database) -> None:
    db.big.update_one({"_id": "15m"}, {"$unset": {"data": ""}, "$set": {"note": "fifteen, emptied"}})
    db.big.update_one({"_id": "1m"}, {"$push": {"arr": {"$each": [3, {"four": 4}]}}})


def replace(db: Database) -> None:
    db.big.replace_one({"_id": "1m"}, {"data": Binary(blob(MB, 6)), "replaced": True})
    db.big.replace_one({"_id": "100k"}, {"_id": "100k", "text": "é" * 50_000})
    db.big.replace_one({"_id": "8m"}, {"data": Binary(blob(8 * MB, 7)), "note": "eight, replaced"})


def update_every_type(db: Database) -> None:
    db.types.update_one({"_id": 1}, {"$set": {"touched": Int64(1), "nested.0.1": "x"}})
    db.types.update_one({"_id": 2}, {"$set": {"deep.n.n.n.extra": [MinKey()]}})
    db.types.update_one({"_id": 4}, {"$pop": {"many": 1}})


def images_updates(db: Database) -> None:
    db.images.update_one({"_id": 1}, {"$set": {"n": 10}, "$push": {"tags": "b"}})
    db.images.update_many({"n": {"$lt": 3}}, {"$inc": {"n": 100}})
    db.images.delete_one({"_id": 4})


def deletes(db: Database) -> None:
    db.big.delete_one({"_id": "5k"})
    db["50%off"].delete_one({"_id": 1})
    db.collated.delete_many({})  # stays, empty


def implicit_create(db: Database) -> None:
    db.implicit.insert_one({"_id": ObjectId("650000000000000000000001"), "made": "by an insert"})
    db["naïve-é"].insert_one({"_id": 3, "ß": "straße"})


def images_off(db: Database) -> None:
    # MongoDB lists a collection whose pre- and post-images were disabled without the option
    db.command("collMod", "images", changeStreamPreAndPostImages={"enabled": False})
    db.images.update_one({"_id": 0}, {"$set": {"after": "images off"}, "$unset": {"tags": ""}})


STEPS: list[tuple[str, Callable[[Database], None]]] = [
    ("create_with_options", create_with_options),
    ("create_indexes", create_indexes),
    ("collmod_capped", collmod_capped),
    ("update_1mb_small", update_1mb_small),
    ("drop_index", drop_index),
    ("collmod_validator", collmod_validator),
    ("collmod_indexes", collmod_indexes),
    ("update_8mb_big", update_8mb_big),
    ("rename", rename),
    ("after_rename", after_rename),
    ("drop", drop),
    ("unset_and_push", unset_and_push),
    ("replace", replace),
    ("update_every_type", update_every_type),
    ("images_updates", images_updates),
    ("deletes", deletes),
    ("implicit_create", implicit_create),
    ("images_off", images_off),
]
CHECKPOINTS = ["after_snapshot", *(name for name, _ in STEPS)]
#: restores from the off-site copy: checkpoint -> how the target is named
OFFSITE = {"collmod_indexes": "at", "implicit_create": "seq"}


@dataclass
class Checkpoint:
    name: str
    seq: int
    live: State
    instant: datetime | None = None  # the last event's wallTime (the snapshot's end for the first)


@dataclass
class Scenario:
    uri: str
    home: Home
    db: str
    root: Path
    snapshot: SnapshotInfo
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)


def _caught_up(cap: Any, client: pymongo.MongoClient) -> int:
    """Wait until capture has everything up to the server's time now; the WAL's last seq."""
    ct = client.admin.command("hello")["operationTime"]
    deadline = time.monotonic() + 30
    while True:
        w = cap.writer
        if w is not None and w.last_ct is not None and w.last_ct >= ct and w.durable_seq >= w.next_seq - 1:
            return int(w.next_seq - 1)
        assert time.monotonic() < deadline, f"capture did not reach {ct}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def scenario(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("fidelity")
    home = Home(root / "home")
    name = unique("fid")
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, tz_aware=True)
    try:
        with capturing(mongo_uri, home.path, database=name, fsync_interval=0.02, checkpoint_interval=0.02) as cap:
            db = client[name]
            corpus(db)
            assert len(dump_stem(LONG_NAME)) == 238, "the long name must be one mongodump cuts"
            snap = take_snapshot(mongo_uri, home, database=name, progress=False)
            sc = Scenario(mongo_uri, home, name, root, snap)
            sc.checkpoints["after_snapshot"] = Checkpoint("after_snapshot", _caught_up(cap, client), read_state(db))
            for step_name, step in STEPS:
                time.sleep(0.005)  # the next events' wallTime is later than the checkpoint's
                step(db)
                sc.checkpoints[step_name] = Checkpoint(step_name, _caught_up(cap, client), read_state(db))
            walls = {rec.seq: rec.wt for rec in read_records(home.wal_dir, kinds=("e",))}
            for cp in sc.checkpoints.values():
                wall = walls.get(cp.seq)
                cp.instant = snap.end_wall if cp.name == "after_snapshot" or wall is None else wall
            yield sc
    finally:
        client.drop_database(name)
        client.close()


def _sanity(sc: Scenario) -> None:
    """The scenario really exercises what it claims (so that the comparisons mean something)."""
    first, last = sc.checkpoints["after_snapshot"].live, sc.checkpoints["implicit_create"].live
    assert {"capped", "indexed", "empty", *ODD_NAMES} <= set(first)
    assert max(len(d) for d in first["big"].docs) > 15 * MB
    assert "indexed" not in last and "indexed_renamed" in last and "capped" not in last and "implicit" in last
    assert last["collated"].docs == [] and last["empty"].docs == []
    assert first["indexed"].indexes["h_hidden"].get("hidden") is True
    # the DDL steps really changed the live metadata, so that equal metadata means the restore followed them
    assert last["late_capped"].options.get("capped") is True and last["late_validated"].options.get("collation")
    assert len(last["late_validated"].indexes) == 7
    renamed = last["indexed_renamed"]
    assert "s_sparse" not in renamed.indexes and "r_after_rename" in renamed.indexes and renamed.options.get("validator")
    assert renamed.indexes["exp_ttl"]["expireAfterSeconds"] == 7200 and renamed.indexes["p_partial"].get("hidden") is True
    assert renamed.uuid == first["indexed"].uuid
    assert last["validated"].options.get("validationLevel") == "strict"
    assert last["late_capped"].options.get("size") == 128 * 1024 and last["late_capped"].options.get("max") == 50
    assert "hidden" not in renamed.indexes["h_hidden"]
    assert first["images"].options and sc.checkpoints["images_off"].live["images"].options == {}


# -- the restore paths -----------------------------------------------------------------------------


def test_scenario_exercises_the_corpus(scenario: Scenario) -> None:
    _sanity(scenario)
    seqs = [cp.seq for cp in scenario.checkpoints.values()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"every step must add events to the WAL: seqs {seqs}"


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_state_at_equals_the_live_documents(scenario: Scenario, checkpoint: str) -> None:
    cp = scenario.checkpoints[checkpoint]
    got = state_at(scenario.home, Target("seq", cp.seq), database=scenario.db)
    where = f"state_at @ {checkpoint} (seq {cp.seq})"
    prefix = f"{scenario.db}."
    assert all(ns.startswith(prefix) for ns in got), f"{where}: other databases: {sorted(got)!r}"
    state = {ns[len(prefix) :]: docs for ns, docs in got.items()}
    same_names(where, state, cp.live)
    for name, docs in state.items():
        same_documents(where, name, docs, cp.live[name].docs)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_restore_to_dump_equals_the_live_state(scenario: Scenario, checkpoint: str, tmp_path: Path) -> None:
    cp = scenario.checkpoints[checkpoint]
    folder = tmp_path / "dump"
    result = restore(scenario.home, Target("seq", cp.seq), to_dump=folder, database=scenario.db, progress=False)
    where = f"to_dump @ {checkpoint} (seq {cp.seq})"
    assert result.destination == str(folder), f"{where}: destination {result.destination!r}"
    read_dump(where, folder, scenario.db, cp.live)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_restore_as_dataframes_equals_the_live_state(scenario: Scenario, checkpoint: str) -> None:
    cp = scenario.checkpoints[checkpoint]
    result = restore(scenario.home, Target("seq", cp.seq), as_dataframes=True, database=scenario.db, progress=False)
    where = f"as_dataframes @ {checkpoint} (seq {cp.seq})"
    prefix = f"{scenario.db}."
    assert result.frames is not None, f"{where}: no frames"
    same_names(where, [ns[len(prefix) :] for ns in result.frames], cp.live)
    same_names(where + " metadata", [ns[len(prefix) :] for ns in result.metadata], cp.live)
    for ns, frame in result.frames.items():
        name = ns[len(prefix) :]
        live = cp.live[name]
        assert len(frame) == len(live.docs), f"{where}: {name}: {len(frame)} rows != live {len(live.docs)} documents"
        assert result.documents.get(ns) == len(live.docs), f"{where}: {name}: result.documents says {result.documents.get(ns)}"
        ids = list(frame["_id"]) if len(frame) else []
        assert ids == _ids(live.docs), f"{where}: {name}: _ids {ids!r} != live {_ids(live.docs)!r}"
        meta = result.metadata[ns]
        same_metadata(where, name, meta["options"], meta["indexes"], live)
        assert meta["uuid"] == live.uuid, f"{where}: {name}: uuid {meta['uuid']!r} != live {live.uuid!r}"


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_restore_into_mongodb_equals_the_live_state(scenario: Scenario, checkpoint: str) -> None:
    cp = scenario.checkpoints[checkpoint]
    target_db = unique("fidr")
    client: pymongo.MongoClient = pymongo.MongoClient(scenario.uri, tz_aware=True)
    where = f"to_uri @ {checkpoint} (seq {cp.seq})"
    try:
        result = restore(scenario.home, Target("seq", cp.seq), to_uri=scenario.uri, to_db=target_db, database=scenario.db, progress=False)
        restored = read_state(client[target_db])
        same_names(where, restored, cp.live)
        for name, coll in restored.items():
            same_documents(where, name, coll.docs, cp.live[name].docs)
            same_metadata(where, name, coll.options, coll.indexes, cp.live[name])
            assert result.documents.get(f"{target_db}.{name}") == len(coll.docs), f"{where}: {name}: result.documents {result.documents!r}"
    finally:
        client.drop_database(target_db)
        client.close()


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_explorer_state_equals_the_live_documents(scenario: Scenario, checkpoint: str) -> None:
    cp = scenario.checkpoints[checkpoint]
    assert cp.instant is not None
    where = f"Explorer.state @ {checkpoint} ({cp.instant.isoformat()})"
    state = Explorer(scenario.home, database=scenario.db, cache=1).state(cp.instant)
    prefix = f"{scenario.db}."
    got = {ns[len(prefix) :]: docs for ns, docs in state.items()}
    same_names(where, got, cp.live)
    for name, docs in got.items():
        want = {bson.encode({"_id": RawBSONDocument(raw, RAW)["_id"]}, codec_options=DOC): raw for raw in cp.live[name].docs}
        assert sorted(docs) == sorted(want), f"{where}: {name}: _ids {[d['_id'] for d in docs.values()]!r} != live {_ids(cp.live[name].docs)!r}"
        for key, doc in docs.items():
            # decoded documents compare through their encoding: NaN != NaN as Python floats
            assert doc["_id"] == RawBSONDocument(want[key], RAW)["_id"], f"{where}: {name}: _id {doc['_id']!r} under the wrong key"
            assert bson.encode(doc, codec_options=DOC) == want[key], f"{where}: {name}: decoded document {doc['_id']!r} differs from the live one"


@pytest.fixture(scope="module")
def offsite(scenario: Scenario) -> FileSystemBackupProvider:
    """One upload of everything (snapshot + WAL) to a filesystem provider, after the last checkpoint."""
    provider = FileSystemBackupProvider(backup_dir=scenario.root / "offsite")
    ledger = QuotaLedger(quota_dir(scenario.home))
    result = upload(scenario.home, provider, ledger, policy=Policy(snapshot_every_days=1, take_snapshot=False), uri=scenario.uri, progress=False)
    assert result.ref is not None, f"the upload stored nothing: {result!r}"
    return provider


@pytest.mark.parametrize("checkpoint", sorted(OFFSITE))
def test_restore_from_offsite_equals_the_live_state(scenario: Scenario, offsite: FileSystemBackupProvider, checkpoint: str, tmp_path: Path) -> None:
    cp = scenario.checkpoints[checkpoint]
    assert cp.instant is not None
    target = Target("seq", cp.seq) if OFFSITE[checkpoint] == "seq" else Target("at", cp.instant)
    folder = tmp_path / "dump"
    restore_from_external(offsite, target, to_dump=folder, database=scenario.db, workdir=tmp_path, progress=False)
    read_dump(f"off-site to_dump @ {checkpoint} ({target})", folder, scenario.db, cp.live)


# -- a target that refuses ---------------------------------------------------------------------------


def _leftovers(client: pymongo.MongoClient, name: str) -> list[str]:
    return client[name].list_collection_names() if name in client.list_database_names() else []


def test_a_refused_collection_option_fails_naming_it_and_leaves_nothing(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = scenario.checkpoints["implicit_create"]
    target_db = unique("fidr")
    real = Database.create_collection
    refused: list[str] = []

    def refusing(self: Database, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.name == target_db and "validator" in kwargs and "validationLevel" in kwargs and "collation" not in kwargs:
            refused.append(name)
            raise OperationFailure("BSON field 'create.validator' is an unknown option", code=72)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(Database, "create_collection", refusing)
    client: pymongo.MongoClient = pymongo.MongoClient(scenario.uri)
    try:
        with pytest.raises(RestoreError) as info:
            restore(scenario.home, Target("seq", cp.seq), to_uri=scenario.uri, to_db=target_db, database=scenario.db, progress=False)
        message = str(info.value)
        assert refused and refused[0].endswith("validated"), f"the refusal was never reached: {refused!r}"
        assert "'validated'" in message and "validator" in message, f"RestoreError does not name the collection and the option: {message}"
        assert _leftovers(client, target_db) == [], f"left behind in {target_db}: {_leftovers(client, target_db)!r}"
    finally:
        client.drop_database(target_db)
        client.close()


def test_a_refused_index_fails_naming_it_and_leaves_nothing(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = scenario.checkpoints["implicit_create"]
    target_db = unique("fidr")
    real = Database.command
    refused: list[str] = []

    def refusing(self: Database, command: Any, value: Any = 1, *args: Any, **kwargs: Any) -> Any:
        if self.name == target_db and command == "createIndexes" and any(ix.get("hidden") for ix in kwargs.get("indexes") or []):
            refused.append(f"{value}:{kwargs['indexes'][0]['name']}")
            raise OperationFailure("Index option 'hidden' is not supported", code=67)
        return real(self, command, value, *args, **kwargs)

    monkeypatch.setattr(Database, "command", refusing)
    client: pymongo.MongoClient = pymongo.MongoClient(scenario.uri)
    try:
        with pytest.raises(RestoreError) as info:
            restore(scenario.home, Target("seq", cp.seq), to_uri=scenario.uri, to_db=target_db, database=scenario.db, progress=False)
        message = str(info.value)
        assert refused, "the refusal was never reached"
        coll, index = refused[0].rsplit(":", 1)
        original = coll.rsplit(".", 1)[-1]
        assert f"'{index}'" in message and f"'{original}'" in message, f"RestoreError does not name the index {index!r} of {original!r}: {message}"
        assert _leftovers(client, target_db) == [], f"left behind in {target_db}: {_leftovers(client, target_db)!r}"
    finally:
        client.drop_database(target_db)
        client.close()



#: Updates that add two fields in an order other than name order (MongoDB 5.0+ applies an operator
#: update's fields in name order, across all its operators; a pipeline's $set stage keeps its own order).
ADDING_UPDATES: dict[str, Any] = {
    "two_operators": {"$set": {"small": "s"}, "$inc": {"count": 1}},
    "pipeline": [{"$set": {"zeta": 1, "alpha": 2}}],
}


@pytest.mark.parametrize("kind", sorted(ADDING_UPDATES))
def test_an_update_adding_fields_restores_into_mongodb_in_the_live_field_order(mongo_uri: str, tmp_path: Path, kind: str) -> None:
    name, target_db = unique("fidops"), unique("fidr")
    home = Home(tmp_path / "home")
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, tz_aware=True)
    try:
        with capturing(mongo_uri, home.path, database=name, fsync_interval=0.02, checkpoint_interval=0.02) as cap:
            client[name].c.insert_one({"_id": 1, "x": 0, "pad": "p" * 2000})  # large enough that MongoDB logs a diff, not a replacement
            take_snapshot(mongo_uri, home, database=name, progress=False)
            client[name].c.update_one({"_id": 1}, ADDING_UPDATES[kind])
            seq = _caught_up(cap, client)
        live = read_state(client[name])
        in_memory = state_at(home, Target("seq", seq), database=name)
        same_documents(f"state_at @ {kind} (seq {seq})", "c", in_memory[f"{name}.c"], live["c"].docs)
        restore(home, Target("seq", seq), to_uri=mongo_uri, to_db=target_db, database=name, progress=False)
        restored = client[target_db].c.find_one({"_id": 1}, {"pad": 0})
        live_doc = client[name].c.find_one({"_id": 1}, {"pad": 0})
        assert list(restored) == list(live_doc), f"to_uri @ {kind} (seq {seq}): c: field order {list(restored)} != live {list(live_doc)}"
        same_documents(f"to_uri @ {kind} (seq {seq})", "c", read_state(client[target_db])["c"].docs, live["c"].docs)
    finally:
        client.drop_database(name)
        client.drop_database(target_db)
        client.close()

"""Local snapshots: layout, fidelity, scope, crash safety, and damaged snapshots.

- A snapshot is a mongodump folder (``<db>/<coll>.bson`` + ``.metadata.json``)
  plus ``manifest.json``; the ``.bson`` files hold exactly the collection's
  documents, byte for byte, whatever their BSON types; the manifest's counts,
  sizes and SHA-256 match the files; ``walkit snapshots --json`` lists it.
- ``collections=`` / ``exclude_collections=`` choose what is saved; system
  collections never are; an unknown collection of a named database is an
  error that leaves nothing behind.
- A ``.tmp-*`` folder (a crash mid-scan) is ignored and removed by the next snapshot.
- A damaged snapshot makes restore fail with SnapshotError naming the file;
  the CLI says so in one line (exit 1) and creates no dump folder and no database.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Regex, json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import errors as pm

from tests.helpers import capturing, one_error_line, unique, walkit
from walkit.errors import ConfigError, SnapshotError
from walkit.home import Home
from walkit.restore import snapshot as snapshot_module
from walkit.restore.local import restore
from walkit.restore.plan import Target
from walkit.restore.snapshot import list_snapshots, load_snapshot, take_snapshot
from walkit.wal.format import read_records

WAIT = 20.0
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)



def file_docs(path: Path) -> list[bytes]:
    with path.open("rb") as f:
        return [doc.raw for doc in bson.decode_file_iter(f, RAW)]


def server_docs(coll: Any) -> list[bytes]:
    return [doc.raw for doc in coll.with_options(codec_options=RAW).find({})]


def snapshot_entries(home: Path) -> list[str]:
    root = home / "snapshots"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- 1. layout and fidelity ------------------------------------------------------------------

VARIED = [
    {
        "_id": 1,
        "dec": Decimal128("-12345.678900"),
        "dec_special": Decimal128("NaN"),
        "big": Int64(2**62 + 1),
        "small": Int64(-5),
        "old": datetime(1901, 12, 13, 20, 45, 52, 123000, tzinfo=UTC),
        "epoch_minus": datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        "uuid": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
        "blob": Binary(b"\x00\xff\x00", 0),
        "re": Regex("^wal.*kit$", "imsx"),
        "nested": [[1, [2, [3, []]]], [], [{"a": [None, True, 1.5]}], [[[]]]],
        "text": "Zoë ✓ 日本",
        "sku": "A-1",
        "n": 1,
    },
    {"_id": "string-id", "sku": "B-2", "n": 2, "empty": {}, "neg_zero": -0.0, "none": None, "ts": Timestamp(1_700_000_000, 7)},
    {"_id": Int64(3), "sku": "C-3", "n": 3, "deep": {"a": {"b": {"c": [{"d": Decimal128("1E+10")}]}}}},
    {"_id": ObjectId("0123456789abcdef01234567"), "sku": "D-4", "n": 4, "pad": "p" * 5000},
    {"_id": {"compound": 1, "key": "x"}, "sku": "E-5", "n": 5},
]


def test_snapshot_layout_bytes_metadata_and_manifest(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path) -> None:
    name = unique("snap")
    db = client[name]
    try:
        db.items.insert_many(VARIED)
        db.items.create_index([("sku", 1), ("n", -1)], name="sku_n", unique=True)
        db.notes.insert_many([{"_id": i, "note": f"note {i}"} for i in range(3)])
        home = Home(tmp_path / "home")
        info = take_snapshot(mongo_uri, home, database=name, progress=False)

        # layout: manifest.json + <db>/<coll>.bson + <coll>.metadata.json, nothing else
        assert info.path == home.path / "snapshots" / info.id
        files = sorted(str(p.relative_to(info.path)) for p in info.path.rglob("*") if p.is_file())
        assert files == sorted(["manifest.json", f"{name}/items.bson", f"{name}/items.metadata.json", f"{name}/notes.bson", f"{name}/notes.metadata.json"])
        assert snapshot_entries(home.path) == [info.id]  # no .tmp-* left

        # the .bson files hold exactly the collections' documents, byte for byte
        for coll in ("items", "notes"):
            saved = file_docs(info.path / name / f"{coll}.bson")
            expected = server_docs(db[coll])
            assert len(saved) == len(expected)
            assert set(saved) == set(expected)
        assert len(file_docs(info.path / name / "items.bson")) == len(VARIED)

        # metadata: canonical Extended JSON with collectionName, type, uuid and the indexes
        uuids = {c["name"]: c["info"]["uuid"] for c in db.list_collections()}
        for coll in ("items", "notes"):
            meta = json_util.loads((info.path / name / f"{coll}.metadata.json").read_text(encoding="utf-8"))
            assert meta["collectionName"] == coll
            assert meta["type"] == "collection"
            assert isinstance(meta["uuid"], str) and len(meta["uuid"]) == 32
            assert meta["uuid"] == uuids[coll].hex()
            names = {ix["name"]: ix for ix in meta["indexes"]}
            assert dict(names["_id_"]["key"]) == {"_id": 1}
        meta = json_util.loads((info.path / name / "items.metadata.json").read_text(encoding="utf-8"))
        secondary = {ix["name"]: ix for ix in meta["indexes"]}["sku_n"]
        assert list(secondary["key"].items()) == [("sku", 1), ("n", -1)]
        assert secondary["unique"] is True

        # the manifest matches the files
        manifest = json.loads((info.path / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["id"] == info.id and manifest["format"] == 1
        assert manifest["database"] == name
        listed = {c["name"]: c for c in manifest["collections"]}
        assert set(listed) == {"items", "notes"}
        for coll, entry in listed.items():
            data = (info.path / entry["file"]).read_bytes()
            assert entry["file"] == f"{name}/{coll}.bson"
            assert entry["db"] == name
            assert entry["bytes"] == len(data)
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
            assert entry["count"] == len(file_docs(info.path / entry["file"]))
        assert manifest["documents"] == len(VARIED) + 3
        assert manifest["bytes"] == sum(c["bytes"] for c in manifest["collections"])
        start = Timestamp(manifest["start"]["t"], manifest["start"]["i"])
        end = Timestamp(manifest["end"]["t"], manifest["end"]["i"])
        assert start <= end
        assert info.start <= info.end
        assert datetime.fromisoformat(manifest["end_wall"]) == info.end_wall

        # what list_snapshots / load_snapshot read back is what take_snapshot returned
        assert load_snapshot(info.path) == info
        assert [s.id for s in list_snapshots(home)] == [info.id]

        # the CLI lists it, with the instant it is consistent from
        result = walkit("snapshots", "--json", "--home", str(home.path))
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert [r["id"] for r in rows] == [info.id]
        assert rows[0]["consistent_from"] == info.end_wall.isoformat()
        assert rows[0]["documents"] == len(VARIED) + 3 and rows[0]["collections"] == 2
        text = walkit("snapshots", "--home", str(home.path))
        assert text.returncode == 0 and info.id in text.stdout and "consistent from" in text.stdout
    finally:
        client.drop_database(name)


# -- 2. scope ----------------------------------------------------------------------------------


@pytest.fixture
def three_collections(client: pymongo.MongoClient) -> Iterator[str]:
    name = unique("scope")
    db = client[name]
    db.a.insert_many([{"_id": 1}, {"_id": 2}])
    db.b.insert_one({"_id": 3})
    db.create_collection("empty")
    db["system.js"].insert_one({"_id": "f", "value": "function () { return 1 }"})
    yield name
    client.drop_database(name)


def test_snapshot_scope_collections_and_exclude(mongo_uri: str, three_collections: str, tmp_path: Path) -> None:
    name = three_collections
    home = Home(tmp_path / "home")

    only_a = take_snapshot(mongo_uri, home, database=name, collections=["a"], progress=False)
    assert [(e.db, e.name, e.count) for e in only_a.collections] == [(name, "a", 2)]
    assert sorted(p.name for p in (only_a.path / name).iterdir()) == ["a.bson", "a.metadata.json"]
    assert json.loads((only_a.path / "manifest.json").read_text())["scope"] == {"database": name, "collections": ["a"], "exclude": []}

    but_a = take_snapshot(mongo_uri, home, database=name, exclude_collections=["a"], progress=False)
    assert sorted(e.name for e in but_a.collections) == ["b", "empty"]
    assert {e.name: e.count for e in but_a.collections}["empty"] == 0
    assert (but_a.path / name / "empty.bson").read_bytes() == b""
    assert json.loads((but_a.path / "manifest.json").read_text())["scope"]["exclude"] == ["a"]

    everything = take_snapshot(mongo_uri, home, database=name, progress=False)
    assert sorted(e.name for e in everything.collections) == ["a", "b", "empty"]  # system.js is never saved
    assert not any(p.name.startswith("system.") for p in (everything.path / name).iterdir())
    # (the sandbox does not list system collections at all; the filter itself:)
    assert not snapshot_module._in_scope("system.js", [], [])
    assert not snapshot_module._in_scope("system.js", ["system.js"], [])

    assert [s.id for s in list_snapshots(home)] == [only_a.id, but_a.id, everything.id]


def test_snapshot_of_the_whole_deployment_skips_admin_config_local(mongo_uri: str, three_collections: str, tmp_path: Path) -> None:
    info = take_snapshot(mongo_uri, Home(tmp_path / "home"), progress=False)
    dbs = {e.db for e in info.collections}
    assert three_collections in dbs
    assert not dbs & {"admin", "config", "local"}
    assert {e.name for e in info.collections if e.db == three_collections} == {"a", "b", "empty"}
    assert info.database is None


def test_unknown_collection_of_a_named_database_saves_nothing(mongo_uri: str, three_collections: str, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with pytest.raises(SnapshotError) as info:
        take_snapshot(mongo_uri, home, database=three_collections, collections=["a", "nosuch"], progress=False)
    assert "nosuch" in str(info.value)
    assert snapshot_entries(home.path) == []  # neither a snapshot nor a .tmp-* folder

    result = walkit("snapshot", "--uri", mongo_uri, "--db", three_collections, "--collections", "nosuch", "--home", str(home.path))
    assert "nosuch" in one_error_line(result, 1)
    assert snapshot_entries(home.path) == []

    result = walkit("snapshot", "--uri", mongo_uri, "--db", three_collections, "--collections", "a", "--exclude", "b", "--home", str(home.path))
    assert "--exclude" in one_error_line(result, 2)
    assert snapshot_entries(home.path) == []


def test_a_failure_mid_scan_saves_nothing(mongo_uri: str, three_collections: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path / "home")
    real = snapshot_module._dump_collection
    calls = []

    def flaky(db: Any, info: dict[str, Any], folder: Path, *rest: Any) -> Any:
        calls.append(info["name"])
        if len(calls) == 2:  # the connection drops after the first collection was written
            assert any(folder.rglob("*.bson"))
            raise pm.AutoReconnect("connection reset by peer (test)")
        return real(db, info, folder, *rest)

    monkeypatch.setattr(snapshot_module, "_dump_collection", flaky)
    with pytest.raises(SnapshotError) as info:
        take_snapshot(mongo_uri, home, database=three_collections, progress=False)
    assert "nothing was saved" in str(info.value)
    assert len(calls) == 2
    assert snapshot_entries(home.path) == []
    assert list_snapshots(home) == []


# -- 3. crash safety ---------------------------------------------------------------------------


def _leftover(root: Path, name: str, busy: bool, age: float = 0.0) -> Path:
    """A ``.tmp-*`` folder as a snapshot leaves it when it dies mid-scan (``busy``: its ``.busy`` lock file)."""
    folder = root / f".tmp-{name}"
    (folder / "somedb").mkdir(parents=True)
    (folder / "somedb" / "a.bson").write_bytes(bson.encode({"_id": 1})[:-3])  # cut off mid-document
    if busy:
        (folder / ".busy").touch()
    if age:
        then = time.time() - age
        os.utime(folder, (then, then))
    return folder


def test_leftover_tmp_folder_is_ignored_then_removed(mongo_uri: str, three_collections: str, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    root = home.path / "snapshots"
    crashed = _leftover(root, "snap-20260101T000000.000Z-aaaaaa", busy=True)
    assert list_snapshots(home) == []  # ignored, not an error

    first = take_snapshot(mongo_uri, home, database=three_collections, progress=False)
    assert not crashed.exists()
    assert snapshot_entries(home.path) == [first.id]

    # a crash next to a finished snapshot: still ignored, and removed by the next snapshot
    crashed = _leftover(root, "snap-20260101T000001.000Z-bbbbbb", busy=True)
    (crashed / "manifest.json").write_text("{", encoding="utf-8")
    assert [s.id for s in list_snapshots(home)] == [first.id]
    second = take_snapshot(mongo_uri, home, database=three_collections, progress=False)
    assert not crashed.exists()
    assert snapshot_entries(home.path) == sorted([first.id, second.id])
    assert [s.id for s in list_snapshots(home)] == [first.id, second.id]


def test_snapshot_being_written_elsewhere_is_left_alone(mongo_uri: str, three_collections: str, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    root = home.path / "snapshots"
    writing = _leftover(root, "snap-20260101T000000.000Z-cccccc", busy=True)
    starting = _leftover(root, "snap-20260101T000001.000Z-dddddd", busy=False)  # made, not yet locked
    stale = _leftover(root, "snap-20260101T000002.000Z-eeeeee", busy=False, age=2 * 3600)  # died before locking, long ago
    fd = os.open(writing / ".busy", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another snapshot process, alive, writing it
        snap = take_snapshot(mongo_uri, home, database=three_collections, progress=False)
        assert writing.exists() and starting.exists()
        assert not stale.exists()
        assert [s.id for s in list_snapshots(home)] == [snap.id]
    finally:
        os.close(fd)
    take_snapshot(mongo_uri, home, database=three_collections, progress=False)
    assert not writing.exists()  # its writer is gone now


# -- 4. damaged snapshots ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def restorable(mongo_uri: str, client: pymongo.MongoClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A home with a WAL and one snapshot of a database (items: 5 documents), then event 1 (an insert)."""
    name = unique("dmg")
    home = tmp_path_factory.mktemp("damaged") / "home"
    db = client[name]
    db.items.insert_many([{"_id": i, "word": f"hello {i}", "n": Int64(i)} for i in range(5)])
    db.items.create_index("word", name="word_1")
    try:
        with capturing(mongo_uri, home, database=name):
            snap = take_snapshot(mongo_uri, Home(home), database=name, progress=False)
            db.items.insert_one({"_id": 99, "word": "late"})
            deadline = time.monotonic() + WAIT
            while sum(1 for _ in read_records(home / "wal")) < 1:
                assert time.monotonic() < deadline, "the insert did not reach the WAL"
                time.sleep(0.02)
    finally:
        client.drop_database(name)
    # the undamaged home restores fine: the failures below come from the damage alone
    result = restore(Home(home), Target("seq", 1), to_dump=home.parent / "good-dump", progress=False)
    assert result.documents == {f"{name}.items": 6}
    yield home, name, snap.id


def _flip_value_byte(snap: Path, name: str) -> Path:
    path = snap / name / "items.bson"
    data = bytearray(path.read_bytes())
    at = data.index(b"hello 3")
    data[at] ^= 0x01  # "hello" -> "iello": still valid BSON, valid UTF-8
    path.write_bytes(bytes(data))
    return path


def _flip_type_byte(snap: Path, name: str) -> Path:
    path = snap / name / "items.bson"
    data = bytearray(path.read_bytes())
    data[4] ^= 0x01  # the first element's type byte: int32 -> timestamp, the document no longer parses
    path.write_bytes(bytes(data))
    return path


def _truncate(snap: Path, name: str) -> Path:
    path = snap / name / "items.bson"
    path.write_bytes(path.read_bytes()[:-7])
    return path


def _delete_bson(snap: Path, name: str) -> Path:
    path = snap / name / "items.bson"
    path.unlink()
    return path


def _delete_manifest(snap: Path, name: str) -> Path:
    path = snap / "manifest.json"
    path.unlink()
    return path


def _garbage_manifest(snap: Path, name: str) -> Path:
    path = snap / "manifest.json"
    path.write_text("{garbage, not json", encoding="utf-8")
    return path


def _wrong_json_manifest(snap: Path, name: str) -> Path:
    path = snap / "manifest.json"
    path.write_text("[1, 2, 3]", encoding="utf-8")
    return path


def _garbage_metadata(snap: Path, name: str) -> Path:
    path = snap / name / "items.metadata.json"
    path.write_text("{garbage", encoding="utf-8")
    return path


DAMAGE: list[Any] = [
    pytest.param(_flip_value_byte, id="flipped-value-byte"),
    pytest.param(_truncate, id="truncated-bson"),
    pytest.param(_delete_bson, id="missing-bson"),
    pytest.param(_delete_manifest, id="missing-manifest"),
    pytest.param(_garbage_manifest, id="garbage-manifest"),
    pytest.param(
        _flip_type_byte,
        id="flipped-type-byte"
    ),
    pytest.param(
        _wrong_json_manifest,
        id="json-list-manifest"
    ),
    pytest.param(
        _garbage_metadata,
        id="garbage-metadata"
    ),
]


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_snapshot_fails_cleanly(
    damage: Callable[[Path, str], Path], restorable: tuple[Path, str, str], mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path
) -> None:
    source, name, snap_id = restorable
    home = tmp_path / "home"
    shutil.copytree(source, home)
    damaged = damage(home / "snapshots" / snap_id, name)

    dump = tmp_path / "dump"
    with pytest.raises(SnapshotError) as info:
        restore(Home(home), Target("seq", 1), to_dump=dump, progress=False)
    assert str(damaged) in str(info.value)
    assert not dump.exists()

    target_db = unique("dmgto")
    outcomes: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(key: str, *argv: str) -> None:
        outcomes[key] = walkit("restore", "--home", str(home), "--seq", "1", *argv)

    threads = [
        threading.Thread(target=run, args=("dump", "--to-dump", str(dump))),
        threading.Thread(target=run, args=("mongo", "--to-uri", mongo_uri, "--to-db", target_db)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    try:
        for key in ("dump", "mongo"):
            line = one_error_line(outcomes[key], 1)
            assert str(damaged) in line, (key, line)
        assert not dump.exists()
        assert not any(p.name.startswith(".dump") for p in tmp_path.iterdir())  # no temporary dump folder either
        assert target_db not in client.list_database_names()
        assert client[target_db].list_collection_names() == []
    finally:
        client.drop_database(target_db)


def test_damaged_metadata_into_mongo_leaves_the_target_as_it_was(
    restorable: tuple[Path, str, str], mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path
) -> None:
    source, name, snap_id = restorable
    home = tmp_path / "home"
    shutil.copytree(source, home)
    damaged = _garbage_metadata(home / "snapshots" / snap_id, name)
    target_db = unique("dmgmeta")
    try:
        with pytest.raises(SnapshotError) as info:
            restore(Home(home), Target("seq", 1), to_uri=mongo_uri, to_db=target_db, progress=False)
        assert str(damaged) in str(info.value)
    finally:
        leftovers = client[target_db].list_collection_names()
        client.drop_database(target_db)
    assert leftovers == []


def test_a_bad_uri_leaves_no_tmp_folder(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with pytest.raises(ConfigError):
        take_snapshot("mongodb://127.0.0.1:notaport/", home, database="x", progress=False)
    assert snapshot_entries(home.path) == []

"""Fixtures for the bundle tests: one captured home, the bundles built from it, an age key.

The ``scenario`` (built once per session) is a home whose WAL holds inserts, dotted
updates, deletes, a transaction and a drop, and (MongoDB 6.0+, showExpandedEvents) the
``create`` event each collection's first insert makes, seq for seq as :data:`EXPECTED`
lists them, with a snapshot taken in the middle, and three bundles built from it: ``b1`` (from the start, with the snapshot, built while
capture was still running), ``b2`` (continuing after ``b1``: more changes) and
``empty`` (after ``b2``: nothing new).  Tests never change these files: the ones that
damage a bundle copy it first (:func:`copy_bundle`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from tests.helpers import capturing, unique
from walkit.home import Home
from walkit.offsite.bundle import Bundle, build_bundle, manifest_digest
from walkit.restore.snapshot import SnapshotInfo, take_snapshot
from walkit.wal.format import read_records

RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
WAIT = 20.0


def fancy_document(_id: str) -> dict[str, Any]:
    """One document holding most BSON types, including the awkward ones."""
    return {
        "_id": _id,
        "oid": ObjectId("0123456789abcdef01234567"),
        "dec": Decimal128("-1234567890.123456789E-300"),
        "dec_nan": Decimal128("NaN"),
        "i64": Int64(-(2**63)),
        "i64_max": Int64(2**63 - 1),
        "old": datetime(1901, 12, 13, 20, 45, 52, 123000, tzinfo=UTC),
        "just_before_epoch": datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        "uuid": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
        "blob": Binary(b"\x00\xff\x00\x01", 0),
        "re": Regex("^wal.*kit$", "imsx"),
        "code": Code("function () { return x + y; }", {"x": 1, "y": [2]}),
        "ts": Timestamp(1_700_000_000, 7),
        "min": MinKey(),
        "max": MaxKey(),
        "nan": math.nan,
        "neg_zero": -0.0,
        "inf": -math.inf,
        "Zoë ✓ 日本": "ключ значение",
        "nested_empty": [[], [[]], [[[]]], {"a": []}, {}],
        "none": None,
    }


@dataclass
class Scenario:
    """The shared home and what was built from it."""

    uri: str
    home: Home
    db: str
    collections: tuple[str, ...]
    marker: str  # a distinctive document value (never in an encrypted file or in metadata)
    snapshot: SnapshotInfo
    b1: Bundle
    b2: Bundle
    empty: Bundle
    fancy_ids: tuple[str, ...]  # one document read from the snapshot, one from the WAL
    server_docs: dict[str, list[bytes]] = field(default_factory=dict)  # "db.coll" -> raw documents at the end


ORDERS, FANCY, SCRATCH = "orders_q7x", "fancy_z3k", "scratch_w9v"
#: (operationType, collection) of the scenario's WAL events, seq 1 first
EXPECTED: list[tuple[str, str]] = [
    ("create", ORDERS), *[("insert", ORDERS)] * 20,  # 1, 2..21
    ("create", FANCY), ("insert", FANCY),  # 22, 23; then the snapshot
    ("update", ORDERS), ("delete", ORDERS),  # 24, 25
    ("insert", ORDERS), ("update", ORDERS),  # 26, 27: one transaction
    ("create", SCRATCH), ("insert", SCRATCH), ("drop", SCRATCH),  # 28, 29, 30; then b1 is built
    ("insert", FANCY), ("update", ORDERS), ("delete", ORDERS), ("insert", ORDERS),  # 31..34: b2
]
B1_LAST = 30  # the last seq in b1
LAST = len(EXPECTED)  # the last seq in b2 (and in the WAL)
TX = (26, 27)  # the transaction's events


def _wait_events(home: Home, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(list(read_records(home.wal_dir))) < count:
        assert time.monotonic() < deadline, f"capture did not write {count} events in time"
        time.sleep(0.02)


@pytest.fixture(scope="session")
def scenario(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("bundle-scenario")
    home = Home(root / "home")
    name = unique("bundle")
    marker = f"walkit-marker-{uuid.uuid4().hex}"
    orders, fancy, scratch = ORDERS, FANCY, SCRATCH
    out = root / "out"
    out.mkdir()
    with pymongo.MongoClient(mongo_uri) as client:
        db = client[name]
        with capturing(mongo_uri, home.path, database=name):
            db[orders].insert_many([{"_id": i, "n": i, "a": {"b": i, "c": [i]}, "note": marker} for i in range(20)])  # 1 (create), 2..21
            db[fancy].insert_one(fancy_document("fancy-in-snapshot"))  # 22 (create), 23
            snapshot = take_snapshot(mongo_uri, home, database=name, progress=False)
            db[orders].update_one({"_id": 1}, {"$set": {"a.b": 100, "a.new": "x"}})  # 24: dotted
            db[orders].delete_one({"_id": 2})  # 25
            with client.start_session() as session:  # 26, 27: one transaction
                session.with_transaction(
                    lambda s: (
                        db[orders].insert_one({"_id": 100, "tx": True}, session=s),
                        db[orders].update_one({"_id": 3}, {"$inc": {"n": 10}, "$unset": {"a.c": ""}}, session=s),
                    )
                )
            db[scratch].insert_one({"_id": "gone"})  # 28 (create), 29
            db[scratch].drop()  # 30
            _wait_events(home, B1_LAST)
            b1 = build_bundle(home, out, snapshot=snapshot)  # while capture is still running
            db[fancy].insert_one(fancy_document("fancy-in-wal"))  # 31
            db[orders].update_one({"_id": 4}, {"$set": {"a.b": "four", "note": marker + "-2"}})  # 32
            db[orders].delete_one({"_id": 5})  # 33
            db[orders].insert_one({"_id": 200, "late": True})  # 34
            _wait_events(home, LAST)
        # exactly the events the writes made, each once, in order (and nothing after them)
        got = [(r.seq, r.event()["operationType"], r.event()["ns"]["coll"]) for r in read_records(home.wal_dir)]
        assert got == [(seq, op, coll) for seq, (op, coll) in enumerate(EXPECTED, 1)], got
        b2 = build_bundle(home, out, after=b1.position)
        empty = build_bundle(home, out, after=b2.position)
        server_docs = {
            f"{name}.{coll}": sorted(d.raw for d in db[coll].with_options(codec_options=RAW).find({})) for coll in (orders, fancy)
        }
    return Scenario(mongo_uri, home, name, (orders, fancy, scratch), marker, snapshot, b1, b2, empty, ("fancy-in-snapshot", "fancy-in-wal"), server_docs)


@dataclass(frozen=True)
class AgeKey:
    identity: Any  # pyrage.x25519.Identity
    recipient: Any  # pyrage.x25519.Recipient
    public: str  # age1...
    keyfile: Path  # as `age-keygen -o` writes it


def write_age_key(path: Path) -> AgeKey:
    """A new X25519 identity in a key file laid out as ``age-keygen`` writes it."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(f"# created: {created}\n# public key: {public}\n{identity}\n", encoding="utf-8")
    path.chmod(0o600)
    return AgeKey(identity, identity.to_public(), public, path)


@pytest.fixture(scope="session")
def age_key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return write_age_key(tmp_path_factory.mktemp("age") / "key.txt")


@pytest.fixture(scope="session")
def encrypted(scenario: Scenario, age_key: AgeKey, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The first bundle (from the start, with the snapshot) encrypted to ``age_key``."""
    return build_bundle(scenario.home, tmp_path_factory.mktemp("encrypted"), snapshot=scenario.snapshot, recipients=[age_key.recipient])


# -- helpers for the tests ----------------------------------------------------------------


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_bundle(bundle: Bundle | Path, folder: Path, name: str | None = None) -> Path:
    src = bundle.path if isinstance(bundle, Bundle) else bundle
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / (name or src.name)
    shutil.copyfile(src, dst)
    return dst


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:") as tar:
        return tar.getmembers()


def tar_contents(path: Path) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """A plain bundle's members (name, bytes) in order, without the manifest, and the manifest."""
    members: list[tuple[str, bytes]] = []
    manifest: dict[str, Any] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            data = f.read()
            if info.name == "MANIFEST.json":
                manifest = json.loads(data)
            else:
                members.append((info.name, data))
    return members, manifest


Entry = tuple[tarfile.TarInfo, bytes]


def regular(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    return info, data


def link(name: str, target: str, *, hard: bool = False) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname, info.mode, info.mtime = target, 0o777, int(time.time())
    return info, b""


def craft(
    base: Path,
    out: Path,
    *,
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
    entries: Callable[[list[Entry]], list[Entry]] | None = None,
    manifest_bytes: bytes | None = None,
) -> Path:
    """Rewrite the plain bundle ``base`` as ``out`` with Python's tarfile: its members (which
    ``entries`` may change, add to or reorder) and then MANIFEST.json (which ``edit_manifest``
    may change in place, or ``manifest_bytes`` replace)."""
    members, manifest = tar_contents(base)
    listed = [regular(name, data) for name, data in members]
    if entries is not None:
        listed = entries(listed)
    if edit_manifest is not None:
        edit_manifest(manifest)
        if isinstance(manifest, dict) and "manifest_sha256" in manifest:  # as a forger would: the deeper checks must catch it
            manifest["manifest_sha256"] = manifest_digest(manifest)
    text = manifest_bytes if manifest_bytes is not None else json.dumps(manifest, indent=1, sort_keys=True).encode()
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in [*listed, regular("MANIFEST.json", text)]:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def files_under(folder: Path) -> list[str]:
    """Every file and link under ``folder`` (relative), sorted; [] when it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def everything_under(folder: Path) -> list[str]:
    """Every entry (folders too) under ``folder``, sorted."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- a synthetic multi-segment WAL ----------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_event(i: int) -> RawBSONDocument:
    """An insert event of about 1 KB with a unique resume token and clusterTime."""
    from walkit.wal.writer import raw_event

    return raw_event({
        "_id": {"_data": f"82{i:014X}"},
        "operationType": "insert",
        "clusterTime": Timestamp(1_767_225_600 + i, 1),
        "wallTime": T0 + timedelta(milliseconds=i),
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": i},
        "fullDocument": {"_id": i, "pad": "x" * 1000},
    })


@dataclass
class Synthetic:
    """A home whose WAL (written by WALWriter, segments of 32 KiB) holds events 1..100, a gap
    (101), events 102..201 and a checkpoint; ``first`` is the bundle built after event 100."""

    home: Home
    first: Bundle

    def clone(self, to: Path) -> Home:
        shutil.copytree(self.home.path, to)
        return Home(to)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    from walkit.clock import SimulatedClock
    from walkit.wal.writer import WALWriter

    root = tmp_path_factory.mktemp("synthetic")
    home = Home(root / "home").create()
    writer = WALWriter(home.wal_dir, clock=SimulatedClock(T0), fsync_interval=0, segment_bytes=32 * 1024).open()
    try:
        for i in range(1, 101):
            writer.append_event(synthetic_event(i))
            writer.commit()
        writer.commit(force_sync=True, flush=True)
        writer.wait_for_seal()
        (root / "out").mkdir()
        first = build_bundle(home, root / "out")
        writer.append_gap("history lost (test)")
        for i in range(102, 202):
            writer.append_event(synthetic_event(i))
            writer.commit()
        writer.checkpoint(synthetic_event(201)["_id"], Timestamp(1_767_225_600 + 202, 1))
    finally:
        writer.close()
    return Synthetic(home, first)

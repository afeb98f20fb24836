"""Local snapshots: a fuzzy scan made consistent by the WAL, in mongodump layout.

A snapshot is a folder ``HOME/snapshots/<id>/``::

    manifest.json              walkit's manifest: positions, scope, counts, sizes, SHA-256 of every file
    <db>/<coll>.bson           the documents as raw BSON, back to back (what mongodump writes)
    <db>/<coll>.metadata.json  canonical Extended JSON: options, indexes, uuid, collectionName, type

The scan runs in a causally consistent session.  ``start`` is the cluster time
read before the scan: every change at or before it is in the scan.  ``end``
is the cluster time and the server's clock read after it.  Writes that go on
during the scan may or may not be in it; replaying the WAL's events from
``start`` on (replay is idempotent) makes the state exact for any instant at
or after ``end``.  No external call is made.

Guaranteed: a snapshot folder appears (by rename) only when complete and
synced; a crash mid-scan leaves a ``.tmp-*`` folder that is ignored and
removed by the next snapshot.  Memory stays flat: documents are streamed as
raw BSON.  Not guaranteed: a snapshot alone, without the WAL from ``start``,
is consistent at no single instant.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import errors as pm

from walkit._fs import fsync_dir as _fsync_dir
from walkit._fs import write_synced as _write_json
from walkit._version import __version__
from walkit.clock import Clock, SystemClock
from walkit.errors import SnapshotError, WalkitError
from walkit.home import Home
from walkit.mongo import connect, describe_error, require_replica_set
from walkit.restore.catalog import clean_options
from walkit.restore.dumpnames import dump_stem
from walkit.wal.format import list_segments

__all__ = ["take_snapshot", "list_snapshots", "load_snapshot", "SnapshotInfo", "CollectionEntry"]

FORMAT = 1
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
SYSTEM_DBS = ("admin", "config", "local")
BATCH = 1000


@dataclass(frozen=True)
class CollectionEntry:
    """One collection in a snapshot."""

    db: str
    name: str
    file: str  # relative to the snapshot folder
    count: int
    bytes: int
    sha256: str
    metadata_sha256: str = ""  # of <coll>.metadata.json

    @property
    def metadata_file(self) -> str:
        return self.file[: -len(".bson")] + ".metadata.json"

    @property
    def namespace(self) -> str:
        return f"{self.db}.{self.name}"


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot's manifest says."""

    id: str
    path: Path
    created: datetime
    start: Timestamp  # every change at or before this is in the scan
    end: Timestamp  # cluster time after the scan
    end_wall: datetime  # the server's clock after the scan: restorable from here on
    database: str | None
    collections: tuple[CollectionEntry, ...] = field(default_factory=tuple)
    wal_seq_before: int | None = None
    wal_seq_after: int | None = None
    scope_collections: tuple[str, ...] = ()  # the --collections it was taken with (empty: all)
    scope_exclude: tuple[str, ...] = ()

    def covers(self, database: str | None, collections: Sequence[str] | None = None) -> bool:
        """Whether this snapshot holds everything of ``database`` (None: every database) and
        ``collections`` (None: all of them), including collections that did not exist yet."""
        if self.database is not None and database != self.database:
            return False
        if self.scope_collections or self.scope_exclude:
            if not collections:
                return False
            return set(collections) <= set(self.scope_collections or collections) and not set(collections) & set(self.scope_exclude)
        return True

    @property
    def documents(self) -> int:
        return sum(c.count for c in self.collections)

    @property
    def size(self) -> int:
        return sum(c.bytes for c in self.collections)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created.isoformat(),
            "consistent_from": self.end_wall.isoformat(),
            "start": {"t": self.start.time, "i": self.start.inc},
            "end": {"t": self.end.time, "i": self.end.inc},
            "database": self.database,
            "collections": len(self.collections),
            "documents": self.documents,
            "bytes": self.size,
            "wal_seq_before": self.wal_seq_before,
            "wal_seq_after": self.wal_seq_after,
        }


def snapshots_dir(home: Home) -> Path:
    return home.snapshots_dir


def _in_scope(name: str, collections: Sequence[str], exclude: Sequence[str]) -> bool:
    if name.startswith("system."):
        return False
    return (not collections or name in collections) and name not in exclude


def _last_seq(home: Home) -> int | None:
    """The newest seq in the home's WAL (reads only its newest segments)."""
    for seg in reversed(list_segments(home.wal_dir).segments):
        last = None
        try:
            for rec in seg.records():
                if rec.kind in ("e", "g"):
                    last = rec.seq
        except Exception:  # a torn tail: what was read is what counts
            pass
        if last is not None:
            return last
    return None


def _server_time(client: Any, session: Any) -> tuple[Timestamp, datetime]:
    """The cluster time (this session's operationTime) and the server's clock, now."""
    hello = client.admin.command("hello", session=session)
    ts = session.operation_time or hello.get("operationTime")
    wall = hello.get("localTime")
    if not isinstance(ts, Timestamp) or not isinstance(wall, datetime):
        raise SnapshotError("the server reported no cluster time; snapshots need a replica set (or the sandbox)")
    return ts, wall if wall.tzinfo else wall.replace(tzinfo=UTC)


def take_snapshot(
    uri: str,
    home: Home,
    *,
    database: str | None = None,
    collections: Sequence[str] | None = None,
    exclude_collections: Sequence[str] | None = None,
    clock: Clock | None = None,
    progress: bool | None = None,
) -> SnapshotInfo:
    """Scan the deployment (or ``database``, or some ``collections``) into a new local snapshot.

    ``progress``: a tqdm bar (None: only when stderr is a terminal).
    """
    from tqdm import tqdm

    clock = clock or SystemClock()
    wanted, exclude = list(collections or []), list(exclude_collections or [])
    root = snapshots_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    created = clock.now()
    snap_id = "snap-" + created.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z-" + secrets.token_hex(3)
    tmp = root / f".tmp-{snap_id}"
    tmp.mkdir()
    # locked while this snapshot is written; locked before it appears in the folder, so another
    # snapshot's clean-up never finds it unlocked (it would take the folder for a crashed one's)
    lock = root / f".lock-{snap_id}"
    busy = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.flock(busy, fcntl.LOCK_EX)
    os.rename(lock, tmp / ".busy")
    client = None
    try:
        client = connect(uri)
        require_replica_set(client, uri)
        seq_before = _last_seq(home)
        with client.start_session(causal_consistency=True) as session:
            start, _ = _server_time(client, session)
            entries = []
            names = [database] if database else [d for d in client.list_database_names(session=session) if d not in SYSTEM_DBS]
            for db_name in names:
                db = client[db_name]
                for listed in db.list_collections(session=session):
                    if listed.get("type", "collection") != "collection" or not _in_scope(listed["name"], wanted, exclude):
                        continue
                    entries.append(_dump_collection(db, dict(listed), tmp, session, tqdm, progress))
            end, end_wall = _server_time(client, session)
        missing = [c for c in wanted if not any(e.name == c for e in entries)]
        if missing:
            where = f"database {database!r}" if database else "any database"
            raise SnapshotError(f"no collection {', '.join(missing)} in {where}; nothing was saved")
        info = SnapshotInfo(
            snap_id, root / snap_id, created, start, end, end_wall, database, tuple(entries), seq_before, _last_seq(home), tuple(wanted), tuple(exclude)
        )
        _write_json(tmp / "manifest.json", json.dumps(_manifest(info), indent=2))
        (tmp / ".busy").unlink()
        _fsync_dir(tmp)
        os.rename(tmp, root / snap_id)
        _fsync_dir(root)
        return info
    except pm.PyMongoError as exc:
        raise SnapshotError(f"snapshot failed, nothing was saved: {describe_error(exc) or exc}") from None
    except OSError as exc:
        raise SnapshotError(f"snapshot failed writing {exc.filename or root}: {exc.strerror or exc}; nothing was saved") from None
    finally:
        if client is not None:
            client.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(busy)


def _remove_leftovers(root: Path) -> None:
    """Remove ``.tmp-*`` folders of snapshots that crashed (not those still being written)."""
    for leftover in root.glob(".tmp-*"):
        try:
            fd = os.open(leftover / ".busy", os.O_RDONLY)
        except FileNotFoundError:  # crashed before locking, or just being made: only if it is old
            with contextlib.suppress(OSError):
                if time.time() - leftover.stat().st_mtime > 3600:
                    shutil.rmtree(leftover, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # another snapshot is writing it
        finally:
            os.close(fd)
        shutil.rmtree(leftover, ignore_errors=True)


def _dump_collection(db: Any, info: dict[str, Any], folder: Path, session: Any, tqdm: Any, progress: bool | None) -> CollectionEntry:
    """Stream one collection to ``<db>/<coll>.bson`` and write its metadata."""
    coll = db.get_collection(info["name"], codec_options=RAW)
    (folder / db.name).mkdir(exist_ok=True)
    stem = dump_stem(info["name"])  # mongodump's file name: escaped, long names cut and hashed
    rel = f"{db.name}/{stem}.bson"
    digest, count, size = hashlib.sha256(), 0, 0
    total = coll.estimated_document_count()
    bar = tqdm(total=total, unit="doc", desc=f"{db.name}.{info['name']}", disable=(None if progress is None else not progress), leave=False)
    with (folder / rel).open("wb", buffering=1 << 20) as out:
        for doc in coll.find({}, session=session, batch_size=BATCH):
            raw = doc.raw
            out.write(raw)
            digest.update(raw)
            count += 1
            size += len(raw)
            bar.update(1)
        out.flush()
        os.fsync(out.fileno())
    bar.close()
    indexes = [{k: v for k, v in dict(ix).items() if k != "ns"} for ix in db[info["name"]].list_indexes(session=session)]
    uuid = (info.get("info") or {}).get("uuid")
    meta = {
        "indexes": indexes,
        "uuid": bytes(uuid).hex() if isinstance(uuid, bytes) else (uuid or uuidlib.uuid4().hex),
        "collectionName": info["name"],
        "type": "collection",
        "options": clean_options(info.get("options")),
    }
    text = json_util.dumps(meta, json_options=CANONICAL_JSON_OPTIONS)
    _write_json(folder / f"{db.name}/{stem}.metadata.json", text)
    return CollectionEntry(db.name, info["name"], rel, count, size, digest.hexdigest(), hashlib.sha256(text.encode()).hexdigest())


def _manifest(info: SnapshotInfo) -> dict[str, Any]:
    out = info.as_dict()
    out.update({
        "format": FORMAT,
        "walkit": __version__,
        "end_wall": info.end_wall.isoformat(),
        "scope": {"database": info.database, "collections": list(info.scope_collections), "exclude": list(info.scope_exclude)},
        "collections": [
            {"db": c.db, "name": c.name, "file": c.file, "count": c.count, "bytes": c.bytes, "sha256": c.sha256, "metadata_sha256": c.metadata_sha256}
            for c in info.collections
        ],
    })
    return out


def load_snapshot(path: Path) -> SnapshotInfo:
    """Read a snapshot's manifest; SnapshotError names the file and what is wrong."""
    manifest = path / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != FORMAT:
            raise SnapshotError(f"{manifest}: snapshot format {data.get('format')!r} is not one this walkit reads ({FORMAT})")
        return SnapshotInfo(
            id=data["id"],
            path=path,
            created=datetime.fromisoformat(data["created"]),
            start=Timestamp(data["start"]["t"], data["start"]["i"]),
            end=Timestamp(data["end"]["t"], data["end"]["i"]),
            end_wall=datetime.fromisoformat(data["end_wall"]),
            database=data.get("database"),
            collections=tuple(CollectionEntry(**c) for c in data["collections"]),
            wal_seq_before=data.get("wal_seq_before"),
            wal_seq_after=data.get("wal_seq_after"),
            scope_collections=tuple(data["scope"]["collections"]),
            scope_exclude=tuple(data["scope"]["exclude"]),
        )
    except WalkitError:
        raise
    except FileNotFoundError:
        raise SnapshotError(f"{manifest}: missing (an incomplete or foreign folder in the snapshots folder); move it away") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"{manifest}: not a walkit snapshot manifest ({type(exc).__name__}: {exc}); move the folder away") from None


def list_snapshots(home: Home) -> list[SnapshotInfo]:
    """The home's snapshots, oldest consistent-from first (damaged manifests raise SnapshotError)."""
    root = snapshots_dir(home)
    if not root.exists():
        return []
    found = [load_snapshot(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda s: (s.end, s.id))


def iter_documents(snap: SnapshotInfo, entry: CollectionEntry) -> Iterator[RawBSONDocument]:
    """The collection's documents, after checking the file against the manifest (SHA-256, size).

    SnapshotError names the file (and the byte offset for a broken document);
    nothing is yielded from a file that does not match.  Reads the file twice
    (check, then stream), memory stays flat.
    """
    path = snap.path / entry.file
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: missing from snapshot {snap.id}; take a new snapshot") from None
    if digest.hexdigest() != entry.sha256:
        raise SnapshotError(f"{path}: its SHA-256 does not match the manifest (the file was altered or cut short); the snapshot is damaged, take a new one")
    offset = 0
    with path.open("rb") as f:
        while head := f.read(4):
            size = int.from_bytes(head, "little") if len(head) == 4 else 0
            raw = head + (f.read(size - 4) if size >= 5 else b"")
            if size < 5 or len(raw) != size or raw[-1] != 0:
                raise SnapshotError(f"{path} at byte {offset}: not a complete BSON document; the snapshot is damaged, take a new one")
            offset += size
            yield RawBSONDocument(raw, RAW)


def read_metadata(snap: SnapshotInfo, entry: CollectionEntry) -> dict[str, Any]:
    """The collection's ``.metadata.json``, checked against the manifest; SnapshotError names the file."""
    path = snap.path / entry.metadata_file
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: cannot be read ({type(exc).__name__}); the snapshot is damaged, take a new one") from None
    if entry.metadata_sha256 and hashlib.sha256(text.encode()).hexdigest() != entry.metadata_sha256:
        raise SnapshotError(f"{path}: its SHA-256 does not match the manifest (the file was altered); the snapshot is damaged, take a new one")
    try:
        meta = json_util.loads(text)
        if not isinstance(meta, dict) or not isinstance(meta.get("indexes", []), list):
            raise ValueError("not a metadata object")
        return meta
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"{path}: not mongodump metadata ({exc}); the snapshot is damaged, take a new one") from None

"""Point-in-time restore from local snapshots + WAL: into MongoDB, a mongodump folder, or pandas.

:func:`restore` resolves the target against the WAL (one streaming pass),
plans it (:func:`walkit.restore.plan.plan_restore`, pure), then loads the snapshot
and replays the WAL's events onto it.

- Into MongoDB (``to_uri`` + ``to_db``): everything is written into
  temporary collections ``__walkit_restore.<random>.<name>`` of the target
  database, indexes included, and renamed into place only when all of it
  succeeded; a failure drops them and leaves the target as it was.  A
  non-empty target database is refused unless ``drop=True`` (its other
  collections are dropped only after the replay succeeded).  With
  ``collections``, only those collections of the target count and are
  replaced; the others are left alone.
- Into a dump folder (``to_dump``): a mongodump directory of the state
  (``<db>/<coll>.bson`` + ``.metadata.json`` with the snapshot's indexes),
  written under a temporary name and renamed in.  Needs no server.
- Into pandas (``as_dataframes=True``): ``{"db.coll": DataFrame}``.

The dump and pandas targets build the state in memory (documents stay raw
BSON unless updated), so they suit what fits in RAM.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import bson
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.timestamp import Timestamp
from pymongo import errors as pm

from walkit._fs import write_synced
from walkit.clock import Clock, SystemClock, as_utc
from walkit.errors import RestoreError, WalkitError
from walkit.home import Home
from walkit.mongo import connect, describe_error
from walkit.restore.catalog import Catalog
from walkit.restore.dumpnames import dump_stem
from walkit.restore.plan import Cut, Gap, RestorePlan, Run, Target, describe_windows, plan_restore, windows
from walkit.restore.replay import DOC, MemoryState, MongoTarget, namespace_of
from walkit.restore.snapshot import SnapshotInfo, iter_documents, list_snapshots, read_metadata
from walkit.wal.format import read_records

__all__ = ["restore", "prepare_restore", "state_at", "metadata_at", "RestoreResult", "scan_wal"]

TEMP = "__walkit_restore."


@dataclass
class RestoreResult:
    """What a restore did."""

    plan: RestorePlan
    events: int = 0
    documents: dict[str, int] = field(default_factory=dict)  # "db.coll" -> documents restored
    destination: str = ""
    frames: dict[str, Any] | None = None  # pandas DataFrames, when asked for
    #: mongodump metadata (options, indexes, uuid) of every collection restored, for the in-memory restores
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: int = 0  # update paths that no longer fitted (fuzzy-scan overlap)
    offsite: Any = None  # the OffsitePlan, for a restore from the external service


def scan_wal(wal_dir: Path, target: Target, renames: list[tuple[Timestamp, tuple[str, ...]]] | None = None) -> tuple[list[Run], Cut | None]:
    """The WAL's runs, and the cut for ``target`` (None if the target lies in no run).

    One pass; memory is constant but for ``renames``, which collects every rename's
    clusterTime and databases.  RestoreError for a seq that is not in the WAL.
    """
    runs: list[Run] = []
    cur: dict[str, Any] | None = None
    gap: Gap | None = None
    resume_ct: Timestamp | None = None
    # resolving the cut
    want = int(target.value) if target.kind != "at" else None  # type: ignore[arg-type]
    at = as_utc(target.value) if isinstance(target.value, datetime) else None
    found_run: int | None = None
    last_seq: int | None = None  # last event included
    group_ct: Timestamp | None = None  # its clusterTime: later events with the same one are included too
    next_ct: Timestamp | None = None
    done = False
    prev_seq: int | None = None
    prev_ct: Timestamp | None = None
    before_group: int | None = None

    def close(after: Gap | None) -> None:
        nonlocal cur
        if cur is not None:
            runs.append(Run(cur["start_ct"], cur["start_wall"], cur["end_ct"], cur["end_wall"], cur["first"], cur["last"], cur["gap"], after))
        cur = None

    for rec in read_records(wal_dir, kinds=("e", "g", "c")):
        if rec.kind == "g":
            gap = Gap(int(rec.get("seq")), rec.get("wt"), str(rec.get("reason")))
            close(gap)
            resume_ct = rec.get("ct")
            prev_seq = prev_ct = before_group = None
            if found_run is not None and target.kind != "at":
                done = True  # the cut ends where its run ends
            continue
        ct, wall = rec.ct, rec.wt
        if not isinstance(ct, Timestamp):
            continue
        if cur is None:
            start = resume_ct if isinstance(resume_ct, Timestamp) and resume_ct <= ct else ct
            cur = {"start_ct": start, "start_wall": wall, "end_ct": ct, "end_wall": wall, "first": None, "last": None, "gap": gap}
            gap, resume_ct = None, None
        cur["end_ct"], cur["end_wall"] = max(cur["end_ct"], ct), wall or cur["end_wall"]
        if wall is not None and (cur["start_wall"] is None or as_utc(wall) < as_utc(cur["start_wall"])):
            cur["start_wall"] = wall  # a capture that began at a snapshot's start records earlier changes after its checkpoint
        if rec.kind != "e":
            continue
        seq = int(rec.seq or 0)
        if renames is not None and rec.raw.find(b"rename") >= 0:  # cheap filter before decoding
            event = rec.event()
            if event.get("operationType") == "rename":
                renames.append((ct, (event["ns"]["db"], event["to"]["db"])))
        cur["first"] = seq if cur["first"] is None else cur["first"]
        cur["last"] = seq
        if prev_ct is None or ct != prev_ct:
            before_group = prev_seq  # the last event before this clusterTime's (transaction's) group
        here = len(runs)
        if not done:
            if target.kind == "seq":
                if seq == want:
                    found_run, last_seq, group_ct = here, seq, ct
                elif found_run is not None:
                    if ct == group_ct:
                        last_seq = seq  # the rest of its transaction
                    else:
                        next_ct, done = ct, True
            elif target.kind == "before_seq":
                if seq == want:
                    found_run, last_seq, next_ct, done = here, before_group, ct, True
            else:
                assert at is not None
                if wall is not None and as_utc(wall) <= at:
                    found_run, last_seq, group_ct, next_ct = here, seq, ct, None
                elif found_run == here and ct == group_ct:
                    last_seq = seq  # the rest of a transaction that committed at or before the instant
                elif found_run == here and next_ct is None:
                    next_ct = ct
        prev_seq, prev_ct = seq, ct
    close(None)
    if target.kind in ("seq", "before_seq"):
        gap_seqs = {g.seq for r in runs for g in (r.gap_before, r.gap_after) if g is not None}
        if want in gap_seqs:
            raise RestoreError(f"seq {want} is a gap marker (history lost there), not an event; pick an event before or after it")
        if found_run is None:
            first = next((r.first_seq for r in runs if r.first_seq is not None), None)
            last = next((r.last_seq for r in reversed(runs) if r.last_seq is not None), None)
            raise RestoreError(f"event {want} is not in the WAL (it holds events {first}..{last})" if first else "the WAL holds no events yet")
        return runs, Cut(runs[found_run], last_seq, next_ct)
    assert at is not None
    for index, run in enumerate(runs):
        run_start = run.start_wall and as_utc(run.start_wall)
        run_end = run.end_wall and as_utc(run.end_wall)
        if run_start is not None and run_end is not None and run_start <= at <= run_end:
            if found_run != index:  # no event at or before the instant in this run: the snapshot alone
                return runs, Cut(run, None, None)
            return runs, Cut(run, last_seq, next_ct)
    return runs, None


def prepare_restore(
    home: Home,
    target: Target,
    collections: Sequence[str] | None = None,
    clock: Clock | None = None,
    database: str | None = None,
    count_events: bool = True,
) -> tuple[RestorePlan, list[SnapshotInfo], list[Run]]:
    """Resolve and plan (no writes): what ``--dry-run`` shows.  ``count_events`` reads the
    replayed range once more to say how many events it holds (``plan.events``)."""
    clock = clock or SystemClock()
    if target.kind == "at":
        assert isinstance(target.value, datetime)
        if as_utc(target.value) > clock.now():
            raise RestoreError(f"{target.value.isoformat()} is in the future")
    snapshots = list_snapshots(home)
    if database is None:  # snapshots of one database only: that is the one meant
        named = {s.database for s in snapshots}
        if len(named) == 1 and None not in named:
            database = named.pop()
    renames: list[tuple[Timestamp, tuple[str, ...]]] = []
    runs, cut = scan_wal(home.wal_dir, target, renames)
    if cut is None and target.kind == "at":
        at = as_utc(target.value)  # type: ignore[arg-type]
        for start, end, run in windows(snapshots, runs):
            if start is not None and end is not None and as_utc(start) <= at <= as_utc(end):
                cut = Cut(run, None, None)  # after a snapshot, before the run's first change: the snapshot alone
                break
    if cut is None:
        raise RestoreError(f"cannot restore {target}: {_outside(target, runs)}; {describe_windows(snapshots, runs)}")
    plan = plan_restore(target, cut, snapshots, runs, list(collections or []), database, renames)
    if collections:
        known = {e.name for e in plan.snapshot.collections} | _collections_in_wal(home, plan)
        missing = [c for c in collections if c not in known]
        if missing:
            raise RestoreError(f"unknown collection {', '.join(missing)}: neither snapshot {plan.snapshot.id} nor the WAL after it has it (it has {', '.join(sorted(known)) or 'none'})")
    if count_events:
        plan.events = sum(1 for _ in _events(home, plan))
    return plan, snapshots, runs


def _collections_in_wal(home: Home, plan: RestorePlan) -> set[str]:
    found = set()
    for rec in _events(home, plan):
        ns = namespace_of(rec.get("ev"))
        if ns is not None:
            found.add(ns[1])
    return found


def _outside(target: Target, runs: list[Run]) -> str:
    at = as_utc(target.value) if isinstance(target.value, datetime) else None
    if not runs:
        return "the WAL holds nothing yet"
    for before, after in zip(runs, runs[1:], strict=False):
        gap = after.gap_before
        if at is not None and before.end_wall and after.start_wall and as_utc(before.end_wall) < at < as_utc(after.start_wall):
            when = gap.wall.isoformat() if gap and gap.wall else "?"
            return (
                f"it falls in a gap (seq {gap.seq if gap else '?'} at {when}: {gap.reason if gap else 'history lost'}): the WAL has "
                f"changes up to {as_utc(before.end_wall).isoformat()} and again from {as_utc(after.start_wall).isoformat()} "
                "(the latter restorable only from a snapshot taken after the gap)"
            )
    first, last = runs[0].start_wall, runs[-1].end_wall
    if at is not None and first is not None and at < as_utc(first):
        return f"it is before the WAL begins ({as_utc(first).isoformat()})"
    return (
        f"it is after the newest change the WAL holds ({as_utc(last).isoformat() if last else '?'}); while idle, capture "
        "records its position every 10 s and at every stop, so retry shortly, or name the newest event with --seq"
    )


def _events(home: Home, plan: RestorePlan) -> Iterator[Any]:
    if plan.to_seq is None:
        return
    for rec in read_records(home.wal_dir, from_seq=plan.run.first_seq, to_seq=plan.to_seq, kinds=("e",)):
        ct = rec.ct
        if isinstance(ct, Timestamp) and ct >= plan.from_ct:
            yield rec


def _entries(plan: RestorePlan, database: str | None) -> list[Any]:
    return [
        e for e in plan.snapshot.collections
        if (database is None or e.db == database) and (not plan.collections or e.name in plan.collections)
    ]


def restore(
    home: Home,
    target: Target,
    *,
    to_uri: str | None = None,
    to_db: str | None = None,
    to_dump: Path | None = None,
    as_dataframes: bool = False,
    database: str | None = None,
    collections: Sequence[str] | None = None,
    drop: bool = False,
    dry_run: bool = False,
    progress: bool | None = None,
    clock: Clock | None = None,
) -> RestoreResult:
    """Restore ``target`` from the home's snapshots and WAL; see the module docstring."""
    destinations = sum(x for x in (bool(to_uri or to_db), to_dump is not None, as_dataframes))
    if destinations != 1 and not dry_run:
        raise WalkitError("name exactly one destination: to_uri + to_db, to_dump, or as_dataframes")
    visible = progress if progress is not None else sys.stderr.isatty()
    plan, snapshots, _ = prepare_restore(home, target, collections, clock, database, count_events=dry_run or visible)
    result = RestoreResult(plan)
    if dry_run:
        return result
    if to_uri or to_db:
        if not (to_uri and to_db):
            raise WalkitError("a restore into MongoDB needs both to_uri and to_db")
        return _into_mongo(home, plan, snapshots, result, to_uri, to_db, plan.database, drop, progress)
    state = _replay_in_memory(home, plan, snapshots, result, plan.database, progress)
    if to_dump is not None:
        _write_dump(state, plan, Path(to_dump), plan.database, result)
    else:
        result.frames = _frames(state)
    return result


def state_at(home: Home, target: Target, *, database: str | None = None, collections: Sequence[str] | None = None, clock: Clock | None = None) -> dict[str, list[bytes]]:
    """Time travel without a database: ``{"db.coll": [document BSON, ...]}`` (in ``_id`` byte order) at ``target``.
    Every collection that existed then is listed, empty ones too."""
    state = _state(home, target, database, collections, clock)
    return {f"{ns[0]}.{ns[1]}": list(state.documents(ns)) for ns in sorted(state.collections)}


def metadata_at(home: Home, target: Target, *, database: str | None = None, collections: Sequence[str] | None = None, clock: Clock | None = None) -> dict[str, dict[str, Any]]:
    """Every collection's metadata at ``target`` as mongodump writes it (``options``, ``indexes``,
    ``uuid``, ``collectionName``, ``type``): ``{"db.coll": metadata}``.  Exact when the WAL holds
    expanded events (MongoDB 6.0+); otherwise as the snapshots had it."""
    state = _state(home, target, database, collections, clock)
    return {f"{ns[0]}.{ns[1]}": state.metadata(ns) for ns in sorted(state.collections)}


def _state(home: Home, target: Target, database: str | None, collections: Sequence[str] | None, clock: Clock | None) -> MemoryState:
    plan, snapshots, _ = prepare_restore(home, target, collections, clock, database, count_events=False)
    return _replay_in_memory(home, plan, snapshots, RestoreResult(plan), plan.database, False)


def _bar(total: int | None, desc: str, progress: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ev", disable=(None if progress is None else not progress), leave=False)


def _catalog(plan: RestorePlan, snapshots: list[SnapshotInfo]) -> Catalog:
    """A catalog whose unknown collections (made after the snapshot, with no ``create`` event
    in the WAL: a server without expanded events) take their metadata from the nearest later
    snapshot holding them."""
    later = [s for s in snapshots if s.end > plan.snapshot.end]

    def fallback(ns: tuple[str, str]) -> dict[str, Any] | None:
        for snap in later:
            for entry in snap.collections:
                if (entry.db, entry.name) == ns:
                    with contextlib.suppress(WalkitError):
                        return read_metadata(snap, entry)
        return None

    return Catalog(fallback)


def _replay_in_memory(
    home: Home, plan: RestorePlan, snapshots: list[SnapshotInfo], result: RestoreResult, database: str | None, progress: bool | None
) -> MemoryState:
    state = MemoryState(settled=plan.snapshot.end, catalog=_catalog(plan, snapshots))
    for entry in _entries(plan, database):
        state.load((entry.db, entry.name), iter_documents(plan.snapshot, entry), read_metadata(plan.snapshot, entry))
    wanted = {(e.db, e.name) for e in _entries(plan, database)} if plan.collections else None
    bar = _bar(plan.events, "replay", progress)
    for rec in _events(home, plan):
        event = rec.get("ev")
        ns = namespace_of(event)
        if ns is not None and (database is None or ns[0] == database) and (wanted is None or ns in wanted or ns[1] in plan.collections):
            state.apply(event, ns)
        elif ns is not None and event["operationType"] in ("dropDatabase", "rename") and (database is None or ns[0] == database):
            state.apply(event, ns)
        result.events += 1
        bar.update(1)
    bar.close()
    if plan.collections:
        for ns in list(state.collections):
            if ns[1] not in plan.collections:
                del state.collections[ns]
    for ns, docs in state.collections.items():
        result.documents[f"{ns[0]}.{ns[1]}"] = len(docs)
        result.metadata[f"{ns[0]}.{ns[1]}"] = state.metadata(ns)
    return state


def _write_dump(state: MemoryState, plan: RestorePlan, folder: Path, database: str | None, result: RestoreResult) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise RestoreError(f"{folder} is not empty; name a new folder for the dump")
    tmp = folder.with_name(f".{folder.name}.walkit-tmp-{secrets.token_hex(4)}")
    try:
        for ns in sorted(state.collections):
            (tmp / ns[0]).mkdir(parents=True, exist_ok=True)
            stem = dump_stem(ns[1])
            with (tmp / ns[0] / f"{stem}.bson").open("wb", buffering=1 << 20) as out:
                for raw in state.documents(ns):
                    out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            meta = json_util.dumps(state.metadata(ns), json_options=CANONICAL_JSON_OPTIONS)
            write_synced(tmp / ns[0] / f"{stem}.metadata.json", meta)
        tmp.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            folder.rmdir()
        os.rename(tmp, folder)
    except OSError as exc:  # a full disk, a read-only folder: the user's to fix, nothing is left behind
        raise RestoreError(f"cannot write the dump at {exc.filename or folder}: {exc.strerror or exc}; nothing was written there") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result.destination = str(folder)


def _frames(state: MemoryState) -> dict[str, Any]:
    try:
        import pandas as pd
    except ImportError:
        raise WalkitError("pandas is not installed: pip install 'walkit[pandas]'") from None
    frames = {}
    for ns in sorted(state.collections):
        docs = [bson.decode(raw, DOC) for raw in state.documents(ns)]
        frames[f"{ns[0]}.{ns[1]}"] = pd.DataFrame(docs)
    return frames


def _into_mongo(home: Home, plan: RestorePlan, snapshots: list[SnapshotInfo], result: RestoreResult, uri: str, to_db: str, database: str | None, drop: bool, progress: bool | None) -> RestoreResult:
    dbs = sorted({e.db for e in plan.snapshot.collections} | ({plan.snapshot.database} if plan.snapshot.database else set()))
    if not dbs and database is None:  # an empty snapshot: the databases are the ones the WAL writes to
        dbs = sorted({ns[0] for rec in _events(home, plan) if (ns := namespace_of(rec.get("ev"))) is not None})
    source = database or (dbs[0] if len(dbs) == 1 else None)
    if source is None:
        held = f"several databases ({', '.join(dbs)})" if dbs else "no database"
        raise RestoreError(f"the snapshot and the WAL hold {held}; name the one to restore (--db)")
    client = connect(uri)
    prefix = f"{TEMP}{secrets.token_hex(4)}."
    db = client[to_db]
    try:
        existing = [c for c in db.list_collection_names() if not c.startswith(TEMP)]
        if plan.collections:  # a subset replaces only those collections; the others stay as they are
            existing = [c for c in existing if c in plan.collections]
        if existing and not drop:
            what = f"already has {', '.join(sorted(existing))}" if plan.collections else f"is not empty ({len(existing)} collections)"
            raise RestoreError(f"database {to_db!r} {what}; restore into a new one, or pass --drop to replace it")
        wanted = set(plan.collections) if plan.collections else None
        target = MongoTarget(db, source, prefix, wanted, settled=plan.snapshot.end, catalog=_catalog(plan, snapshots))
        for entry in _entries(plan, source):  # options before the data, indexes after it (finish), as mongorestore does
            target.load((entry.db, entry.name), iter_documents(plan.snapshot, entry), read_metadata(plan.snapshot, entry))
        bar = _bar(plan.events, "replay", progress)
        for rec in _events(home, plan):
            target.apply(rec.get("ev"))
            result.events += 1
            bar.update(1)
        made = target.finish()
        bar.close()
        result.skipped = target.skipped
        for name in made:
            result.documents[f"{to_db}.{name[len(prefix) :]}"] = db[name].estimated_document_count()
        if drop:
            for name in existing:
                db.drop_collection(name)
        for name in made:
            db[name].rename(name[len(prefix) :], dropTarget=drop)
        result.destination = f"{to_db} on {uri}"
        return result
    except Exception as exc:
        with contextlib.suppress(pm.PyMongoError):
            for name in db.list_collection_names():
                if name.startswith(prefix):
                    db.drop_collection(name)
            if not db.list_collection_names():
                client.drop_database(to_db)  # it did not exist before (or was empty)
        if isinstance(exc, WalkitError):
            raise
        if not isinstance(exc, pm.PyMongoError):
            raise
        raise RestoreError(f"restore into {to_db!r} failed and was undone (the database is as it was): {describe_error(exc) or exc}") from None
    finally:
        client.close()

"""Many days in seconds, through the real code: the workload, capture, snapshots, the daily call.

:func:`simulate` runs the embedded sandbox on a :class:`~walkit.clock.SimulatedClock`,
``ChangeCapture`` into a real WAL, local snapshots every few hours, and at the
backup hour :func:`walkit.offsite.upload` into a :class:`MockExternalBackupProvider`
(with its own one-call-per-24 h limit and a failure rate) under a real
:class:`QuotaLedger`.  The workload is a seeded random mix of inserts, updates
and deletes over a bounded key space, shaped over the day (busier in office
hours), written as a few write commands per fifteen simulated minutes (what ``bulk_write`` sends,
on a connection of its own that sends them together and reads the replies after).  It returns
tidy pandas DataFrames (one row per write, snapshot and upload attempt; the
recovery-point series; restorable windows) and a summary (its ``changes_captured`` counts the
document changes capture wrote, one per write; ``events_captured`` every event, the ``create``
event of each collection at its first write too, as MongoDB 6.0+ change streams show it).

Deterministic for a given seed: the same writes at the same simulated times,
the same failed days, the same outcomes.  Bundle ids (and so a few bytes of
bundle sizes) are random.  Not a benchmark of MongoDB: the sandbox is
in-process and in-memory.

The recovery point (hours of data lost) if a disaster struck at each sampled
instant, for walkit and two baselines a reader might choose instead:

- ``walkit_db_lost``: the database is lost, the local disk is not: only what
  capture had not yet fsynced is lost (``CAPTURE_LAG_SECONDS``, the bound of
  capture's ``--fsync-interval``);
- ``walkit_site_lost``: the whole site is lost: everything since the newest
  successful upload (which covered every change up to its call);
- ``daily_dump_site_lost``: one full dump a day at the backup hour, no WAL,
  failing on the same days;
- ``snapshots_db_lost``: local snapshots every ``baseline_snapshot_hours``,
  no WAL (database lost, disk intact).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from walkit.lab.workload import BUCKET, DAILY_SHAPE, DATABASE, PER_DAY, Pipe, Workload, day_times, draw
from walkit.lab.workload import commands as write_commands

__all__ = ["simulate", "compare_policies", "SimulationResult", "CAPTURE_LAG_SECONDS", "DAILY_SHAPE"]

#: The database-loss recovery point with the WAL: capture's default fsync interval.
CAPTURE_LAG_SECONDS = 0.2
#: From this many writes on, the sandbox runs in a child process (if there are two cores).
PROCESS_WRITES = 100_000
#: How long the child sandbox lets capture's change stream wait for new changes (capture asks
#: for 50 ms): before a snapshot or a call the simulation waits until capture has written and
#: fsynced every change, which it does once its stream reports that it has caught up.
AWAIT_MS = 5


@dataclass
class SimulationResult:
    """What :func:`simulate` returns (see the module docstring)."""

    events: Any
    snapshots: Any
    uploads: Any
    recovery: Any
    windows: Any
    summary: dict[str, Any]
    params: dict[str, Any]
    second_call_refused: bool = False
    home: Path | None = None
    offsite: Path | None = None
    restore_failures: list[str] = field(default_factory=list)


def _wait_for(cap: Any, changes: int, timeout: float = 120.0) -> None:
    """Until capture has the first ``changes`` document changes on disk (fsynced: a bundle built now
    holds them).  Schema events (a collection's implicit ``create``) are not counted: writes are."""
    deadline = time.monotonic() + timeout
    stats = cap.stats
    while stats.changes < changes or cap.writer is None or (stats.last_change_seq or 0) > cap.writer.durable_seq:
        if time.monotonic() > deadline:
            from walkit.errors import WalkitError

            raise WalkitError(f"capture did not catch up within {timeout:.0f} s ({stats.changes} of {changes} changes)")
        time.sleep(0.002)


def _cores() -> int:
    """The CPUs this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _state(client: Any) -> dict[str, list[bytes]]:
    """The database's documents as raw BSON, per collection, sorted by _id."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    db = client.get_database(DATABASE, codec_options=CodecOptions(document_class=RawBSONDocument))
    return {f"{DATABASE}.{name}": [d.raw for d in db[name].find().sort("_id", 1)] for name in sorted(db.list_collection_names())}


def _series(samples: list[datetime], moments: list[datetime], start: datetime) -> list[float]:
    """For each sample, hours since the newest moment at or before it (since ``start`` if none)."""
    out, j, last = [], 0, start
    ordered = sorted(moments)
    for t in samples:
        while j < len(ordered) and ordered[j] <= t:
            last = ordered[j]
            j += 1
        out.append((t - last).total_seconds() / 3600)
    return out


def simulate(
    days: int = 30,
    writes_per_day: int = 1000,
    *,
    backup_hour: int = 2,
    failure_rate: float = 0.05,
    snapshot_interval_hours: float = 6.0,
    snapshot_every_days: float = 1.0,
    seed: int = 0,
    wal: bool = True,
    keyspace: int = 2000,
    start: datetime | None = None,
    baseline_snapshot_hours: float = 6.0,
    sample_minutes: int = 15,
    verify_restores: int = 0,
    workdir: str | Path | None = None,
    keep: bool = False,
    progress: bool | None = None,
    sandbox_process: bool | None = None,
) -> SimulationResult:
    """Run ``days`` simulated days (see the module docstring); ``wal=False`` runs the same
    workload, snapshots and daily calls without capture (bundles carry snapshots only).

    ``sandbox_process`` runs the sandbox in a child process (its own core; the same
    results); None: for runs of :data:`PROCESS_WRITES` writes or more on a machine with
    two cores or more."""
    import pandas as pd
    import pymongo
    from tqdm import tqdm

    from walkit.clock import SimulatedClock
    from walkit.errors import ConfigError, QuotaExceededError
    from walkit.home import Home
    from walkit.offsite.external import list_offsite, resolve_chain
    from walkit.offsite.quota import QuotaLedger
    from walkit.offsite.upload import Policy, quota_dir, upload
    from walkit.providers import MockExternalBackupProvider
    from walkit.restore.plan import Target
    from walkit.restore.snapshot import list_snapshots, take_snapshot
    from walkit.sandbox import Sandbox
    from walkit.wal.capture import ChangeCapture

    if days < 1 or writes_per_day < 0 or not isinstance(backup_hour, int) or not 0 <= backup_hour <= 23 or not 0 <= failure_rate <= 1 or keyspace < 1:
        raise ConfigError("simulate needs days >= 1, writes_per_day >= 0, backup_hour a whole hour 0..23, failure_rate 0..1, keyspace >= 1")
    params = {k: v for k, v in locals().items() if k in (
        "days", "writes_per_day", "backup_hour", "failure_rate", "snapshot_interval_hours", "snapshot_every_days", "seed", "wal",
        "keyspace", "baseline_snapshot_hours", "sample_minutes", "verify_restores")}
    began = time.perf_counter()
    origin = (start or datetime(2026, 1, 5, tzinfo=UTC)).astimezone(UTC)
    rng = random.Random(seed)
    check_rng = random.Random(seed + 1)
    work = Path(tempfile.mkdtemp(prefix="walkit-sim-", dir=workdir))
    home = Home(work / "home").create()
    offsite = work / "offsite"
    if sandbox_process is None:
        sandbox_process = days * writes_per_day >= PROCESS_WRITES and _cores() > 1
    box: Any
    from walkit.sandbox.linked import LinkedClock, LinkedSandboxProcess

    if sandbox_process:
        box = LinkedSandboxProcess(origin, max_await_ms=AWAIT_MS)
        clock: SimulatedClock = box.clock
    else:
        clock = SimulatedClock(origin)
        box = Sandbox(0, clock=clock).start()
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(box.uri)
    mock = MockExternalBackupProvider(latency_ms=0, failure_rate=failure_rate, storage_limit_bytes=None, clock=clock, seed=seed, state_dir=offsite)
    ledger = QuotaLedger(quota_dir(home), clock=clock)
    policy = Policy(snapshot_every_days=snapshot_every_days)
    cap: Any = None
    thread: threading.Thread | None = None
    failures: list[BaseException] = []
    events: list[tuple[datetime, str, str, int]] = []
    uploads: list[dict[str, Any]] = []
    recorded: list[tuple[datetime, dict[str, list[bytes]]]] = []
    second_refused = False
    pipe: Pipe | None = None
    try:
        if wal:
            cap = ChangeCapture(box.uri, home, clock=clock, fsync_interval=0.02, initial_snapshot=False, checkpoint_interval=3600.0)

            def run() -> None:
                try:
                    cap.run()
                except BaseException as exc:  # reported below
                    failures.append(exc)

            thread = threading.Thread(target=run, name="walkit-sim-capture", daemon=True)
            thread.start()
            deadline = time.monotonic() + 30
            while cap.stats.checkpoints == 0 and not failures and time.monotonic() < deadline:
                time.sleep(0.005)
        take_snapshot(box.uri, home, database=DATABASE, clock=clock, progress=False)
        workload = Workload(rng, keyspace)
        pipe = Pipe(box.port)
        linked = clock if isinstance(clock, LinkedClock) else None
        snap_every = timedelta(hours=snapshot_interval_hours) if snapshot_interval_hours > 0 else None
        next_snap = origin + snap_every if snap_every else None
        check_buckets = set(check_rng.sample(range(days * PER_DAY), min(verify_restores * 3, days * PER_DAY))) if verify_restores else set()
        written = 0
        bar = tqdm(total=days, unit="day", desc="simulate", disable=(None if progress is None else not progress), leave=False)
        for day in range(days):
            day_start = origin + timedelta(days=day)
            upload_at = day_start + timedelta(hours=backup_hour)
            counts = day_times(rng, writes_per_day)
            ahead: list[tuple[str, str, int, dict[str, Any]]] | None = None
            for b, count in enumerate(counts):
                at = day_start + b * BUCKET
                if snap_every is not None and next_snap is not None and next_snap <= at:  # a snapshot due before these writes
                    pipe.wait()
                    clock.set(next_snap)
                    if cap is not None:
                        _wait_for(cap, written)
                    take_snapshot(box.uri, home, database=DATABASE, clock=clock, progress=False)
                    next_snap += snap_every
                if at == upload_at:  # the backup hour is a whole hour: it starts a bucket
                    pipe.wait()
                    clock.set(upload_at)
                    if cap is not None:
                        _wait_for(cap, written)
                    uploads.append(_attempt(home, mock, ledger, policy, box.uri, clock, day))
                if not count:
                    continue
                ops = ahead if ahead is not None else draw(workload, count)
                commands, applied = write_commands(ops)
                if linked is not None:
                    # the child's clock is set by the first command on this connection, so the previous
                    # bucket's writes may still be on their way: its replies are read after this bucket is sent
                    commands.insert(0, linked.set_deferred(at))
                    pipe.send(commands)
                else:  # the sandbox reads this process's clock: every earlier write must be done
                    pipe.wait()
                    clock.set(at)
                    pipe.send(commands)
                # the next bucket of the day, drawn while the sandbox applies this one (the same draws, in the same order)
                ahead = draw(workload, counts[b + 1]) if b + 1 < len(counts) and counts[b + 1] else None
                pipe.wait(keep=len(commands))
                events.extend((at, op, c, key) for op, c, key in applied)
                written += count
                if day * PER_DAY + b in check_buckets:
                    pipe.wait()
                    recorded.append((at, _state(client)))
            bar.update(1)
        bar.close()
        end = origin + timedelta(days=days)
        pipe.wait()
        clock.set(end - timedelta(minutes=1))
        if cap is not None:
            _wait_for(cap, written)
        try:
            upload(home, mock, ledger, policy=policy, uri=box.uri, clock=clock, progress=False)
        except QuotaExceededError:
            second_refused = True
        if cap is not None:
            cap.stop()
            assert thread is not None
            thread.join(30)
        if failures:
            raise failures[0]

        # -- the tidy tables --------------------------------------------------------------
        ev = pd.DataFrame(events, columns=["time", "op", "collection", "key"])
        ev["time"] = pd.to_datetime(ev["time"], utc=True)
        snaps = list_snapshots(home)
        snapshots = pd.DataFrame(
            [(s.end_wall, s.id, s.documents, s.size) for s in snaps], columns=["time", "id", "documents", "bytes"]
        )
        snapshots["time"] = pd.to_datetime(snapshots["time"], utc=True)
        up = pd.DataFrame(uploads, columns=["time", "day", "ok", "outcome", "bytes", "index", "first_seq", "last_seq", "covers_from", "covers_to", "snapshot", "error"])
        for col in ("time", "covers_from", "covers_to"):
            up[col] = pd.to_datetime(up[col], utc=True)
        for col in ("index", "first_seq", "last_seq"):
            up[col] = up[col].astype("Int64")
        samples = [origin + timedelta(minutes=sample_minutes * i) for i in range(int(timedelta(days=days) / timedelta(minutes=sample_minutes)) + 1)]
        ok_times = [u["time"] for u in uploads if u["ok"]]
        dump_times = [u["time"] for u in uploads if u["outcome"] in ("stored", "skipped")]
        base_every = timedelta(hours=baseline_snapshot_hours)
        base_snaps = [origin + base_every * i for i in range(int(timedelta(days=days) / base_every) + 1)]
        recovery = pd.DataFrame({
            "time": pd.to_datetime(samples, utc=True),
            "walkit_db_lost": [CAPTURE_LAG_SECONDS / 3600 if wal else v for v in _series(samples, [s.end_wall for s in snaps], origin)],
            "walkit_site_lost": _series(samples, ok_times, origin),
            "daily_dump_site_lost": _series(samples, dump_times, origin),
            "snapshots_db_lost": _series(samples, base_snaps, origin),
        })
        windows = _windows(home, snaps, uploads)

        # -- restores from the external bundles alone, compared with the recorded states ---------
        checks = passed = 0
        restore_failures: list[str] = []
        if recorded:
            chain = resolve_chain(list_offsite(mock))
            span = chain.windows()
            covered = [(t, s) for t, s in recorded if any(a <= t <= b for a, b in span)]
            for t, expected in check_rng.sample(covered, min(verify_restores, len(covered))):
                checks += 1
                got = _restored(mock, Target("at", t), work / f"check-{checks}")
                if got == {k: v for k, v in expected.items() if v}:
                    passed += 1
                else:
                    restore_failures.append(f"{t.isoformat()}: restored state differs from the recorded one")
        rpo = recovery["walkit_site_lost"]
        summary = {
            "days": days,
            "writes": len(events),
            # every event capture wrote: the writes' document changes, and the schema events (MongoDB 6.0+ streams
            # show a collection's implicit create, at its first write)
            "events_captured": cap.stats.events if cap is not None else 0,
            "changes_captured": cap.stats.changes if cap is not None else 0,  # document changes only: one per write
            "uploads_ok": int(up["ok"].sum()),
            "uploads_failed": int((~up["ok"]).sum()),
            "second_calls_refused": int(second_refused),
            "worst_offsite_rpo_hours": round(float(rpo.max()), 3),
            "median_offsite_rpo_hours": round(float(rpo.median()), 3),
            "bundle_bytes_total": int(up["bytes"].sum()),
            "restore_checks": checks,
            "restore_checks_passed": passed,
            "seconds": round(time.perf_counter() - began, 2),
        }
        return SimulationResult(
            ev, snapshots, up, recovery, windows, summary, params, second_refused,
            home.path if keep else None, offsite if keep else None, restore_failures,
        )
    finally:
        if cap is not None:
            cap.stop()
            if thread is not None:
                thread.join(30)
        if pipe is not None:
            pipe.close()
        client.close()
        box.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _attempt(home: Any, mock: Any, ledger: Any, policy: Any, uri: str, clock: Any, day: int) -> dict[str, Any]:
    """One daily call, as a row of the uploads table."""
    from walkit.errors import ProviderError, QuotaExceededError
    from walkit.offsite.upload import upload

    row: dict[str, Any] = {"time": clock.now(), "day": day, "ok": False, "outcome": "failed", "bytes": 0, "index": None,
                           "first_seq": None, "last_seq": None, "covers_from": None, "covers_to": None, "snapshot": False, "error": None}
    try:
        result = upload(home, mock, ledger, policy=policy, uri=uri, clock=clock, progress=False)
    except QuotaExceededError as exc:
        row.update(outcome="refused", error=str(exc))
        return row
    except ProviderError as exc:
        row["error"] = str(exc)
        calls = ledger.calls()
        call = calls[-1] if calls else None
        meta = call.what if call is not None else {}
        row.update(bytes=int(meta.get("size") or 0), index=meta.get("index"), snapshot=bool(meta.get("snapshot")))
        return row
    meta = result.bundle.metadata() if result.bundle is not None else {}
    row.update(
        ok=True, outcome="skipped" if result.skipped else "stored", bytes=0 if result.skipped else int(meta.get("size") or 0),
        index=None if result.skipped else meta.get("index"), first_seq=meta.get("first_seq"), last_seq=meta.get("last_seq"),
        covers_from=meta.get("first_wall"), covers_to=meta.get("last_wall"), snapshot=bool(meta.get("snapshot")) and not result.skipped,
    )
    return row


def _windows(home: Any, snaps: list[Any], uploads: list[dict[str, Any]]) -> Any:
    import pandas as pd

    from walkit.restore.local import scan_wal
    from walkit.restore.plan import Target, windows

    rows: list[tuple[str, str, Any, Any]] = []
    runs, _ = scan_wal(home.wal_dir, Target("at", datetime(1970, 1, 1, tzinfo=UTC)))
    for a, b, _run in windows(snaps, runs):
        rows.append(("local WAL", "local snapshots + WAL", a, b))
    for s in snaps:
        rows.append(("snapshot", s.id, s.end_wall, s.end_wall))
    for u in uploads:
        if u["outcome"] == "stored" and u["covers_from"]:
            rows.append(("bundle", f"bundle {u['index']}", u["covers_from"], u["covers_to"]))
    out = pd.DataFrame(rows, columns=["kind", "label", "start", "end"])
    for col in ("start", "end"):
        out[col] = pd.to_datetime(out[col], utc=True)
    return out


def _restored(mock: Any, target: Any, folder: Path) -> dict[str, list[bytes]]:
    """The state a restore from the external bundles alone gives, as raw BSON per collection."""
    import json

    import bson
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    from walkit.offsite.external import restore_from_external
    from walkit.restore.dumpnames import collection_from_stem

    restore_from_external(mock, target, to_dump=folder, progress=False)
    out = {}
    for path in sorted(folder.glob("*/*.bson")):
        with path.open("rb") as f:
            docs = [bytes(d.raw) for d in bson.decode_file_iter(f, CodecOptions(document_class=RawBSONDocument))]
        if docs:
            meta = json.loads(path.with_name(path.stem + ".metadata.json").read_text(encoding="utf-8"))
            name = collection_from_stem(path.stem, meta.get("collectionName"))  # file names are escaped as mongodump's
            out[f"{path.parent.name}.{name}"] = sorted(docs, key=lambda raw: bson.decode(raw)["_id"])
    return out


def compare_policies(
    days: int = 14,
    writes_per_day: int = 500,
    policies: Sequence[float] = (1.0, 7.0, 0.0),
    seed: int = 0,
    failure_rate: float = 0.0,
    **options: Any,
) -> Any:
    """One simulation per contents policy (``snapshot_every_days``): bundle sizes against
    restore-chain lengths (how many bundles a restore from off-site downloads)."""
    import pandas as pd

    rows = []
    for every in policies:
        res = simulate(days, writes_per_day, snapshot_every_days=every, seed=seed, failure_rate=failure_rate, **options)
        stored = res.uploads[res.uploads["outcome"] == "stored"].reset_index(drop=True)
        # a bundle's snapshot is taken at its call, after the changes it covers: an instant inside
        # bundle i is restored from the newest snapshot in a bundle before i, plus every bundle since
        chains, since = [], None
        for i, row in stored.iterrows():
            if since is not None:
                chains.append(i - since + 1)
            if row["snapshot"]:
                since = i
        label = "snapshot in the first bundle only" if every == 0 else f"snapshot every {every:g} day(s)"
        rows.append({
            "policy": label, "snapshot_every_days": float(every), "bundles": len(stored), "total_bytes": int(stored["bytes"].sum()),
            "mean_bytes": float(stored["bytes"].mean()) if len(stored) else 0.0, "max_bytes": int(stored["bytes"].max()) if len(stored) else 0,
            "worst_chain": max(chains, default=0), "mean_chain": float(sum(chains) / len(chains)) if chains else 0.0,
        })
    return pd.DataFrame(rows)

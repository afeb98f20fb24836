"""Snapshot, restore and replay throughput, as ratios to baselines measured in the same run; peak memory of big restores.

(1) Snapshot: ``take_snapshot`` of one collection of ``--docs`` documents (~300 B)
    on a sandbox server in a child process.  Baseline: pymongo ``find()`` with the
    RawBSONDocument codec (batches of 1000, as the snapshot reads) writing the raw
    bytes to a buffered file (no SHA-256, fsync, metadata or manifest).
(2) Restore into MongoDB: ``restore(home, Target("seq", N), to_uri=..., to_db=...)``
    of that snapshot (plus one event after it, in another collection) into a new
    database of the same server.  Baseline: ``insert_many`` of the same
    RawBSONDocuments (batches of 1000, unordered, as the restore loads) into a new
    database, from an already connected client.
(3) Replay into pandas: a snapshot of an empty database, then ``--replay-events``
    changes captured through the sandbox (2/3 inserts into one collection, 1/3
    ``$inc``/``$set`` updates on 20 hot documents), replayed by
    ``restore(..., as_dataframes=True)`` and ``state_at``.  Baseline:
    ``bson.decode_file_iter`` over a plain file of the same events' raw bytes.
    Diagnostic rows: ``prepare_restore`` alone (the WAL passes before the replay)
    and ``MemoryState.apply`` over pre-read events.
(4) Peak memory: a WAL of ``--events`` change events written directly with
    ``WALWriter`` (no server) plus a hand-made empty snapshot, restored by a fresh
    child process whose peak RSS (VmHWM; ``ru_maxrss`` where /proc is missing) is reported: (a) ``to_dump`` for
    updates over 10,000 documents and for inserts of ~100-byte documents; (b) into
    MongoDB (the sandbox) for the first ``--mongo-events`` events of the insert WAL
    only: the sandbox looks documents up by ``_id`` with collection scans, so a
    full-size replay into it would take hours.  Limit: 500 MB.

Targets: ratios (1) and (2) >= 0.5; peak RSS in (4) < 500 MB.  ``--profile``
prints cProfile's top functions of (1), (2) and (3) (setup excluded).

    .venv/bin/python bench/bench_restore.py [--docs 20000] [--replay-events 30000] [--events 1000000 | --quick]
        [--mongo-events 500] [--reps 3] [--parts 1234] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import os
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pymongo
from bench_wal import WORDS, best  # the sibling script: bench/ is on sys.path when run
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import UpdateOne

from walkit import __version__
from walkit.home import Home
from walkit.restore.local import prepare_restore, restore, state_at
from walkit.restore.plan import Target
from walkit.restore.replay import DOC, MemoryState
from walkit.restore.snapshot import iter_documents, list_snapshots, take_snapshot
from walkit.sandbox import SandboxProcess
from walkit.wal.capture import ChangeCapture
from walkit.wal.format import read_records
from walkit.wal.writer import WALWriter, raw_event

EPOCH = datetime(2024, 5, 1, tzinfo=UTC)
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
BATCH = 1000
LIMIT_MB = 500


def profiled(title: str, fn: Callable[[], object]) -> None:
    prof = cProfile.Profile()
    prof.runcall(fn)
    print(f"\n-- cProfile: {title} --")
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def text(rng: random.Random, size: int) -> str:
    """Words of about ``size`` bytes that compress about as well as real documents do."""
    words: list[str] = []
    while size > 0:
        word = rng.choice(WORDS)
        words.append(word)
        size -= len(word.encode()) + 1
    return " ".join(words)


def make_docs(n: int, size: int) -> list[dict[str, Any]]:
    """``n`` order-like documents of about ``size`` bytes of BSON each."""
    rng = random.Random(size)
    docs = []
    for i in range(n):
        doc = {
            "_id": ObjectId(),
            "customer": f"c{i % 997}",
            "qty": i,
            "price": round(rng.random() * 100, 2),
            "created": EPOCH + timedelta(seconds=i),
            "tags": ["tea", "express"],
            "note": "",
        }
        doc["note"] = text(rng, size - len(bson.encode(doc)))
        docs.append(doc)
    return docs


@contextmanager
def capturing(uri: str, home: Path, database: str) -> Iterator[ChangeCapture]:
    """ChangeCapture of ``database`` in a thread, its stream open (as tests/helpers.capturing)."""
    cap = ChangeCapture(uri, Home(home), database=database, fsync_interval=0.05, initial_snapshot=False)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            cap.run()
        except BaseException as exc:  # raised in the main thread on exit
            failures.append(exc)

    thread = threading.Thread(target=run, name="bench-capture", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while cap.stats.checkpoints == 0 and not failures:  # the stream is open: writes from now on are seen
        if time.monotonic() > deadline:
            raise SystemExit("capture did not open its change stream in 30 s")
        time.sleep(0.01)
    try:
        yield cap
    finally:
        cap.stop()
        thread.join(60)
        if failures:
            raise failures[0]


def wait_for_events(cap: ChangeCapture, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while cap.stats.changes < count:  # document changes: a collection's create event is not one of the writes
        if time.monotonic() > deadline:
            raise SystemExit(f"capture saw {cap.stats.changes} of {count} document changes in {timeout:g} s")
        time.sleep(0.02)


Row = tuple[str, float, float, float]  # label, items/s, MB/s, ratio


def print_table(title: str, unit: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"{'measure':<78}{unit:>12}{'MB/s':>9}{'ratio':>8}")
    for label, rate, mbs, ratio in rows:
        print(f"{label:<78}{rate:>12,.0f}{mbs:>9,.1f}{ratio:>8.2f}")


# -- (1) and (2): snapshot and restore into MongoDB ---------------------------------------------------------


def bench_snapshot_restore(server: SandboxProcess, tmp: Path, n: int, reps: int, profile: bool) -> tuple[list[Row], list[Row]]:
    client: pymongo.MongoClient = pymongo.MongoClient(server.uri)
    docs = make_docs(n, 300)
    for start in range(0, n, BATCH):
        client.bench.docs.insert_many(docs[start : start + BATCH])
    home = Home(tmp / "home-bench")
    raw_path = tmp / "raw.bson"
    coll = client.bench.get_collection("docs", codec_options=RAW)

    def baseline(rep: int) -> tuple[int, int]:
        count = size = 0
        with raw_path.open("wb", buffering=1 << 20) as out:
            for doc in coll.find({}, batch_size=BATCH):
                out.write(doc.raw)
                count += 1
                size += len(doc.raw)
        return count, size

    with capturing(server.uri, home.path, "bench") as cap:
        base_t, (base_n, nbytes) = best(reps, baseline)
        snap_t, info = best(reps, lambda rep: take_snapshot(server.uri, home, database="bench", progress=False))
        if profile:
            profiled("take_snapshot", lambda: take_snapshot(server.uri, home, database="bench", progress=False))
        assert base_n == n and info.documents == n, (base_n, info.documents, n)
        client.bench.marker.insert_one({"after": "the snapshots"})  # an event after them: the restore's target
        wait_for_events(cap, 1)
        seq = cap.stats.last_seq
    assert seq is not None
    mb = nbytes / 1e6
    snap_rows = [
        (f"baseline: find() RawBSONDocument + buffered write, {n:,} docs of ~{nbytes / n:.0f} B", n / base_t, mb / base_t, 1.0),
        ("take_snapshot (scan + SHA-256 + fsync + metadata + manifest)", n / snap_t, mb / snap_t, base_t / snap_t),
    ]

    snap = list_snapshots(home)[-1]
    raws = list(iter_documents(snap, snap.collections[0]))

    def insert(rep: int) -> int:
        target = client[f"baseline_{rep}"].docs
        for start in range(0, len(raws), BATCH):
            target.insert_many(raws[start : start + BATCH], ordered=False)
        return target.estimated_document_count()

    def restored(rep: int) -> int:
        result = restore(home, Target("seq", seq), to_uri=server.uri, to_db=f"restored_{rep}", progress=False)
        return result.documents[f"restored_{rep}.docs"]

    ins_t, ins_n = best(reps, insert)
    res_t, res_n = best(reps, restored)
    assert ins_n == n and res_n == n, (ins_n, res_n, n)
    if profile:
        profiled("restore into MongoDB", lambda: restored(reps))
    client.close()
    restore_rows = [
        (f"baseline: insert_many RawBSONDocument x{BATCH}, {n:,} docs of ~{nbytes / n:.0f} B", n / ins_t, mb / ins_t, 1.0),
        ("restore(Target('seq', N), to_uri, to_db): snapshot load + 1 event + rename", n / res_t, mb / res_t, ins_t / res_t),
    ]
    return snap_rows, restore_rows


# -- (3): replay into pandas -----------------------------------------------------------------------------


def bench_replay(server: SandboxProcess, tmp: Path, total: int, reps: int, profile: bool) -> tuple[str, list[Row]]:
    client: pymongo.MongoClient = pymongo.MongoClient(server.uri)
    db = client.replay
    home = Home(tmp / "home-replay")
    inserts, updates = total * 2 // 3, total - total * 2 // 3
    docs = make_docs(inserts, 200)
    hot = [{"_id": i, "n": 0, "state": "new"} for i in range(20)]
    with capturing(server.uri, home.path, "replay") as cap:
        take_snapshot(server.uri, home, database="replay", progress=False)  # of the empty database
        db.counters.insert_many(hot)
        for start in range(0, inserts, BATCH):
            db.items.insert_many(docs[start : start + BATCH])
        ops = [UpdateOne({"_id": i % 20}, {"$inc": {"n": 1}, "$set": {"state": f"s{i % 7}"}}) for i in range(updates)]
        for start in range(0, updates, BATCH):
            db.counters.bulk_write(ops[start : start + BATCH])
        wait_for_events(cap, len(hot) + inserts + updates)
        seq = cap.stats.last_seq
    client.close()
    assert seq is not None
    target = Target("seq", seq)
    plain = tmp / "events.bson"
    records = [rec.get("ev") for rec in read_records(home.wal_dir, kinds=("e",))]
    with plain.open("wb") as f:
        for ev in records:
            f.write(ev.raw)
    n = len(records)
    mb = plain.stat().st_size / 1e6

    def baseline(rep: int) -> int:
        with plain.open("rb") as f:
            return sum(1 for _ in bson.decode_file_iter(f, DOC))

    def frames(rep: int = 0) -> int:
        result = restore(home, target, as_dataframes=True, progress=False)
        assert result.frames is not None and len(result.frames["replay.items"]) == inserts
        return result.events

    def at(rep: int) -> int:
        state = state_at(home, target)
        return sum(len(docs) for docs in state.values())

    def planned(rep: int) -> int:
        plan, _, _ = prepare_restore(home, target)
        return plan.events or 0

    base_t, base_n = best(reps, baseline)
    frames_t, frames_n = best(reps, frames)
    at_t, at_docs = best(reps, at)
    plan_t, plan_n = best(reps, planned)
    fresh = [[RawBSONDocument(ev.raw, RAW) for ev in records] for _ in range(reps)]  # not yet inflated, as read from the WAL

    def applied_fresh(rep: int) -> int:
        state = MemoryState()
        for ev in fresh[rep]:
            state.apply(ev)
        return len(state.collections[("replay", "items")])

    apply_t, _ = best(reps, applied_fresh)
    assert base_n == n and frames_n == n and plan_n == n and at_docs == inserts + len(hot), (base_n, frames_n, plan_n, at_docs, n)
    if profile:
        profiled("restore(as_dataframes=True)", frames)
    what = f"{n:,} events: {len(hot) + inserts:,} inserts, {updates:,} updates, ~{plain.stat().st_size / n:.0f} B each"
    return what, [
        ("baseline: bson.decode_file_iter of the events' raw bytes", n / base_t, mb / base_t, 1.0),
        ("restore(as_dataframes=True): plan + replay + DataFrames", n / frames_t, mb / frames_t, base_t / frames_t),
        ("state_at: plan + replay", n / at_t, mb / at_t, base_t / at_t),
        ("  of which prepare_restore (scan_wal + counting pass)", n / plan_t, mb / plan_t, base_t / plan_t),
        ("  of which MemoryState.apply (events already read from the WAL)", n / apply_t, mb / apply_t, base_t / apply_t),
    ]


# -- (4): peak memory of big restores ----------------------------------------------------------------------


def build_wal(home: Path, n: int, docs: int | None, rng: random.Random) -> tuple[float, int]:
    """A WAL of ``n`` events of shop.orders written directly, and an empty snapshot before them.

    ``docs``: first that many inserts, then updates of those documents round robin;
    None: ``n`` inserts of ~100-byte documents.  Returns (seconds, WAL bytes on disk).
    """
    start = time.perf_counter()
    notes = [text(rng, 40) for _ in range(64)]
    keys = [ObjectId() for _ in range(docs or 0)]
    t0 = 1714521600
    with WALWriter(home / "wal") as writer:
        for i in range(n):
            ct = Timestamp(t0 + i // 1000, i % 1000 + 1)
            oid = keys[i % docs] if docs else ObjectId()
            ev: dict[str, Any] = {
                "_id": {"_data": f"82{ct.time:08X}{ct.inc:08X}2B022C0100296E5A1004{i:016X}46645F69640064{oid}0004"},
                "operationType": "insert",
                "clusterTime": ct,
                "wallTime": EPOCH + timedelta(milliseconds=i),
                "ns": {"db": "shop", "coll": "orders"},
                "documentKey": {"_id": oid},
            }
            if docs is None or i < docs:
                ev["fullDocument"] = {"_id": oid, "customer": f"c{i % 997}", "qty": i, "note": notes[i % 64]}
            else:
                ev["operationType"] = "update"
                ev["updateDescription"] = {"updatedFields": {"qty": Int64(i), "note": notes[i % 64][: i % 40]}, "removedFields": [], "truncatedArrays": []}
            writer.append_event(raw_event(ev))
            if i % BATCH == BATCH - 1:
                writer.commit()
    first = {"t": t0, "i": 1}
    snap_id = "snap-20240501T000000.000Z-bench0"
    folder = home / "snapshots" / snap_id
    folder.mkdir(parents=True)
    manifest = {
        "format": 1,
        "walkit": __version__,
        "id": snap_id,
        "created": EPOCH.isoformat(),
        "consistent_from": EPOCH.isoformat(),
        "start": first,
        "end": first,
        "end_wall": EPOCH.isoformat(),
        "database": "shop",
        "collections": [],
        "documents": 0,
        "bytes": 0,
        "wal_seq_before": None,
        "wal_seq_after": None,
        "scope": {"database": "shop", "collections": [], "exclude": []},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return time.perf_counter() - start, sum(p.stat().st_size for p in (home / "wal").iterdir())


def peak_rss_kb() -> int:
    """This process's peak RSS in KB: VmHWM of its address space.  ``ru_maxrss`` would do, but
    Linux carries the parent's peak over an exec into it, so a child started by a big parent
    reports at least that."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_restore(spec: dict[str, Any]) -> None:
    """Run in a fresh process: one restore, then print its timings and peak RSS as JSON."""
    restore_module = importlib.import_module("walkit.restore.local")  # the module: walkit.restore is the function

    planning = [0.0]
    prepare = restore_module.prepare_restore

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:  # to report the planning passes apart from the replay
        start = time.perf_counter()
        try:
            return prepare(*args, **kwargs)
        finally:
            planning[0] += time.perf_counter() - start

    restore_module.prepare_restore = timed_prepare  # type: ignore[assignment]
    idle = peak_rss_kb()
    start = time.perf_counter()
    if spec.get("uri"):
        result = restore(Home(spec["home"]), Target("seq", spec["seq"]), to_uri=spec["uri"], to_db=spec["db"], progress=False)
    else:
        result = restore(Home(spec["home"]), Target("seq", spec["seq"]), to_dump=Path(spec["dump"]), progress=False)
    seconds = time.perf_counter() - start
    peak = peak_rss_kb()
    print(json.dumps({"idle_kb": idle, "peak_kb": peak, "seconds": seconds, "plan_seconds": planning[0], "events": result.events, "documents": sum(result.documents.values())}))


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    os.sync()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"the restoring child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(tmp: Path, n: int, mongo_events: int, uri: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, short name, the child's report) for every restore measured."""
    rng = random.Random(4)
    out = []
    homes = {}
    for name, docs in (("updates", 10_000), ("inserts", None)):
        home = tmp / f"home-{name}"
        secs, size = build_wal(home, n, docs, rng)
        homes[name] = home
        print(f"  built a WAL of {n:,} events ({name}): {size / 1e6:.1f} MB on disk in {secs:.1f} s", flush=True)
        res = run_child({"home": str(home), "seq": n, "dump": str(tmp / f"dump-{name}")})
        shutil.rmtree(tmp / f"dump-{name}", ignore_errors=True)
        what = "1 M" if n == 1_000_000 else f"{n:,}"
        label = f"to_dump: {what} events, {docs:,} docs updated over and over" if docs else f"to_dump: {what} inserts of ~100 B documents"
        out.append((label, f"(4a) {name}", res))
    if uri is not None and mongo_events:
        res = run_child({"home": str(homes["inserts"]), "seq": mongo_events, "uri": uri, "db": "restored_big"})
        out.append((f"to_uri (sandbox): first {mongo_events:,} of the {n:,} inserts", "(4b) MongoDB", res))
    for home in homes.values():
        shutil.rmtree(home, ignore_errors=True)
    return out


def print_memory(rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    print(f"\n(4) peak memory of restores in a fresh child process (limit {LIMIT_MB} MB; 'idle' = RSS after imports)")
    print(f"{'restore':<62}{'docs':>10}{'events/s':>10}{'plan s':>8}{'total s':>9}{'idle MB':>9}{'peak MB':>9}{'limit':>7}")
    for label, _, r in rows:
        peak = r["peak_kb"] / 1024
        under = "ok" if peak < LIMIT_MB else "OVER"
        print(f"{label:<62}{r['documents']:>10,}{r['events'] / r['seconds']:>10,.0f}{r['plan_seconds']:>8.1f}{r['seconds']:>9.1f}{r['idle_kb'] / 1024:>9.0f}{peak:>9.0f}{under:>7}")


def verdict(what: str, ok: bool) -> str:
    return f"{what}: {'met' if ok else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000, help="documents in the collection snapshotted and restored (1, 2)")
    parser.add_argument("--replay-events", type=int, default=30_000, help="events captured and replayed into pandas (3)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the WALs restored for peak memory (4)")
    parser.add_argument("--quick", action="store_true", help="--events 100000")
    parser.add_argument("--mongo-events", type=int, default=500, help="events of (4) restored into the sandbox (0: skip)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each throughput measurement (the best counts)")
    parser.add_argument("--parts", default="1234", help="which measurements to run, e.g. 12 or 4")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions for (1), (2) and (3)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_restore(json.loads(args.child))
        return
    events = 100_000 if args.quick else args.events

    tmp = Path(tempfile.mkdtemp(prefix="walkit-bench-restore-"))
    began = time.perf_counter()
    verdicts: list[str] = []
    try:
        with SandboxProcess() as server:
            if "1" in args.parts or "2" in args.parts:
                snap_rows, restore_rows = bench_snapshot_restore(server, tmp, args.docs, args.reps, args.profile)
                print_table("(1) snapshot throughput (target: ratio >= 0.5)", "docs/s", snap_rows)
                print_table("(2) restore throughput into MongoDB, sandbox in a child process (target: ratio >= 0.5)", "docs/s", restore_rows)
                verdicts += [verdict("(1) snapshot ratio >= 0.5", snap_rows[-1][3] >= 0.5), verdict("(2) restore ratio >= 0.5", restore_rows[-1][3] >= 0.5)]
            if "3" in args.parts:
                what, rows = bench_replay(server, tmp, args.replay_events, args.reps, args.profile)
                print_table(f"(3) replay rate into pandas / memory ({what})", "events/s", rows)
            if "4" in args.parts:
                print(f"\n(4) building WALs of {events:,} events ...", flush=True)
                memory = bench_memory(tmp, events, args.mongo_events, server.uri)
                print_memory(memory)
                verdicts += [verdict(f"{short} peak < {LIMIT_MB} MB", r["peak_kb"] / 1024 < LIMIT_MB) for _, short, r in memory]
        print("\ntargets: " + "; ".join(verdicts) if verdicts else "")
        print(f"total {time.perf_counter() - began:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""WAL throughput and capture lag, as ratios to baselines measured in the same run.

(a) Append: ``WALWriter.append_event`` + ``commit`` (default fsync interval,
    default segment size, so sealing and zstd are included) for realistic raw
    change events of ~300 bytes and ~4 KB.  Baseline: ``bson.encode`` of the
    same event dicts written to a buffered file (no framing, CRC, hashing,
    fsync or compression).  The events are RawBSONDocuments whose top level
    has been decoded once, as pymongo's ChangeStream hands them to capture
    (it reads every event's ``_id``); the row "not yet inflated" shows what
    that first decode costs on top.
(b) Read-back: ``walkit.wal.format.read_records`` over that WAL (sealed ``.zst``
    segments and the open one).  Baseline: ``bson.decode_file_iter`` over a
    plain file of the same events.
(c) Capture lag: ``ChangeCapture`` against a sandbox in a child process
    while a steady writer inserts ``--rate`` documents a second for
    ``--seconds``; p50/p99 of write (wallTime) -> durable in the WAL, from
    ``ChangeCapture.stats.lags``.

Targets: both ratios >= 0.5.  ``--profile`` prints cProfile's top functions
for append and read (setup excluded).

    .venv/bin/python bench/bench_wal.py [--n 50000] [--reps 3] [--rate 200] [--seconds 10] [--profile] [--no-lag]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pymongo
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from walkit.home import Home
from walkit.sandbox import SandboxProcess
from walkit.wal.capture import ChangeCapture
from walkit.wal.format import read_records
from walkit.wal.writer import WALWriter, raw_event

EPOCH = datetime(2024, 5, 1, tzinfo=UTC)
DECODE = CodecOptions(tz_aware=True)
WORDS = [f"{w}{n}" for w in ("order", "tea", "blue", "parcel", "Zürich", "refund", "express", "note", "id", "x") for n in ("", "7", "42", "-3", "b9f")]


def make_events(n: int, size: int) -> list[dict[str, Any]]:
    """``n`` insert/update change events whose encoded size is about ``size`` bytes."""
    rng = random.Random(size)
    events = []
    for i in range(n):
        oid = ObjectId()
        ev: dict[str, Any] = {
            "_id": {"_data": f"82{1714521600 + i // 100:08X}{i % 100:08X}2B022C0100296E5A1004{rng.getrandbits(64):016X}46645F69640064{oid}0004"},
            "clusterTime": Timestamp(1714521600 + i // 100, i % 100 + 1),
            "wallTime": EPOCH + timedelta(milliseconds=i),
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": oid},
        }
        if i % 4 == 3:
            ev["operationType"] = "update"
            ev["updateDescription"] = {"updatedFields": {"qty": Int64(i)}, "removedFields": [], "truncatedArrays": []}
        else:
            ev["operationType"] = "insert"
            ev["fullDocument"] = {"_id": oid, "customer": f"c{i % 997}", "qty": i, "note": ""}
        target = ev.get("fullDocument") or ev["updateDescription"]["updatedFields"]
        key = "note" if "note" in target else "comment"
        target[key] = ""
        pad = size - len(bson.encode(ev))
        words: list[str] = []
        while pad > 0:  # text that compresses about as well as real documents do (3-4x)
            word = rng.choice(WORDS)
            words.append(word)
            pad -= len(word.encode()) + 1
        target[key] = " ".join(words)
        events.append(ev)
    return events


def best(reps: int, fn: Callable[[int], Any]) -> tuple[float, Any]:
    """The fastest of ``reps`` runs of ``fn(rep)`` (seconds) and what it returned."""
    runs = []
    for rep in range(reps):
        os.sync()  # earlier runs' dirty pages are written back now, not during this run
        start = time.perf_counter()
        result = fn(rep)
        runs.append((time.perf_counter() - start, result))
    return min(runs, key=lambda r: r[0])


def profiled(title: str, fn: Callable[[], object]) -> None:
    prof = cProfile.Profile()
    prof.runcall(fn)
    print(f"\n-- cProfile: {title} --")
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def bench_append(events: list[dict[str, Any]], tmp: Path, reps: int, profile: bool) -> tuple[float, float, float, int, Path, Path]:
    """Seconds for: baseline, WAL append, WAL append of not-yet-inflated raw events; WAL bytes."""
    plain = tmp / "plain.bson"

    def baseline(rep: int) -> int:
        total = 0
        with plain.open("wb", buffering=1 << 20) as f:
            for ev in events:
                data = bson.encode(ev)
                f.write(data)
                total += len(data)
        return total

    def raws(inflated: bool) -> list[RawBSONDocument]:
        out = [raw_event(ev) for ev in events]
        if inflated:  # what capture receives: pymongo's ChangeStream has read event["_id"] already
            for raw in out:
                raw["_id"]  # noqa: B018
        return out

    def append(wal_dir: Path, batch: list[RawBSONDocument]) -> int:
        with WALWriter(wal_dir) as writer:
            for ev in batch:
                writer.append_event(ev)
                writer.commit()
        return sum(p.stat().st_size for p in wal_dir.iterdir())

    base_t, _ = best(reps, baseline)
    inflated = raws(True)
    wal_t, wal_bytes = best(reps, lambda rep: append(tmp / f"wal{rep}", inflated))
    cold_t = float("inf")
    for rep in range(reps):  # fresh raw documents every time: inflation happens once per document
        cold = raws(False)
        os.sync()
        start = time.perf_counter()
        append(tmp / f"cold{rep}", cold)
        cold_t = min(cold_t, time.perf_counter() - start)
    if profile:
        ready = raws(True)
        profiled("WALWriter.append_event + commit", lambda: append(tmp / "profiled", ready))
    return base_t, wal_t, cold_t, wal_bytes, plain, tmp / "wal0"


def bench_read(n: int, plain: Path, wal_dir: Path, reps: int, profile: bool) -> tuple[float, float, int]:
    def baseline(rep: int) -> int:
        count = 0
        with plain.open("rb") as f:
            for _doc in bson.decode_file_iter(f, DECODE):
                count += 1
        return count

    def walkit(rep: int = 0) -> int:
        count = 0
        for rec in read_records(wal_dir):
            rec.event()["operationType"]  # noqa: B018 - decode the event, as the baseline does
            count += 1
        return count

    base_t, base_n = best(reps, baseline)
    wal_t, wal_n = best(reps, walkit)
    if profile:
        profiled("wal.read_records", walkit)
    assert base_n == n and wal_n == n, (base_n, wal_n, n)
    return base_t, wal_t, len([p for p in wal_dir.iterdir() if p.name.endswith(".zst")])


def bench_lag(rate: int, seconds: float, tmp: Path) -> tuple[int, float, float, float]:
    with SandboxProcess() as server:
        client: pymongo.MongoClient = pymongo.MongoClient(server.uri)
        coll = client.bench.lag
        capture = ChangeCapture(server.uri, Home(tmp / "home"), database="bench")
        thread = threading.Thread(target=capture.run, name="bench-capture", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while capture.stats.checkpoints == 0 and time.monotonic() < deadline:  # the stream is open
            time.sleep(0.01)
        total = int(rate * seconds)
        start = time.monotonic()
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            coll.insert_one({"i": i, "payload": "p" * 200})
        deadline = time.monotonic() + 30
        while len(capture.stats.lags) < total and time.monotonic() < deadline:
            time.sleep(0.02)
        capture.stop()
        thread.join(30)
        client.close()
        server.stop()
    lags = sorted(capture.stats.lags)
    if not lags:
        raise SystemExit("capture recorded no lags: is the capture thread running?")
    q = statistics.quantiles(lags, n=100)
    return len(lags), q[49] * 1000, q[98] * 1000, lags[-1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="events per append/read measurement")
    parser.add_argument("--rate", type=int, default=200, help="writes per second for the lag measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the lag workload runs")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each throughput measurement (the best counts)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions for append and read")
    parser.add_argument("--no-lag", action="store_true", help="skip the capture-lag measurement")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="walkit-bench-"))
    rows: list[tuple[str, str, str, str]] = []
    try:
        for size in (300, 4096):
            events = make_events(args.n, size)
            avg = sum(len(bson.encode(e)) for e in events[:1000]) / 1000
            sub = tmp / f"s{size}"
            sub.mkdir()
            bt, wt, ct, wbytes, plain, wal_dir = bench_append(events, sub, args.reps, args.profile)
            raw_mb = args.n * avg / 1e6
            label = f"~{avg:.0f} B events"
            rows.append((f"append baseline: bson.encode + buffered write, {label}", f"{args.n / bt:,.0f}", f"{raw_mb / bt:,.1f}", "1.00"))
            rows.append((f"append WALWriter.append_event + commit, {label}", f"{args.n / wt:,.0f}", f"{raw_mb / wt:,.1f}", f"{bt / wt:.2f}"))
            rows.append(("  (same, raw events not yet inflated by pymongo)", f"{args.n / ct:,.0f}", f"{raw_mb / ct:,.1f}", f"{bt / ct:.2f}"))
            rbt, rwt, sealed = bench_read(args.n, plain, wal_dir, args.reps, args.profile)
            rows.append((f"read baseline: bson.decode_file_iter, {label}", f"{args.n / rbt:,.0f}", f"{raw_mb / rbt:,.1f}", "1.00"))
            rows.append((f"read wal.read_records ({sealed} sealed .zst + open), {label}", f"{args.n / rwt:,.0f}", f"{raw_mb / rwt:,.1f}", f"{rbt / rwt:.2f}"))
            print(f"  {label}: WAL on disk {wbytes / 1e6:.1f} MB, plain BSON {plain.stat().st_size / 1e6:.1f} MB", flush=True)
            shutil.rmtree(sub)
        print(f"{'measure':<72}{'events/s':>12}{'MB/s':>9}{'ratio':>8}")
        for label, rate, mbs, ratio in rows:
            print(f"{label:<72}{rate:>12}{mbs:>9}{ratio:>8}")
        if not args.no_lag:
            count, p50, p99, worst = bench_lag(args.rate, args.seconds, tmp)
            print(f"\ncapture lag, write -> durable in WAL ({args.rate} writes/s for {args.seconds:g} s via SandboxProcess, {count} events):")
            print(f"  p50 {p50:.1f} ms   p99 {p99:.1f} ms   max {worst:.1f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

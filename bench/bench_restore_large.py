"""Restore of LARGE documents (~1 MiB each), as ratios to a baseline measured in the same run; peak memory of the dump.

Workload: an in-process sandbox (``walkit.sandbox.Sandbox``), ``--docs`` documents of
about ``--size-mb`` MiB each in ``bench.big`` (every one a mix: a big string field, a
big binary, a big array of small subdocuments and a nested subdocument), inserted
before capture starts; then, with ``ChangeCapture`` running in a thread, a snapshot
and ``--updates`` changes round robin over the documents: three in four are
``$set`` of a small field AND of one large field (the string, the binary, the array
or the nested part in turn; the sandbox keeps no post-images, so these replay from
their updateDescription), one in four a ``replace_one`` with a new document.  Once
capture has all of them it is stopped, and each path below is timed ``--repeat``
times, the best counting:

1. ``restore(home, Target("seq", last), to_dump=<new folder>)``: snapshot + replay in
   memory, then the mongodump folder written and fsynced.
2. ``state_at(home, Target("seq", last))``: snapshot + replay in memory only.
3. ``restore(..., to_uri=<the sandbox>, to_db=<a new database each time>)``.
4. Baseline: ``bson.decode`` of every restored document's BSON and a write of its
   bytes to a buffered file, fsync at the end: exactly the bytes restored.
   Reference (not a target): ``bson.encode`` of the same documents as dicts.

Read the ratio as baseline seconds / path seconds: 1.0 = as fast as decoding and
writing the restored bytes once; 0.25 = four times slower.  The memory line gives
the dump restore's peak RSS growth over its RSS after the imports, each in a fresh
child process (VmHWM), for two targets: the first event after the snapshot (about
all of the data, one event of history) and the last one (the same data, all the
history); bounded by the data means about the same growth for both, a small
multiple of the data.  tracemalloc's peak of Python allocations of the full dump
restore (in this process) is given as well.

Correctness is checked, not assumed: the dump's ``.bson``, ``state_at``'s
documents and every database restored into the sandbox must equal, byte for byte
and by ``_id``, the live collection read at the end; otherwise the script exits 1
saying which documents differ.

    .venv/bin/python bench/bench_restore_large.py [--docs 64] [--size-mb 1] [--updates 192] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bson
import pymongo
from bench_restore import capturing, peak_rss_kb, wait_for_events  # the sibling scripts: bench/ is on sys.path when run
from bench_wal import WORDS  # the sibling script: bench/ is on sys.path when run
from bson.binary import Binary
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

import walkit
from walkit.home import Home
from walkit.sandbox import Sandbox
from walkit.wal.format import read_records

RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
DB, COLL = "bench", "big"
MIB = 1 << 20
LARGE = ("body", "blob", "items", "nested")  # the large fields an update replaces, in turn


# -- the documents ------------------------------------------------------------------------------------------


def words(rng: random.Random, size: int) -> str:
    """About ``size`` bytes of words (fast: one C-level choices + join)."""
    text = " ".join(rng.choices(WORDS, k=size // 6 + 1))
    return text[:size]


def large_field(rng: random.Random, name: str, size: int) -> Any:
    """One large field of about ``size`` bytes of BSON."""
    if name == "body":
        return words(rng, size)
    if name == "blob":
        return Binary(rng.randbytes(size))
    if name == "items":  # ~48 bytes of BSON per subdocument
        return [{"k": j, "sku": f"s{rng.randrange(10**6):06d}", "qty": rng.random()} for j in range(max(1, size // 48))]
    return {"a": {"b": {"c": {"text": words(rng, size * 3 // 4), "vals": [rng.randrange(1 << 30) for _ in range(max(1, size // 4 // 7))]}}}}


def make_doc(rng: random.Random, i: int, size: int, rev: int = 0) -> dict[str, Any]:
    """Document ``i`` of about ``size`` bytes: 40% string, 30% binary, 20% array of subdocuments, 10% nested."""
    shares = {"body": 0.4, "blob": 0.3, "items": 0.2, "nested": 0.1}
    doc: dict[str, Any] = {"_id": i, "title": f"document {i}", "rev": rev}
    for name, share in shares.items():
        doc[name] = large_field(rng, name, int(size * share))
    return doc


# -- capture (as bench_restore.capturing / tests/helpers.capturing) -----------------------------------------


# -- measuring ----------------------------------------------------------------------------------------------


def best(reps: int, fn: Callable[[int], Any], after: Callable[[int, Any], None] | None = None) -> tuple[float, Any]:
    """The fastest of ``reps`` runs of ``fn(rep)`` (seconds) and what it returned; ``after(rep, result)``
    (a check, a clean-up) runs untimed after each."""
    runs = []
    for rep in range(reps):
        gc.collect()
        os.sync()  # earlier runs' dirty pages are written back now, not during this run
        start = time.perf_counter()
        result = fn(rep)
        runs.append((time.perf_counter() - start, result))
        if after is not None:
            after(rep, result)
    return min(runs, key=lambda r: r[0])


def child_dump(spec: dict[str, Any]) -> None:
    """Run in a fresh process: one dump restore, then its RSS after the imports and its peak, as JSON."""
    idle = peak_rss_kb()
    walkit.restore(Home(spec["home"]), walkit.Target("seq", spec["seq"]), to_dump=Path(spec["dump"]), database=DB, progress=False)
    print(json.dumps({"idle_kb": idle, "peak_kb": peak_rss_kb()}))


def rss_growth(home: Home, seq: int, folder: Path) -> int:
    """Peak RSS growth (bytes) of a dump restore to ``seq`` in a fresh child process: what the
    restore alone needs (in this process, earlier runs' freed memory would hide it)."""
    spec = {"home": str(home.path), "seq": seq, "dump": str(folder)}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=600)
    shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"the restoring child failed:\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return (report["peak_kb"] - report["idle_kb"]) * 1024


def traced_peak(fn: Callable[[], Any]) -> int:
    """tracemalloc's peak of Python allocations over ``fn()``, in bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- correctness --------------------------------------------------------------------------------------------


def compare(what: str, got: dict[Any, bytes], want: dict[Any, bytes]) -> None:
    """Exit 1 unless ``got`` equals ``want`` byte for byte by ``_id``."""
    missing = sorted(set(want) - set(got), key=repr)
    extra = sorted(set(got) - set(want), key=repr)
    differ = sorted((k for k in set(got) & set(want) if bytes(got[k]) != bytes(want[k])), key=repr)
    if missing or extra or differ:
        lines = [f"WRONG RESTORE: {what} does not equal the live collection {DB}.{COLL}:"]
        if missing:
            lines.append(f"  {len(missing)} documents missing, _id {missing[:10]}")
        if extra:
            lines.append(f"  {len(extra)} documents not in the live collection, _id {extra[:10]}")
        for key in differ[:5]:
            g, w = bytes(got[key]), bytes(want[key])
            at = next((i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b), min(len(g), len(w)))
            g_rev, w_rev = bson.decode(g).get("rev"), bson.decode(w).get("rev")
            lines.append(f"  _id {key!r}: {len(g):,} B restored vs {len(w):,} B live, first difference at byte {at:,}; rev {g_rev} vs {w_rev}")
        if len(differ) > 5:
            lines.append(f"  ... {len(differ) - 5} more documents differ")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(1)


def by_id(raws: Iterator[bytes] | list[bytes]) -> dict[Any, bytes]:
    return {RawBSONDocument(raw, RAW)["_id"]: bytes(raw) for raw in raws}


def read_dump(folder: Path) -> dict[Any, bytes]:
    path = folder / DB / f"{COLL}.bson"
    if not path.exists():
        raise SystemExit(f"WRONG RESTORE: the dump has no {path.relative_to(folder)} (it holds {sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))})")
    with path.open("rb") as f:
        return {doc["_id"]: bytes(doc.raw) for doc in bson.decode_file_iter(f, RAW)}


def read_live(client: pymongo.MongoClient, db: str) -> dict[Any, bytes]:
    coll = client[db].get_collection(COLL, codec_options=RAW)
    return {doc["_id"]: bytes(doc.raw) for doc in coll.find({}, batch_size=16)}


# -- the bench ----------------------------------------------------------------------------------------------


def build(box: Sandbox, home: Home, docs: int, size: int, changes: int) -> tuple[int, int, int, int]:
    """The workload; returns (first event's seq, last seq, events captured, their bytes)."""
    rng = random.Random(size)
    client: pymongo.MongoClient = pymongo.MongoClient(box.uri)
    coll = client[DB][COLL]
    start = time.perf_counter()
    for first in range(0, docs, 8):
        coll.insert_many([make_doc(rng, i, size) for i in range(first, min(docs, first + 8))])
    print(f"  inserted {docs} documents in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    with capturing(box.uri, home.path, DB) as cap:
        walkit.take_snapshot(box.uri, home, database=DB, progress=False)
        for k in range(changes):
            i, rev = k % docs, k // docs + 1
            if k % 4 == 3:
                coll.replace_one({"_id": i}, make_doc(rng, i, size, rev))
            else:
                name = LARGE[(k // 4 + k) % len(LARGE)]
                share = {"body": 0.4, "blob": 0.3, "items": 0.2, "nested": 0.1}[name]
                coll.update_one({"_id": i}, {"$set": {"rev": rev, name: large_field(rng, name, int(size * share))}})
        wait_for_events(cap, changes)
        seq = cap.stats.last_seq
        events = cap.stats.events
    client.close()
    if seq is None:
        raise SystemExit("capture recorded no event")
    records = list(read_records(home.wal_dir, kinds=("e",)))
    history = sum(len(rec.get("ev").raw) for rec in records)
    print(f"  snapshot + {changes} changes captured ({events} events, {history / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s", flush=True)
    return records[0].seq, seq, events, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=64, help="large documents in the collection (default 64)")
    parser.add_argument("--size-mb", type=float, default=1.0, help="size of each document in MiB (default 1)")
    parser.add_argument("--updates", type=int, default=192, help="changes after the snapshot; one in four is a replace (default 192)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each path; the best counts (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: --docs 8 --size-mb 0.25 --updates 16 --repeat 1")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_dump(json.loads(args.child))
        return
    if args.quick:
        args.docs, args.size_mb, args.updates, args.repeat = 8, 0.25, 16, 1
    size = int(args.size_mb * MIB)

    tmp = Path(tempfile.mkdtemp(prefix="walkit-bench-large-"))
    began = time.perf_counter()
    try:
        with Sandbox() as box:
            home = Home(tmp / "home").create()
            print(f"restore of {args.docs} documents of ~{args.size_mb:g} MiB, {args.updates} changes after the snapshot, best of {args.repeat}", flush=True)
            first, seq, events, history = build(box, home, args.docs, size, args.updates)
            target = walkit.Target("seq", seq)
            client: pymongo.MongoClient = pymongo.MongoClient(box.uri)
            live = read_live(client, DB)
            if len(live) != args.docs:
                raise SystemExit(f"the live collection holds {len(live)} documents, not {args.docs}")
            nbytes = sum(len(raw) for raw in live.values())
            mb = nbytes / 1e6

            def dump(rep: int) -> Path:
                folder = tmp / f"dump-{rep}"
                walkit.restore(home, target, to_dump=folder, database=DB, progress=False)
                return folder

            def dump_checked(rep: int, folder: Path) -> None:
                compare(f"the dump {folder.name}/{DB}/{COLL}.bson", read_dump(folder), live)
                shutil.rmtree(folder)

            def at(rep: int) -> dict[str, list[bytes]]:
                return walkit.state_at(home, target, database=DB)

            def at_checked(rep: int, state: dict[str, list[bytes]]) -> None:
                compare("state_at", by_id(state.get(f"{DB}.{COLL}", [])), live)

            def into(rep: int) -> str:
                name = f"restored_{rep}"
                walkit.restore(home, target, to_uri=box.uri, to_db=name, database=DB, progress=False)
                return name

            def into_checked(rep: int, name: str) -> None:
                compare(f"the database {name} restored into the sandbox", read_live(client, name), live)
                client.drop_database(name)

            raws = list(live.values())
            dicts = [bson.decode(raw) for raw in raws]
            plain = tmp / "baseline.bson"

            def baseline(rep: int) -> int:
                with plain.open("wb", buffering=1 << 20) as out:
                    for raw in raws:
                        bson.decode(raw)
                        out.write(raw)
                    out.flush()
                    os.fsync(out.fileno())
                return len(raws)

            def encode(rep: int) -> int:
                return sum(len(bson.encode(doc)) for doc in dicts)

            print("  timing ...", flush=True)
            base_t, _ = best(args.repeat, baseline)
            enc_t, _ = best(args.repeat, encode)
            dump_t, _ = best(args.repeat, dump, dump_checked)
            at_t, _ = best(args.repeat, at, at_checked)
            into_t, _ = best(args.repeat, into, into_checked)

            print("  peak memory of dump restores in child processes ...", flush=True)
            growth_first = rss_growth(home, first, tmp / "dump-first")
            growth_last = rss_growth(home, seq, tmp / "dump-last")
            traced = traced_peak(lambda: shutil.rmtree(dump(-2)))
            client.close()

        rows = [
            ("baseline: bson.decode + write of the restored bytes, fsync", base_t),
            ("reference: bson.encode of the same documents (dicts)", enc_t),
            ("1. restore(to_dump): snapshot + replay in memory + dump", dump_t),
            ("2. state_at: snapshot + replay in memory", at_t),
            ("3. restore(to_uri, to_db): into the sandbox (in-process)", into_t),
        ]
        print(f"\n{args.docs} documents, {mb:.1f} MB restored (~{nbytes / args.docs / MIB:.2f} MiB each); "
              f"history: {events} events, {history / 1e6:.1f} MB; best of {args.repeat}")
        print(f"{'path':<60}{'seconds':>9}{'MB/s':>9}{'ratio':>8}")
        for label, secs in rows:
            print(f"{label:<60}{secs:>9.3f}{mb / secs:>9.1f}{base_t / secs:>8.2f}")
        print(f"dump restore peak RSS growth (fresh process): {growth_first / 1e6:.0f} MB to the 1st event, "
              f"{growth_last / 1e6:.0f} MB to the last ({growth_last / nbytes:.1f}x the data; history {history / 1e6:.0f} MB); "
              f"tracemalloc peak {traced / 1e6:.0f} MB")
        print(f"correctness: dump, state_at and {args.repeat} sandbox restores equal the live collection byte for byte (by _id)")
        print(f"total {time.perf_counter() - began:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

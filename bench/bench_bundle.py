"""Bundle build throughput and size, and off-site restore throughput, as ratios to baselines of the same run.

(1) Build: ``build_bundle`` of a home holding a WAL of ``--events`` change events
    (~350 B, written directly with ``WALWriter``) and a snapshot of ``--docs``
    documents (~300 B), without and with read-back verification, and encrypted
    (age).  Baseline: the same uncompressed bytes (the WAL's records as one
    file, the snapshot's files) compressed by ``zstandard`` at the same level
    (3) from files on disk into one output file.  Throughput counts
    uncompressed input bytes; the size ratio is bundle bytes / baseline bytes.
(2) Off-site restore: the bundle uploaded to a ``FileSystemBackupProvider``
    (no rate limit, no extra compression), then ``restore_from_external`` of
    the state after the last event into a mongodump folder.  Baseline: the
    same ``restore`` from the local home (no download, no unpacking, no checks).

    .venv/bin/python bench/bench_bundle.py [--events 200000] [--docs 100000] [--reps 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bson
import pyrage
import zstandard
from bench_restore import BATCH, EPOCH, make_docs  # the sibling scripts: bench/ is on sys.path when run
from bench_wal import best, make_events

from walkit import __version__
from walkit.home import Home
from walkit.offsite.bundle import LEVEL, build_bundle
from walkit.offsite.external import restore_from_external
from walkit.providers import FileSystemBackupProvider
from walkit.restore.local import restore
from walkit.restore.plan import Target
from walkit.restore.snapshot import list_snapshots
from walkit.wal.format import list_segments
from walkit.wal.writer import WALWriter, raw_event

Row = tuple[str, float, float]  # name, seconds, ratio to baseline


def make_home(root: Path, events: int, docs: int) -> tuple[Home, int]:
    """A home with a snapshot of ``docs`` documents (taken "before" the WAL) and a WAL of ``events`` events."""
    home = Home(root / "home").create()
    snap_id = "snap-20240501T000000.000Z-bench0"
    folder = home.path / "snapshots" / snap_id
    (folder / "shop").mkdir(parents=True)
    data = b"".join(bson.encode(d) for d in make_docs(docs, 300))
    (folder / "shop" / "customers.bson").write_bytes(data)
    meta = json.dumps({"indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}], "uuid": "", "collectionName": "customers", "type": "collection"})
    (folder / "shop" / "customers.metadata.json").write_text(meta, encoding="utf-8")
    first = {"t": 1714521600, "i": 1}
    manifest = {
        "format": 1, "walkit": __version__, "id": snap_id, "created": EPOCH.isoformat(), "consistent_from": EPOCH.isoformat(),
        "start": first, "end": first, "end_wall": EPOCH.isoformat(), "database": "shop",
        "collections": [{"db": "shop", "name": "customers", "file": "shop/customers.bson", "count": docs, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(), "metadata_sha256": hashlib.sha256(meta.encode()).hexdigest()}],
        "documents": docs, "bytes": len(data), "wal_seq_before": None, "wal_seq_after": None,
        "scope": {"database": "shop", "collections": [], "exclude": []},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    with WALWriter(home.wal_dir) as writer:
        for i, ev in enumerate(make_events(events, 350)):
            writer.append_event(raw_event(ev))
            if i % BATCH == BATCH - 1:
                writer.commit()
    return home, len(data)


def raw_inputs(home: Home, tmp: Path) -> list[Path]:
    """The bytes a bundle compresses, as plain files: the WAL's segments uncompressed, and the snapshot's files."""
    wal = tmp / "wal.raw"
    with wal.open("wb") as out:
        for seg in list_segments(home.wal_dir).segments:
            with seg.open() as f:
                shutil.copyfileobj(f, out, 1 << 20)
    snap = list_snapshots(home)[0]
    return [wal, snap.path / "manifest.json"] + [snap.path / p for e in snap.collections for p in (e.file, e.metadata_file)]


def zstd_baseline(files: list[Path], out: Path) -> int:
    cctx = zstandard.ZstdCompressor(level=LEVEL)
    with out.open("wb") as f:
        for path in files:
            with path.open("rb") as src:
                cctx.copy_stream(src, f, read_size=1 << 20, write_size=1 << 20)
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="change events in the WAL")
    parser.add_argument("--docs", type=int, default=100_000, help="documents in the snapshot")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (the best counts)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="walkit-bench-bundle-"))
    try:
        began = time.perf_counter()
        print(f"building a home: {args.events:,} WAL events, a snapshot of {args.docs:,} documents ...", flush=True)
        home, _ = make_home(tmp, args.events, args.docs)
        inputs = raw_inputs(home, tmp)
        raw = sum(p.stat().st_size for p in inputs)
        snap = list_snapshots(home)[0]
        out = tmp / "out"
        out.mkdir()
        base_t, base_size = best(args.reps, lambda rep: zstd_baseline(inputs, out / f"baseline-{rep}.zst"))
        recipient = pyrage.x25519.Identity.generate().to_public()
        rows: list[tuple[str, float, int]] = [("zstd level 3, same bytes (baseline)", base_t, base_size)]
        for name, kwargs in (
            ("build_bundle, no read-back", {"verify": False}),
            ("build_bundle (verified)", {"verify": True}),
            ("build_bundle, verified + age", {"verify": True, "recipients": [recipient]}),
        ):
            seconds, bundle = best(args.reps, lambda rep, kw=kwargs: build_bundle(home, out / f"b-{len(rows)}-{rep}.tar", snapshot=snap, **kw))
            rows.append((name, seconds, bundle.size))
        print(f"\n(1) bundle build: {raw / 1e6:,.1f} MB uncompressed input ({args.events:,} events + {args.docs:,} documents)")
        print(f"{'':<40}{'MB/s':>10}{'ratio':>8}{'bytes':>14}{'size ratio':>12}")
        for name, seconds, size in rows:
            print(f"{name:<40}{raw / seconds / 1e6:>10.1f}{base_t / seconds:>8.2f}{size:>14,}{size / base_size:>12.3f}")

        provider = FileSystemBackupProvider(tmp / "offsite", compress=False, max_backups=None, rate_limit_hours=0)
        bundle = build_bundle(home, out / "upload.tar", snapshot=snap)
        provider.upload(bundle.path, bundle.metadata())
        target = Target("seq", args.events)
        local_t, local = best(args.reps, lambda rep: restore(home, target, to_dump=tmp / f"local-{rep}", progress=False))
        off_t, off = best(args.reps, lambda rep: restore_from_external(provider, target, workdir=tmp, to_dump=tmp / f"offsite-{rep}", progress=False))
        assert off.documents == local.documents, (off.documents, local.documents)
        print(f"\n(2) restore of {args.docs:,} documents + {args.events:,} events into a dump folder")
        print(f"{'':<40}{'events/s':>10}{'ratio':>8}{'seconds':>10}")
        for name, seconds in (("local restore (baseline)", local_t), ("restore_from_external (filesystem)", off_t)):
            print(f"{name:<40}{args.events / seconds:>10,.0f}{local_t / seconds:>8.2f}{seconds:>10.2f}")
        print(f"\ntotal {time.perf_counter() - began:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

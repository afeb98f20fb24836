"""Soak: the backup worker under a sustained write workload, days of schedule in minutes.

Three processes, as in a real deployment: the sandbox (``walkit sandbox``), a writer
(this script in ``writer`` mode: inserts, updates and deletes at ``--rate`` per second,
each acknowledged write logged to a file), and this process, which runs
:class:`walkit.service.worker.BackupService` with a :class:`SimulatedClock` advanced
``--speed`` simulated seconds per real second (default 3600: an hour a second, a day
in 24 s; it starts at the real time, the daily call at the next whole hour), so local
snapshots (every 6 h), the daily call (mock service, 5 % failures, seeded so that the second call
fails) and retention (WAL 1 day, snapshots 2 days) all happen many times.  Capture
itself runs on the real clock: its lag is seconds from an event's ``wallTime`` (the
sandbox's clock) to the fsync of its WAL record, for every event of the run.  WAL
segments are sealed every 10 real seconds (``segment_seconds``) instead of hourly, so
retention has sealed segments to remove while the days fly by.

Reported: writes/s; events captured (document changes, one per write, and schema events:
capture shows MongoDB 6.0+'s expanded events, so the first insert's implicit ``create`` of
``soak.items`` is one too); capture lag p50/p99/max; RSS of the worker's
process every ``--sample`` seconds (first, last, max, and the growth of the mean of the
last third of the samples after a 45 s warm-up -- two daily calls, the first bundles and
snapshots sized their buffers -- over the mean of the first third: "flat" when it is at most
8 MiB and 15 %); daily calls ok/failed; snapshots taken; WAL bytes on disk
(retention keeps them bounded) and the figures of the exactly-once check (every
acknowledged write in the local WAL or the bundles the service holds exactly once, and
which schema events they hold besides).
Baseline, same run: the same writer against the same sandbox with no worker, for
``--baseline-seconds``; the ratio is writes/s with the worker over writes/s without.
``--rate 0`` writes as fast as the sandbox takes them (the ratio is then the worker's
cost in write throughput).

    .venv/bin/python bench/bench_soak.py                 # 150 s, 300 writes/s
    .venv/bin/python bench/bench_soak.py --seconds 20    # a quick look
    .venv/bin/python bench/bench_soak.py --rate 0 --seconds 60

tests/service/test_soak.py runs :func:`soak` and asserts on what it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
PAD = "x" * 200
LIVE_DOCS = 5000  # past this many documents, the writer deletes instead of inserting
WARMUP_SECONDS = 45.0  # RSS samples before this are not judged
FLAT_MIB, FLAT_FRACTION = 8, 0.15  # RSS "flat": the late mean at most this much above the early mean


# -- the writer (a separate process) -----------------------------------------------------------------


def writer_main(uri: str, db: str, rate: float, ops_path: str, seed: int) -> int:
    """Write until SIGTERM; log each acknowledged write as ``i ID`` / ``u MARK`` / ``d ID``; print a summary."""
    import pymongo

    halt = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    rng = random.Random(seed)
    client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
    coll = client[db].items
    live: list[int] = []
    n = 0
    interval = 1.0 / rate if rate > 0 else 0.0
    with open(ops_path, "w", buffering=1 << 16) as log:
        print("writing", flush=True)
        started = due = time.monotonic()
        last_flush = started
        while not halt.is_set():
            n += 1
            roll = rng.random()
            if len(live) < 50 or (roll < 0.40 and len(live) < LIVE_DOCS):
                coll.insert_one({"_id": n, "pad": PAD, "n": n, "at": datetime.now(UTC)})
                live.append(n)
                log.write(f"i {n}\n")
            elif roll < 0.75:
                assert coll.update_one({"_id": rng.choice(live)}, {"$set": {"u": n}, "$inc": {"touched": 1}}).modified_count == 1
                log.write(f"u {n}\n")
            else:
                victim = live.pop(rng.randrange(len(live)))
                assert coll.delete_one({"_id": victim}).deleted_count == 1
                log.write(f"d {victim}\n")
            now = time.monotonic()
            if now - last_flush > 0.5:
                log.flush()
                last_flush = now
            if interval:
                due += interval
                if due > now:
                    time.sleep(due - now)
                elif now - due > 1.0:
                    due = now  # fell behind: no catch-up burst
        elapsed = time.monotonic() - started
    client.close()
    print(json.dumps({"writes": n, "seconds": elapsed}), flush=True)
    return 0


class Writer:
    """The writer process, from the outside."""

    def __init__(self, uri: str, db: str, rate: float, ops_path: Path, seed: int = 1) -> None:
        self.ops_path = ops_path
        cmd = [sys.executable, str(Path(__file__).resolve()), "writer", uri, db, str(rate), str(ops_path), str(seed)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "writing":
            self.proc.kill()
            raise RuntimeError(f"the writer did not start: {line!r}")

    def stop(self) -> dict[str, Any]:
        """SIGTERM; the writer finishes its current write and reports ``writes`` and ``seconds``."""
        os.kill(self.proc.pid, signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the writer failed ({self.proc.returncode}): {out}")
        summary = json.loads(out.strip().splitlines()[-1])
        summary["rate"] = summary["writes"] / summary["seconds"]
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def read_ops(path: Path) -> list[tuple[str, int]]:
    return [(kind, int(key)) for kind, key in (line.split() for line in path.read_text().splitlines() if line.strip())]


# -- measuring -------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:  # removed while we looked
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def flatness(samples: list[float], warmup: int) -> tuple[float, float]:
    """Growth of the mean of the last third of ``samples[warmup:]`` over the mean of its first third:
    (bytes, fraction)."""
    rest = samples[warmup:]
    third = max(1, len(rest) // 3)
    first, last = statistics.fmean(rest[:third]), statistics.fmean(rest[-third:])
    return last - first, (last - first) / first


def warmup_samples(samples: list[Any]) -> int:
    return sum(1 for s in samples if s.t < WARMUP_SECONDS)


@dataclass
class Sample:
    t: float  # real seconds since the writes began
    rss: int
    wal_bytes: int
    snapshots: int
    events: int
    lag_p99: float | None
    phase: str


@dataclass
class SoakResult:
    seconds: float
    rate_target: float
    writer: dict[str, Any]
    baseline: dict[str, Any] | None
    lags: list[float]
    samples: list[Sample]
    live: dict[str, Any]
    home: Path
    mock_dir: Path
    ops_path: Path
    uri: str
    db: str
    sim_start: datetime
    sim_end: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    #: Document changes (insert/update/replace/delete) capture wrote: one per write.  ``live["events_captured"]``
    #: counts every event, schema events too (the ``create`` of the collection at its first insert).
    changes: int = 0

    @property
    def ratio(self) -> float | None:
        return self.writer["rate"] / self.baseline["rate"] if self.baseline else None


def baseline(uri: str, db: str, rate: float, seconds: float, tmp: Path) -> dict[str, Any]:
    """The same writer against the same sandbox, no worker."""
    writer = Writer(uri, db, rate, tmp / "baseline-ops.txt", seed=99)
    time.sleep(seconds)
    return writer.stop()


def soak(
    uri: str,
    tmp: Path,
    *,
    seconds: float = 150.0,
    rate: float = 300.0,
    speed: float = 3600.0,
    sample_every: float = 10.0,
    baseline_seconds: float = 15.0,
    failure_rate: float = 0.05,
    tick: float = 0.1,
    progress: bool = False,
) -> SoakResult:
    """Baseline, then the worker (in this process) under the writer for ``seconds``; everything
    stopped cleanly before it returns."""
    from walkit.clock import SimulatedClock
    from walkit.providers.mock import MockExternalBackupProvider
    from walkit.service.worker import BackupService

    base = baseline(uri, "soak_baseline", rate, baseline_seconds, tmp) if baseline_seconds > 0 else None
    if progress and base:
        print(f"baseline: {base['rate']:.0f} writes/s without the worker", file=sys.stderr, flush=True)

    # The simulated clock starts at the real time (then runs ahead of it), the daily call at the next
    # whole hour: capture's own snapshots are stamped with the real clock, and the sandbox stamps
    # events and snapshots' consistency times with it too; starting together keeps them comparable.
    sim_start = datetime.now(UTC)
    backup_hour = (sim_start + timedelta(hours=1)).hour
    clock = SimulatedClock(sim_start)
    home, mock_dir, db = tmp / "home", tmp / "valerix", "soak"
    provider = MockExternalBackupProvider(latency_ms=200, failure_rate=failure_rate, seed=56, state_dir=mock_dir, clock=clock)
    service = BackupService(
        uri, home, database=db, provider=provider, daily_backup_hour=backup_hour, snapshot_interval_hours=6,
        wal_retention_days=1, snapshot_retention_days=2, clock=clock, tick=tick,
        capture_options={"segment_seconds": 10.0},
    )
    halt = threading.Event()

    def run_clock() -> None:
        last = time.monotonic()
        while not halt.wait(0.02):
            t = time.monotonic()
            clock.advance((t - last) * speed)
            last = t

    service.start()
    deadline = time.monotonic() + 30
    while service.capture is None or service.capture.stats.checkpoints == 0:  # the change stream is open
        if time.monotonic() > deadline:
            service.stop()
            raise RuntimeError("capture did not open its change stream within 30 s")
        time.sleep(0.02)
    ops_path = tmp / "ops.txt"
    writer = Writer(uri, db, rate, ops_path)
    started = time.monotonic()
    clock_thread = threading.Thread(target=run_clock, name="soak-clock", daemon=True)
    clock_thread.start()
    samples: list[Sample] = []

    def sample() -> None:
        live = service.live()
        samples.append(Sample(
            round(time.monotonic() - started, 1), rss_bytes(), tree_bytes(home / "wal"), live_snapshots(home),
            live["events_captured"], live["capture_lag_p99_seconds"], live["phase"],
        ))
        if progress:
            s = samples[-1]
            print(f"{s.t:6.0f} s  rss {s.rss / MiB:6.1f} MiB  wal {s.wal_bytes / MiB:6.1f} MiB  events {s.events:7d}  "
                  f"lag p99 {s.lag_p99}  calls ok/failed {live['uploads_ok']}/{live['uploads_failed']}  {clock.now():%a %H:%M}",
                  file=sys.stderr, flush=True)

    try:
        sample()
        next_sample, end = started + sample_every, started + seconds
        while (now := time.monotonic()) < end:
            time.sleep(max(0.0, min(end, next_sample) - now))
            if time.monotonic() >= next_sample:
                sample()
                next_sample += sample_every
        summary = writer.stop()
        if samples[-1].t < seconds - 1:
            sample()
    except BaseException:
        writer.kill()
        halt.set()
        service.stop()
        raise
    # everything the writer did is captured (one document change per write), then a clean stop
    deadline = time.monotonic() + 60
    while changes_captured(service) < summary["writes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    halt.set()
    clock_thread.join(5)
    service.stop()  # the last events' lags are recorded at their fsync
    lags = list(service.capture.stats.lags) if service.capture else []
    live = service.live()
    return SoakResult(
        seconds, rate, summary, base, lags, samples, live, home, mock_dir, ops_path, uri, db, sim_start, clock.now(), {"backup_hour": backup_hour},
        changes=changes_captured(service),
    )


def changes_captured(service: Any) -> int:
    """Document changes (insert, update, replace, delete) the worker's capture has written in its current run
    (the soak expects no capture restart): the writes it has captured, schema events (``create``...) apart."""
    capture = service.capture
    return capture.stats.changes if capture is not None else 0


def live_snapshots(home: Path) -> int:
    folder = home / "snapshots"
    return len([p for p in folder.iterdir() if p.name.startswith("snap-")]) if folder.is_dir() else 0


# -- reading back ------------------------------------------------------------------------------------------


@dataclass
class Check:
    """What the WAL and the service's bundles hold, against what the writer did."""

    writes: int
    events: int  # change events (document changes and schema events), by seq, local WAL and bundles together
    changes: int  # the document changes (insert, update, replace, delete) among them
    schema: list[tuple[int, str, Any]]  # the other events: (seq, operationType, collection), e.g. (1, "create", "items")
    first_write_seq: int | None  # the seq of the event of the writer's first write
    first_local_seq: int | None
    missing: list[tuple[str, int]]
    doubled: list[tuple[str, int]]
    strangers: list[tuple[str, int]]
    seq_holes: list[int]
    mismatched_seqs: list[int]  # in both the WAL and a bundle, with different bytes
    gaps: int
    calls: list[dict[str, Any]]  # the ledger's, oldest first
    service_calls: list[dict[str, Any]]  # the mock service's own log
    too_close: list[tuple[str, str]]  # spent calls less than 24 h apart (ledger or service)
    segments_pruned: int
    snapshots_on_disk: int


def offsite_records(mock_dir: Path, scratch: Path) -> list[Any]:
    from walkit.clock import SimulatedClock
    from walkit.offsite.bundle import unpack_bundle
    from walkit.providers.mock import MockExternalBackupProvider
    from walkit.wal.format import read_records

    scratch.mkdir(parents=True, exist_ok=True)
    service = MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=mock_dir, clock=SimulatedClock())
    out: list[Any] = []
    for i, stored in enumerate(service.list()):
        path = scratch / f"bundle-{i}"
        with path.open("wb") as f:
            service.download_to(stored.ref, f)
        unpack_bundle(path, scratch / f"unpacked-{i}", snapshot=False)
        out += list(read_records(scratch / f"unpacked-{i}" / "wal"))
        shutil.rmtree(scratch / f"unpacked-{i}")
        path.unlink()
    return out


def check(result: SoakResult, scratch: Path) -> Check:
    from walkit.clock import SimulatedClock
    from walkit.home import Home
    from walkit.offsite.quota import QuotaLedger
    from walkit.offsite.upload import quota_dir
    from walkit.providers.mock import MockExternalBackupProvider
    from walkit.wal.format import list_segments, read_records

    local = list(read_records(result.home / "wal"))
    by_seq: dict[int, Any] = {}
    mismatched: list[int] = []
    for rec in offsite_records(result.mock_dir, scratch) + local:
        if rec.seq in by_seq and by_seq[rec.seq].raw != rec.raw:
            mismatched.append(rec.seq)
        by_seq[rec.seq] = rec
    seqs = sorted(by_seq)
    holes = sorted(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))
    got: list[tuple[str, int]] = []
    schema: list[tuple[int, str, Any]] = []
    got_seqs: list[int] = []
    gaps = 0
    for seq in seqs:
        rec = by_seq[seq]
        if rec.kind == "g":
            gaps += 1
            continue
        ev = rec.event()
        kind = ev["operationType"]
        if kind == "insert":
            got.append(("i", ev["documentKey"]["_id"]))
        elif kind == "update":
            got.append(("u", ev["updateDescription"]["updatedFields"]["u"]))
        elif kind == "delete":
            got.append(("d", ev["documentKey"]["_id"]))
        else:  # create, createIndexes, drop...: not a write to a document
            schema.append((seq, kind, ev["ns"].get("coll")))
            continue
        got_seqs.append(seq)
    ops = read_ops(result.ops_path)
    first_write_seq = got_seqs[got.index(ops[0])] if ops and ops[0] in got else None
    counts, wanted = Counter(got), set(ops)
    ledger = QuotaLedger(quota_dir(Home(result.home)))
    calls = [{"at": c.at, "ok": c.ok, "spent": c.spent, "error": c.error} for c in ledger.calls()]
    service_calls = MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=result.mock_dir, clock=SimulatedClock()).calls
    too_close: list[tuple[str, str]] = []
    spent = sorted(c["at"] for c in calls if c["spent"])
    seen = sorted(_when(c["at"]) for c in service_calls if c["outcome"] != "rate_limited")
    for times in (spent, seen):
        too_close += [(a.isoformat(), b.isoformat()) for a, b in zip(times, times[1:], strict=False) if b - a < timedelta(hours=24)]
    segments = list_segments(result.home / "wal").segments
    return Check(
        writes=len(ops), events=len(got) + len(schema), changes=len(got), schema=schema, first_write_seq=first_write_seq,
        first_local_seq=local[0].seq if local else None,
        missing=[op for op in ops if op not in counts], doubled=[op for op, n in counts.items() if n > 1],
        strangers=[op for op in counts if op not in wanted], seq_holes=holes, mismatched_seqs=mismatched, gaps=gaps,
        calls=calls, service_calls=service_calls, too_close=too_close,
        segments_pruned=(segments[0].index - 1) if segments else 0, snapshots_on_disk=live_snapshots(result.home),
    )


def _when(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


# -- the report ---------------------------------------------------------------------------------------------


def report(result: SoakResult, checked: Check | None) -> str:
    rss = [s.rss for s in result.samples]
    warmup = min(warmup_samples(result.samples), max(0, len(rss) - 3))
    grow, frac = flatness([float(x) for x in rss], warmup) if len(rss) >= 2 else (0.0, 0.0)
    live = result.live
    lines = [
        f"soak: {result.seconds:.0f} s of writes, simulated {result.sim_start:%Y-%m-%d %H:%M} -> {result.sim_end:%Y-%m-%d %H:%M} "
        f"({(result.sim_end - result.sim_start) / timedelta(days=1):.1f} days)",
        f"writes/s with the worker: {result.writer['rate']:.0f} (target {result.rate_target:g}; {result.writer['writes']} writes)",
    ]
    if result.baseline:
        lines.append(f"writes/s without it (baseline, same run): {result.baseline['rate']:.0f}; ratio {result.ratio:.2f}")
    lines += [
        f"events captured: {live['events_captured']} ({result.changes} document changes, the others schema events); capture restarts {live['capture_restarts']}, errors {live['errors']}, gaps {live['gaps']}",
        f"capture lag (wallTime -> fsync, {len(result.lags)} events{'' if len(result.lags) >= live['events_captured'] else ': the last ones, as many as capture keeps'}): p50 {percentile(result.lags, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(result.lags, 0.99) * 1000:.0f} ms, max {max(result.lags, default=float('nan')) * 1000:.0f} ms",
        f"RSS: first {rss[0] / MiB:.1f} MiB, last {rss[-1] / MiB:.1f} MiB, max {max(rss) / MiB:.1f} MiB; after {warmup} warm-up samples "
        f"the last third's mean is {grow / MiB:+.1f} MiB ({frac:+.1%}) over the first third's: "
        f"{'flat' if grow <= FLAT_MIB * MiB and frac <= FLAT_FRACTION else 'GROWING'}",
        "RSS samples (MiB): " + " ".join(f"{s.t:.0f}s:{s.rss / MiB:.1f}" for s in result.samples),
        f"daily calls: {live['uploads_ok']} ok, {live['uploads_failed']} failed; local snapshots taken {live['snapshots_taken']}",
        "WAL on disk (MiB): " + " ".join(f"{s.t:.0f}s:{s.wal_bytes / MiB:.1f}" for s in result.samples),
    ]
    if checked is not None:
        lines += [
            f"snapshots on disk at the end: {checked.snapshots_on_disk}; WAL segments pruned: {checked.segments_pruned} "
            f"(local WAL starts at seq {checked.first_local_seq})",
            f"exactly once (WAL + bundles): {checked.writes} writes, {checked.changes} document changes, {len(checked.missing)} missing, "
            f"{len(checked.doubled)} doubled, {len(checked.strangers)} unknown, {len(checked.seq_holes)} seq holes, {checked.gaps} gaps; "
            f"schema events (seq, type, collection): {checked.schema or 'none'}, the first write's at seq {checked.first_write_seq}",
            f"calls: ledger {[('ok' if c['ok'] else 'failed' if c['ok'] is False else 'unknown') for c in checked.calls]}, "
            f"service {[c['outcome'] for c in checked.service_calls]}; two in one 24 h window: {checked.too_close or 'never'}",
        ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        uri, db, rate, ops, seed = sys.argv[2:7]
        return writer_main(uri, db, float(rate), ops, int(seed))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0, help="seconds of writes with the worker (default 150)")
    parser.add_argument("--rate", type=float, default=300.0, help="writes per second (0: as fast as possible; default 300)")
    parser.add_argument("--speed", type=float, default=3600.0, help="simulated seconds per real second (default 3600)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="seconds of the no-worker baseline (default 15)")
    parser.add_argument("--no-check", action="store_true", help="skip reading everything back")
    args = parser.parse_args()
    from walkit.sandbox import SandboxProcess

    tmp = Path(tempfile.mkdtemp(prefix="walkit-soak-"))
    try:
        with SandboxProcess(port=0) as server:
            result = soak(server.uri, tmp, seconds=args.seconds, rate=args.rate, speed=args.speed, sample_every=args.sample,
                          baseline_seconds=args.baseline_seconds, progress=True)
        checked = None if args.no_check else check(result, tmp / "scratch")
        print(report(result, checked))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

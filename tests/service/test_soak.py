"""The soak test: the worker under sustained writes for two minutes, days of schedule meanwhile.

THE LONG TEST (about 2.5 minutes; marked ``slow``, and it runs by default).  It uses the
harness of ``bench/bench_soak.py`` (see its docstring; the bench prints the same figures):
the sandbox in its own process, a writer process doing 300 inserts/updates/deletes a
second for 125 s, and :class:`BackupService` in this process on a simulated clock at an
hour per real second, so five or six daily calls (mock service, 5 % failures: the second
fails), some 20
local snapshots and retention after every call happen while capture runs on the real
clock.  Asserted:

- capture lag p99 (an event's wallTime to the fsync of its WAL record, over *every* event
  of the run) under 1 s, and every event measured;
- RSS flat: after a 45 s warm-up (RSS jumps by ~5 MiB around the second daily call, the
  first sizeable bundle), the mean of the last third of the samples (every 5 s) at most
  8 MiB and 15 % above the mean of the first third.  Measured: ~55 MiB after the warm-up,
  then +1.2 MiB a minute, half of it the capture's lag deque (32 B an event, capped at
  100 000 events), so ~1-2 MiB between the thirds here; a leak of 500 bytes an event (a
  kept event is more) adds 8 MiB between them.
- every acknowledged write captured exactly once: the local WAL and the bundles the
  service holds, joined by seq, have seq 1..N without holes, identical bytes where both
  hold a seq, no gap, and one document change per write the writer logged, and no other
  event but the ``create`` of ``items`` (capture shows MongoDB 6.0+'s expanded events) just
  before the first write's;
- the newest state restored locally (snapshot + WAL, after retention) is the database's;
- at least one call a day (minus one for the tick at the end), every one with a known
  result, never two spent calls within 24 h (ledger) nor two calls within 24 h at the
  service, which never refused one as rate limited;
- retention ran: WAL segments and old snapshots were removed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bson
import pymongo
import pytest

from bench.bench_soak import FLAT_FRACTION, FLAT_MIB, MiB, check, flatness, percentile, report, soak, warmup_samples
from walkit.clock import SimulatedClock
from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.retention import prune
from walkit.offsite.upload import quota_dir
from walkit.providers.mock import MockExternalBackupProvider
from walkit.restore.local import state_at
from walkit.restore.plan import Target
from walkit.restore.snapshot import list_snapshots
from walkit.sandbox import Sandbox, SandboxProcess
from walkit.service.worker import BackupService
from walkit.wal.format import list_segments

pytestmark = pytest.mark.slow

SECONDS = 125
RATE = 300
SAMPLE = 5.0


def test_the_worker_under_two_minutes_of_sustained_writes(tmp_path: Path) -> None:
    with SandboxProcess(port=0) as server:
        result = soak(server.uri, tmp_path, seconds=SECONDS, rate=RATE, sample_every=SAMPLE, baseline_seconds=0)
        checked = check(result, tmp_path / "scratch")
        print(report(result, checked))  # shown with -s, and on failure
        live = result.live
        writes = result.writer["writes"]

        # the workload was what this test claims
        assert result.writer["rate"] >= 200, f"only {result.writer['rate']:.0f} writes/s: not a sustained workload"
        assert live["capture_restarts"] == 0 and live["errors"] == 0 and live["gaps"] == 0, live

        # capture lag: the p99 of the newest 2,000 events at every sample covers the whole run;
        # the newest 10,000 (as many as capture keeps) at the end
        assert result.changes == writes, (result.changes, writes)  # one document change per write
        assert live["events_captured"] == checked.events == writes + 1, (live["events_captured"], checked.events, writes)  # + the create
        assert len(result.lags) == min(checked.events, 10_000), (len(result.lags), checked.events)
        windows = [s.lag_p99 for s in result.samples if s.lag_p99 is not None]
        assert len(windows) >= len(result.samples) - 1 and max(windows) < 1.0, f"capture lag p99 per sample: {windows}"
        p99 = percentile(result.lags, 0.99)
        assert p99 < 1.0, f"capture lag p99 {p99:.3f} s (p50 {percentile(result.lags, 0.5):.3f}, max {max(result.lags):.3f})"

        # memory
        rss = [float(s.rss) for s in result.samples]
        assert len(rss) >= SECONDS // SAMPLE, len(rss)
        grow, frac = flatness(rss, warmup_samples(result.samples))
        assert grow <= FLAT_MIB * MiB and frac <= FLAT_FRACTION, f"RSS grows: {grow / MiB:+.1f} MiB ({frac:+.1%}); samples {[round(x / MiB, 1) for x in rss]}"

        # exactly once, across the local WAL and the bundles off-site
        assert checked.writes == writes
        assert not checked.seq_holes and not checked.mismatched_seqs and checked.gaps == 0, checked.seq_holes[:5] or checked.mismatched_seqs[:5]
        assert not checked.missing, f"{len(checked.missing)} writes not captured, e.g. {checked.missing[:5]}"
        assert not checked.doubled, f"{len(checked.doubled)} writes captured twice, e.g. {checked.doubled[:5]}"
        assert not checked.strangers, f"events for writes never made: {checked.strangers[:5]}"
        assert checked.changes == writes
        # the first insert created soak.items: its create event, just before that insert's, and no other schema event
        assert checked.first_write_seq == 2 and checked.schema == [(1, "create", "items")], (checked.schema, checked.first_write_seq)

        # the daily calls
        first_slot = result.sim_start.replace(hour=result.extra["backup_hour"], minute=0, second=0, microsecond=0)
        days = sum(1 for d in range(-1, 8) if result.sim_start <= first_slot + timedelta(days=d) <= result.sim_end)
        spent = [c for c in checked.calls if c["spent"]]
        assert len(spent) >= max(4, days - 1), f"{len(spent)} calls in {days} simulated days: {checked.calls}"
        assert all(c["ok"] is not None for c in checked.calls), checked.calls
        assert len(checked.service_calls) == len(spent), (checked.service_calls, checked.calls)
        assert not checked.too_close, f"two calls in one 24 h window: {checked.too_close}"
        assert all(c["outcome"] in ("stored", "failed") for c in checked.service_calls), checked.service_calls
        assert live["uploads_ok"] >= 3, live
        assert checked.calls[1]["ok"] is False, "the mock service (seed 56) fails the second call"  # its day is in the next bundle

        # retention
        assert checked.segments_pruned > 0 and checked.first_local_seq and checked.first_local_seq > 1, "no WAL segment was pruned"
        assert checked.snapshots_on_disk < live["snapshots_taken"], f"{checked.snapshots_on_disk} snapshots kept of {live['snapshots_taken']} taken"

        # the newest state, restored from what is left locally, is the database's
        restored = state_at(Home(result.home), Target("seq", checked.events), database=result.db)
        got = sorted((bson.decode(raw) for raw in restored.get(f"{result.db}.items", [])), key=lambda d: d["_id"])
        with pymongo.MongoClient(server.uri) as client:
            expected = sorted(client[result.db].items.find(), key=lambda d: d["_id"])
        assert len(got) == len(expected)
        assert [(d["_id"], d.get("u"), d.get("touched")) for d in got] == [(d["_id"], d.get("u"), d.get("touched")) for d in expected]


def test_retention_keeps_the_wal_bounded_under_the_default_schedule(tmp_path: Path) -> None:
    """Eight days of the default schedule, the server's clock simulated too (short, deterministic).

    The worker starts at 03:00, so by the first call (02:00 the next day) it has taken
    snapshots at 03:00 (capture's first), 09:00, 15:00 and 21:00, and the first bundle holds
    the newest.  The older ones can never become restorable off-site; retention must not let
    that keep every WAL segment forever.
    """
    start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    clock = SimulatedClock(start)
    home = tmp_path / "home"
    mock = MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=tmp_path / "valerix", clock=clock)
    with Sandbox(clock=clock) as box, pymongo.MongoClient(box.uri) as client:
        service = BackupService(
            box.uri, home, database="shop", provider=mock, daily_backup_hour=2, snapshot_interval_hours=6,
            wal_retention_days=1, snapshot_retention_days=2, clock=clock, tick=0.01, capture_options={"segment_seconds": 0.05, "fsync_interval": 0.02},
        )
        service.start()
        try:
            n = 0
            for _ in range(8 * 24):
                now = clock.advance(hours=1)
                client.shop.orders.insert_many([{"_id": n + i, "hour": now} for i in range(5)])
                n += 5
                deadline = time.monotonic() + 20
                # the scheduler has seen this hour (worker.json is written at the end of each pass)
                while datetime.fromisoformat(json.loads((home / "worker.json").read_text())["updated_at"]) < now:
                    assert time.monotonic() < deadline, "the scheduler did not run"
                    time.sleep(0.005)
        finally:
            service.stop()
        live = service.live()
    calls = QuotaLedger(quota_dir(Home(home))).calls()
    assert len(calls) >= 7 and all(c.ok for c in calls), calls  # one a day (the last may fall after the end)
    segments = list_segments(home / "wal").segments
    snaps = list_snapshots(Home(home))
    assert live["snapshots_taken"] >= 3 * 8, live  # every 6 h (a daily call may take one instead)
    assert segments[0].index > 1, (
        f"after 8 days with WAL_RETENTION_DAYS=1 no WAL segment was pruned ({len(segments)} segments); "
        f"kept: {prune(Home(home), QuotaLedger(quota_dir(Home(home)), clock=clock), wal_days=1, snapshot_days=2, clock=clock, dry_run=True).kept}"
    )
    assert len(snaps) <= 2 * 4 + 3, f"{len(snaps)} snapshots kept with SNAPSHOT_RETENTION_DAYS=2: {[s.id for s in snaps]}"

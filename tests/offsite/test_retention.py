"""Local retention (``walkit.offsite.retention.prune``) on twenty simulated days of a real site.

Capture writes small segments (``segment_bytes=4096``: several seal every day); days 0..17
are uploaded at 23:00 (each bundle with a snapshot), days 18 and 19 are not (a local
snapshot only).  ``prune(wal_days=7, snapshot_days=1)`` at day 19, 23:30 must:

- remove only a prefix of the WAL, only what is inside a successful upload, and no
  snapshot that is the newest, the base of the WAL window, or not yet restorable off-site;
- leave every instant from ``now - wal_days`` on that was restorable locally restorable
  with the same state (what was removed is still restorable from the external service);
- leave a WAL that ``walkit.wal.format.verify`` passes, on which capture restarts and appends
  with gap-free seqs, and from which the next upload continues the chain;
- with ``dry_run`` remove nothing and name exactly what the real run removes.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from walkit.home import Home
from walkit.offsite.external import list_offsite, resolve_chain, restore_from_external
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.retention import PruneReport, prune
from walkit.offsite.upload import offsite_position, quota_dir
from walkit.restore.local import state_at
from walkit.restore.plan import Target
from walkit.restore.snapshot import list_snapshots
from walkit.wal.format import Report, SegmentSummary, list_segments, summarize, verify

from .conftest import BACKUP_HOUR, Site, read_dump

DAYS, UPLOADED_DAYS = 20, 18
WAL_DAYS, SNAPSHOT_DAYS = 7, 1


@dataclass
class Twenty:
    site: Site
    now: datetime
    uploaded_seq: int  # the last event inside a successful upload


@pytest.fixture(scope="module")
def twenty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twenty]:
    site = Site(tmp_path_factory.mktemp("twenty"), seed=20, capture={"segment_bytes": 4096})
    try:
        for day in range(DAYS):
            site.day(day, writes=site.rng.randint(50, 80), records=3, drop_events=day == 9)
            if day < UPLOADED_DAYS:
                assert site.backup(day).ok
            else:
                site.local_snapshot(day)
        site.stop_capture()  # prune runs on a quiet home (capture is restarted by a test)
        site.to(site.day_start(DAYS - 1) + timedelta(hours=BACKUP_HOUR, minutes=30))
        uploaded = offsite_position(site.ledger)[0]
        assert uploaded.index == UPLOADED_DAYS
        yield Twenty(site, site.clock.now(), uploaded.last_seq)
    finally:
        site.close()


def copy_home(twenty: Twenty, tmp_path: Path) -> tuple[Home, QuotaLedger]:
    home = Home(tmp_path / "home")
    shutil.copytree(twenty.site.home.path, home.path)
    return home, QuotaLedger(quota_dir(home), clock=twenty.site.clock)


def summaries(home: Home) -> dict[str, SegmentSummary]:
    return {seg.name: summarize(seg, Report()) for seg in list_segments(home.wal_dir).segments}


def do_prune(twenty: Twenty, home: Home, ledger: QuotaLedger, **kw: bool) -> PruneReport:
    return prune(home, ledger, wal_days=WAL_DAYS, snapshot_days=SNAPSHOT_DAYS, clock=twenty.site.clock, **kw)


def test_prune_removes_an_old_uploaded_prefix_and_keeps_the_rest(twenty: Twenty, tmp_path: Path) -> None:
    site, now = twenty.site, twenty.now
    home, ledger = copy_home(twenty, tmp_path)
    before = summaries(home)
    snaps_before = list_snapshots(home)
    assert len(before) > 60 and len(snaps_before) == DAYS
    report = do_prune(twenty, home, ledger)
    after = summaries(home)
    names = list(before)
    # something went, and only a prefix of the WAL
    assert report.segments and report.segments == names[: len(report.segments)]
    assert list(after) == names[len(report.segments):]
    wal_cut = now - timedelta(days=WAL_DAYS)
    for name in report.segments:
        s = before[name]
        assert s.sealed and s.last_seq is not None and s.last_seq <= twenty.uploaded_seq  # off-site
        assert s.last_time is not None and s.last_time < wal_cut  # older than the WAL window
    # every event not yet uploaded (days 18 and 19) is still here
    assert all(name in after for name, s in before.items() if s.last_seq is None or s.last_seq > twenty.uploaded_seq)
    assert min(s.first_seq for s in after.values() if s.first_seq is not None) <= twenty.uploaded_seq + 1
    # snapshots: the newest, the WAL window's base, and the two not yet off-site stay
    kept = {s.id for s in list_snapshots(home)}
    assert set(report.snapshots) == {s.id for s in snaps_before} - kept and report.snapshots
    newest = snaps_before[-1]
    base = max((s for s in snaps_before if s.end_wall <= wal_cut), key=lambda s: s.end)
    # not restorable off-site: consistent after the newest change the uploads hold (the last uploaded
    # day's snapshot is taken at its upload, after its last change; then the two days never uploaded)
    uploaded_to = max(b.last_wall for b in list_offsite(site.provider) if b.last_wall is not None)
    not_offsite = [s for s in snaps_before if s.end_wall > uploaded_to]
    never_uploaded = [s for s in snaps_before if s.end_wall >= site.day_start(UPLOADED_DAYS)]
    assert len(never_uploaded) == 2 and set(never_uploaded) <= set(not_offsite) and newest in not_offsite
    assert len(not_offsite) <= 3  # + the last uploaded day's, when its bundle's changes end before its snapshot
    assert kept == {base.id} | {s.id for s in not_offsite}
    assert any(not_offsite[0].id in reason and "not restorable off-site yet" in reason for reason in report.kept)
    # the pruned WAL is whole: verify passes, seqs run on without a hole
    check = verify(home.wal_dir)
    assert check.ok, [str(p) for p in check.problems]
    assert check.last_seq == site.events
    assert report.bytes > 0


def test_every_instant_of_the_wal_window_keeps_its_state(twenty: Twenty, tmp_path: Path) -> None:
    site, now = twenty.site, twenty.now
    home, ledger = copy_home(twenty, tmp_path)
    wal_cut = now - timedelta(days=WAL_DAYS)
    local_end = max(s.last_time for s in summaries(home).values() if s.last_time is not None)
    window = [t for t, _ in site.recorded if wal_cut <= t <= local_end]
    older = [t for t, _ in site.recorded if site.day_start(1) < t < wal_cut - timedelta(days=1)]
    rng = random.Random(4)
    picks = sorted({window[0], window[-1], *rng.sample(window, 8)})
    old_picks = rng.sample(older, 2)
    states = {t: state_at(home, Target("at", t), clock=site.clock) for t in picks + old_picks}
    for t in picks + old_picks:  # restorable locally before, with the recorded state
        assert states[t] == site.expected_at(t)
    report = do_prune(twenty, home, ledger)
    assert report.segments and report.snapshots
    for t in picks:
        assert state_at(home, Target("at", t), clock=site.clock) == states[t], f"{t.isoformat()} changed by prune"
    # what was pruned locally is still restorable from the external service
    for n, t in enumerate(old_picks):
        restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / f"dump-{n}", progress=False)
        assert read_dump(tmp_path / f"dump-{n}") == site.expected_at(t)


def _files(home: Home) -> dict[str, int]:
    return {str(p.relative_to(home.path)): p.stat().st_size for p in home.path.rglob("*") if p.is_file()}


def test_dry_run_removes_nothing_and_names_what_the_real_run_removes(twenty: Twenty, tmp_path: Path) -> None:
    home, ledger = copy_home(twenty, tmp_path)
    files = _files(home)
    dry = do_prune(twenty, home, ledger, dry_run=True)
    assert _files(home) == files
    real = do_prune(twenty, home, ledger)
    assert dry.segments and dry.snapshots
    assert (real.segments, real.snapshots, real.bytes, real.kept) == (dry.segments, dry.snapshots, dry.bytes, dry.kept)
    gone = set(files) - set(_files(home))
    assert {Path(f).parts[1] for f in gone if f.startswith("snapshots/")} == set(real.snapshots)
    assert {Path(f).name for f in gone if f.startswith("wal/")} == set(real.segments)
    # a second run finds nothing more to do
    again = do_prune(twenty, home, ledger)
    assert again.segments == [] and again.snapshots == []


def test_nothing_goes_while_nothing_is_offsite(twenty: Twenty, tmp_path: Path) -> None:
    home, _ = copy_home(twenty, tmp_path)
    files = _files(home)
    empty = QuotaLedger(tmp_path / "no-calls", clock=twenty.site.clock)
    report = prune(home, empty, wal_days=0, snapshot_days=0, clock=twenty.site.clock)
    assert report.segments == [] and report.snapshots == [] and report.bytes == 0
    assert _files(home) == files
    assert any("not all of it is off-site yet" in reason for reason in report.kept)


def test_the_most_eager_prune_keeps_the_newest_snapshot_and_what_is_not_offsite(twenty: Twenty, tmp_path: Path) -> None:
    site = twenty.site
    home, ledger = copy_home(twenty, tmp_path)
    snaps = list_snapshots(home)
    local_end = max(s.last_time for s in summaries(home).values() if s.last_time is not None)
    latest = max(t for t, _ in site.recorded if t <= local_end)  # the newest instant restorable locally
    assert latest.date() == site.day_start(DAYS - 1).date()
    before = state_at(home, Target("at", latest), clock=site.clock)
    report = prune(home, ledger, wal_days=0, snapshot_days=0, clock=site.clock)
    kept = [s.id for s in list_snapshots(home)]
    assert snaps[-1].id in kept and snaps[-2].id in kept  # the newest; the one before it is not off-site either
    assert len(report.snapshots) == len(snaps) - len(kept) >= UPLOADED_DAYS - 1
    # the WAL goes back to what is not off-site or the scan start of the oldest snapshot kept, no further
    bound = min(twenty.uploaded_seq + 1, min(s.wal_seq_before or 0 for s in list_snapshots(home)))
    remaining = [s for s in summaries(home).values() if s.last_seq is not None]
    assert report.segments and remaining[0].first_seq <= bound <= remaining[0].last_seq  # type: ignore[operator]
    assert verify(home.wal_dir).ok
    assert state_at(home, Target("at", latest), clock=site.clock) == before == site.expected_at(latest)


def test_capture_restarts_on_the_pruned_home_and_the_next_upload_continues_the_chain(twenty: Twenty, tmp_path: Path) -> None:
    site = twenty.site  # the site's own home this time: this test comes last in the file (the others copy the home)
    last_seq = site.events
    report = do_prune(twenty, site.home, site.ledger)
    assert report.segments
    cap = site.start_capture()
    day = DAYS
    log = site.day(day, writes=40, records=3)
    site.wait_captured()  # the seqs go on from the WAL's last one, without a hole
    assert cap.stats.first_seq == last_seq + 1 and cap.stats.last_seq == site.events
    assert cap.writer is not None
    entry = site.backup(day)
    assert entry.ok and entry.result is not None and entry.result.bundle is not None
    meta = entry.result.bundle.metadata()
    # the bundle after the two days without a call holds them and today's changes, continuing the chain
    assert meta["index"] == UPLOADED_DAYS + 1 and meta["first_seq"] == twenty.uploaded_seq + 1 and meta["last_seq"] == site.events
    assert datetime.fromisoformat(meta["first_wall"]) <= site.days[UPLOADED_DAYS].first_write  # type: ignore[operator]
    chain = resolve_chain(list_offsite(site.provider))
    assert [b.index for b in chain.bundles] == list(range(1, UPLOADED_DAYS + 2)) and not chain.orphans
    calls = site.provider.calls
    assert all(b["at"] - a["at"] >= timedelta(hours=24) for a, b in zip(calls, calls[1:], strict=False))
    site.stop_capture()
    check = verify(site.home.wal_dir)
    assert check.ok and check.last_seq == site.events
    # the days that were only local when prune ran are restorable from the external service
    for n, t in enumerate([site.days[UPLOADED_DAYS].instants[0], site.days[DAYS - 1].instants[-1], log.instants[0]]):
        restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / f"dump-{n}", progress=False)
        assert read_dump(tmp_path / f"dump-{n}") == site.expected_at(t)

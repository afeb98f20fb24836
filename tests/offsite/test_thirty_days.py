"""Thirty simulated days through the real code, then the whole site is lost and restored from the external service.

Every day: 50-100 writes spread over the day (inserts, ``$inc``/``$set``/``$unset``/``$push``
updates, deletes, now and then a transaction, a second database; on day 12 a collection
is dropped and later re-created), the exact state recorded at a few instants, and at
23:00 the day's one call (``walkit.offsite.upload.upload``) to the Valerix mock, which fails
some calls (``failure_rate=0.05``; with seed 53 the draws fail calls 20 and 21, two days
in a row).  The morning after the last upload brings changes no upload holds.

Then the local home is deleted and:

- the mock saw exactly one call a day, never two within 24 h, never a rate-limit refusal;
- the bundles after failed days cover them (their ``first_seq`` continues the last successful one);
- random recorded instants inside the off-site window restore exactly (raw BSON, via ``to_dump``);
- instants before the first off-site snapshot or after the last upload's coverage are refused
  with a RestoreError that names the missing upload and the restorable window.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import bson
import pytest

from walkit.errors import ProviderError, RateLimitError, RestoreError
from walkit.offsite.external import list_offsite, plan_external, resolve_chain, restore_from_external
from walkit.offsite.quota import Call
from walkit.restore.plan import Target

from .conftest import BACKUP_HOUR, RAW, Site, read_dump

DAYS = 30
SEED = 53  # the mock's failure draws for calls 1..30 with this seed: 20 and 21 fail (days 19 and 20)
DROP_DAY = 12


@dataclass
class Month:
    site: Site
    calls_per_day: list[int]
    ledger_calls: list[Call]
    events_by_backup: list[int]  # change events (creates and drops included) made before each day's backup


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Month:
    site = Site(tmp_path_factory.mktemp("month"), seed=2025, failure_rate=0.05, provider_seed=SEED)
    calls_per_day, events = [], []
    try:
        for day in range(DAYS):
            site.day(day, writes=site.rng.randint(50, 100), drop_events=day == DROP_DAY)
            before = site.provider.upload_calls
            events.append(site.events)
            site.backup(day)
            calls_per_day.append(site.provider.upload_calls - before)
        site.day(DAYS, writes=20, until_hour=10)  # the morning after the last upload
        site.wait_captured()
        ledger_calls = site.ledger.calls()
    finally:
        site.close()
    shutil.rmtree(site.home.path)  # the site is lost: only the external service is left
    return Month(site, calls_per_day, ledger_calls, events)


def test_one_call_a_day_never_two_within_24_hours(month: Month) -> None:
    site = month.site
    assert month.calls_per_day == [1] * DAYS  # exactly one call attempt every day, failed days included
    calls = site.provider.calls
    assert len(calls) == DAYS
    assert [c["at"] for c in calls] == [site.day_start(d) + timedelta(hours=BACKUP_HOUR) for d in range(DAYS)]
    assert all(b["at"] - a["at"] >= timedelta(hours=24) for a, b in zip(calls, calls[1:], strict=False))
    assert not [c for c in calls if c["outcome"] == "rate_limited"]
    assert not [b for b in site.backups if isinstance(b.error, RateLimitError)]
    # the ledger knows the same story: one call per day, failed where the service failed
    assert [c.at for c in month.ledger_calls] == [c["at"] for c in calls]
    assert [c.ok for c in month.ledger_calls] == [c["ok"] for c in calls]
    assert all(c.spent for c in month.ledger_calls)


def test_failed_days_are_covered_by_the_next_bundle(month: Month) -> None:
    site = month.site
    failed = [b for b in site.backups if not b.ok]
    days = [b.day for b in failed]
    assert any(b - a == 1 for a, b in zip(days, days[1:], strict=False)), f"the seed was chosen so that two calls in a row fail: {days}"
    for b in failed:
        assert isinstance(b.error, ProviderError) and not isinstance(b.error, RateLimitError)
        assert "simulated failure" in str(b.error)
    stored = sorted(list_offsite(site.provider), key=lambda b: b.uploaded_at)
    assert len(stored) == DAYS - len(failed)
    # indexes run on without a hole (a failed call does not use one up), each bundle continues the previous
    assert [b.index for b in stored] == list(range(1, len(stored) + 1))
    assert stored[0].first_seq == 1 and stored[0].meta["prev"] == ""
    for prev, cur in zip(stored, stored[1:], strict=False):
        assert cur.first_seq == prev.last_seq + 1, (prev.describe(), cur.describe())
        assert cur.meta["prev"] == prev.meta["seal"]
    by_day = {b.day: b for b in site.backups}
    for b in failed:
        before = max(d for d, x in by_day.items() if d < b.day and x.ok)
        after = min(d for d, x in by_day.items() if d > b.day and x.ok)
        prev_meta, next_meta = by_day[before].result.bundle.metadata(), by_day[after].result.bundle.metadata()  # type: ignore[union-attr]
        assert next_meta["first_seq"] == prev_meta["last_seq"] + 1
        assert next_meta["index"] == prev_meta["index"] + 1
        log = site.days[b.day]
        assert datetime.fromisoformat(next_meta["first_wall"]) <= log.first_write  # type: ignore[operator]
        assert datetime.fromisoformat(next_meta["last_wall"]) >= log.last_write  # type: ignore[operator]


def test_every_bundle_holds_everything_captured_before_its_upload(month: Month) -> None:
    """Capture had every event on disk before each call (the run waits for it), so each bundle ends
    at the last event made before its upload, and its snapshot's scan began at that event."""
    site = month.site
    short = []
    for b in site.backups:
        if b.ok:
            meta = b.result.bundle.metadata()  # type: ignore[union-attr]
            if meta["last_seq"] != month.events_by_backup[b.day] or meta["snapshot"]["wal_seq_before"] != meta["last_seq"]:
                short.append((b.day, meta["first_seq"], meta["last_seq"], month.events_by_backup[b.day], meta["snapshot"]["wal_seq_before"]))
    assert short == [], "(day, first_seq, last_seq, events made, snapshot's wal_seq_before) of bundles that came out short"


def _window(site: Site) -> tuple[datetime, datetime]:
    chain = resolve_chain(list_offsite(site.provider))
    assert not chain.orphans and chain.missing() == ""
    (window,) = chain.windows()
    return window


def test_the_offsite_window(month: Month) -> None:
    site = month.site
    lo, hi = _window(site)
    first_ok = next(b for b in site.backups if b.ok)
    assert lo == first_ok.at  # the first off-site snapshot is consistent from the first upload's moment
    assert site.days[DAYS - 1].last_write <= hi <= site.backups[-1].at  # type: ignore[operator]


def test_covered_instants_restore_exactly(month: Month, tmp_path: Path) -> None:
    site = month.site
    lo, hi = _window(site)
    covered = [t for t, _ in site.recorded if lo <= t <= hi]
    assert len(covered) >= 100
    assert covered[0] == lo  # the state recorded at the first upload's moment: the window's first instant
    rng = random.Random(7)
    failed_days = [b.day for b in site.backups if not b.ok]
    on_failed = [t for t in covered if any(t in site.days[d].instants for d in failed_days)]
    drop_day = [t for t in covered if t in site.days[DROP_DAY].instants]
    assert on_failed and drop_day
    picks = sorted({covered[0], covered[-1], *on_failed[:2], drop_day[-1], *rng.sample(covered, 7)})
    assert len(picks) >= 10
    workdir = tmp_path / "work"
    workdir.mkdir()
    for n, t in enumerate(picks):
        dump = tmp_path / f"dump-{n}"
        result = restore_from_external(site.provider, Target("at", t), workdir=workdir, to_dump=dump, progress=False)
        assert read_dump(dump) == site.expected_at(t), f"the state restored at {t.isoformat()} differs"
        # the plan downloads from the snapshot's bundle to the first one covering t, no further
        plan = result.offsite
        assert plan.bundles[0] is plan.snapshot_bundle and plan.snapshot_bundle.snapshot_wall <= t
        assert plan.bundles[-1].last_wall >= t
        assert all(b.last_wall < t for b in plan.bundles[:-1])
        assert [b.index for b in plan.bundles] == list(range(plan.bundles[0].index, plan.bundles[-1].index + 1))
        assert list(workdir.iterdir()) == []  # the temporary home is removed
    # a failed day's instants come from the bundle sent by the next successful call
    next_ok = min(b.at for b in site.backups if b.ok and b.day > failed_days[-1])
    for t in on_failed:
        assert plan_external(site.provider, Target("at", t)).bundles[-1].uploaded_at == next_ok


def test_restore_as_dataframes(month: Month) -> None:
    site = month.site
    lo, hi = _window(site)
    covered = [t for t, _ in site.recorded if lo <= t <= hi]
    t = covered[len(covered) // 2]
    frames = restore_from_external(site.provider, Target("at", t), as_dataframes=True, progress=False).frames
    expected = site.expected_at(t)
    assert frames is not None and sorted(ns for ns, f in frames.items() if len(f)) == sorted(expected)
    for ns, docs in expected.items():
        ids = [bson.decode(raw, RAW)["_id"] for raw in docs]
        assert sorted(frames[ns]["_id"].tolist(), key=str) == sorted(ids, key=str)


def test_uncovered_instants_are_refused_naming_the_missing_upload(month: Month, tmp_path: Path) -> None:
    site = month.site
    lo, hi = _window(site)
    window = f"restorable from the external bundles: {lo.isoformat()} .. {hi.isoformat()}"
    before = [t for t, _ in site.recorded if t < lo]
    after = [t for t, _ in site.recorded if t > hi]
    assert before and after
    assert all(t.date() == site.start.date() for t in before)
    assert {t.date() for t in after} >= {site.day_start(DAYS).date()}
    last = max(list_offsite(site.provider), key=lambda b: b.uploaded_at)
    for n, t in enumerate([before[0], before[-1], after[0], after[-1]]):
        dump = tmp_path / f"dump-{n}"
        with pytest.raises(RestoreError) as info:
            restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=dump, progress=False)
        message = str(info.value)
        assert t.isoformat() in message and window in message, message
        if t < lo:
            assert "before the first off-site snapshot" in message
        else:
            assert f"the newest upload (bundle {last.index}, uploaded {last.uploaded_at.isoformat()})" in message
            assert "has not been made or failed" in message
        assert not dump.exists()
        with pytest.raises(RestoreError) as planned:
            plan_external(site.provider, Target("at", t))
        assert str(planned.value) == message

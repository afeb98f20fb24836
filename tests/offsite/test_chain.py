"""The off-site chain: which bundles a restore from the external service uses, and what stops it.

- :func:`resolve_chain` on hand-made listings: a linear chain; two bundles that continue the
  same one (an upload whose result was unknown but landed, and the next day's re-sent
  superset) resolve to the branch that reaches furthest; a missing bundle orphans the later ones.
- Real bundles (a simulated week through the real code, uploaded to the Valerix mock):
  the same fork made by a call that stored the bundle and then failed; a bundle deleted
  from the service in the middle (instants after the break are refused naming the missing
  bundle and the upload it should follow, instants before it still restore); a bundle
  whose bytes were altered on the service (refused naming the bundle, no destination
  created); the plan (``--dry-run``) lists exactly the bundles from the snapshot's to the
  one covering the instant; with a weekly snapshot a restore on day 5 downloads days 1..5;
  a quiet day's snapshot also needs the bundle before it; encrypted bundles need the identity.
- Found by these tests (production bugs, the tests expect the correct behaviour): a chain of
  more than ~1000 bundles overflows ``resolve_chain``'s recursion; a chain whose oldest bundles
  the filesystem provider deleted (as ``keep_from`` allows) is not found at all; a plan can leave
  out its own snapshot's bundle; a WAL segment compressed while the WAL is listed is left out of
  the listing (a bundle comes out short or fails, a local read skips its events).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
import pytest
import zstandard

from tests.helpers import walkit
from walkit.errors import ProviderError, RestoreError, WalkitError
from walkit.offsite.bundle import Position, build_bundle, load_identities
from walkit.offsite.external import OffsiteBundle, list_offsite, plan_external, resolve_chain, restore_from_external
from walkit.offsite.upload import Policy, offsite_position
from walkit.providers.base import ExternalBackupProvider, StoredBackup, UploadData
from walkit.providers.filesystem import FileSystemBackupProvider
from walkit.providers.mock import MockExternalBackupProvider
from walkit.restore.plan import Target
from walkit.wal.format import list_segments, read_records
from walkit.wal.writer import compress_segment

from .conftest import BACKUP_HOUR, START, Site, read_dump

# -- hand-made listings ----------------------------------------------------------------------


def _at(day: float) -> datetime:
    return START + timedelta(days=day, hours=BACKUP_HOUR)


def ob(index: int, first: int, last: int, prev: str, seal: str, day: float, *, snapshot: bool = False, ref: str | None = None) -> OffsiteBundle:
    """A bundle as a listing shows it: uploaded on ``day`` at the backup hour, changes up to an hour before."""
    meta = {
        "format": "walkit-bundle", "version": 1, "id": f"id-{seal}", "index": index, "first_seq": first, "last_seq": last,
        "prev": prev, "seal": seal, "last_ct": {"t": 1_700_000_000 + last, "i": 1}, "last_wall": (_at(day) - timedelta(hours=1)).isoformat(),
        "snapshot": {"id": f"snap-{seal}", "end_wall": _at(day).isoformat(), "wal_seq_before": last} if snapshot else None,
    }
    return OffsiteBundle(ref or f"ref-{seal}", 1000 + last, _at(day), meta)


class Listing(ExternalBackupProvider):
    """A service that only lists (plans never download)."""

    name = "listing"

    def __init__(self, bundles: list[OffsiteBundle]) -> None:
        self.bundles = bundles

    def list(self) -> list[StoredBackup]:
        return [StoredBackup(b.ref, b.size, b.uploaded_at, b.meta) for b in self.bundles]

    def upload(self, data: UploadData, metadata: dict[str, Any]) -> str:
        raise AssertionError("a plan never uploads")

    def download_to(self, ref: str, out: BinaryIO) -> int:
        raise AssertionError("a plan never downloads")

    def health_check(self) -> bool:
        return True


def _linear(n: int) -> list[OffsiteBundle]:
    return [ob(i, 10 * (i - 1) + 1, 10 * i, f"s{i - 1}" if i > 1 else "", f"s{i}", i, snapshot=i == 1) for i in range(1, n + 1)]


def test_a_linear_chain_in_any_listing_order() -> None:
    bundles = _linear(5)
    for order in itertools.islice(itertools.permutations(bundles), 0, 120, 7):
        chain = resolve_chain(list(order))
        assert [b.index for b in chain.bundles] == [1, 2, 3, 4, 5]
        assert chain.orphans == [] and chain.missing() == ""
        assert chain.windows() == [(_at(1), _at(5) - timedelta(hours=1))]


def test_the_furthest_branch_wins_when_two_bundles_continue_the_same_one() -> None:
    b1 = ob(1, 1, 10, "", "s1", 1, snapshot=True)
    landed = ob(2, 11, 20, "s1", "s2-unknown", 2)  # the call's result was unknown, yet it landed
    resent = ob(2, 11, 30, "s1", "s2-resent", 3)  # the next day's bundle: everything since bundle 1 again, and more
    b3 = ob(3, 31, 40, "s2-resent", "s3", 4)
    for order in itertools.permutations([b1, landed, resent, b3]):
        chain = resolve_chain(list(order))
        assert [b.meta["seal"] for b in chain.bundles] == ["s1", "s2-resent", "s3"]
        assert chain.orphans == [] and chain.missing() == ""  # the shorter branch is superseded, not missing
    # the rule is "reaches furthest", not "uploaded last": a continuation of the other branch that goes further wins
    longer = ob(3, 21, 45, "s2-unknown", "s3-long", 5)
    chain = resolve_chain([b1, landed, resent, b3, longer])
    assert [b.meta["seal"] for b in chain.bundles] == ["s1", "s2-unknown", "s3-long"]
    assert chain.orphans == []
    # a plan for an instant both branches hold downloads the branch the chain took
    plan = plan_external(Listing([b1, landed, resent, b3]), Target("at", _at(2) - timedelta(hours=2)))
    assert [b.meta["seal"] for b in plan.bundles] == ["s1", "s2-resent"]


def test_a_missing_bundle_orphans_the_later_ones() -> None:
    b1, b2, b3, b4, b5 = _linear(5)
    chain = resolve_chain([b5, b1, b4, b2])
    assert [b.index for b in chain.bundles] == [1, 2]
    assert [b.index for b in chain.orphans] == [4, 5]
    message = chain.missing()
    assert f"the upload after bundle 2 (uploaded {b2.uploaded_at.isoformat()}) is missing from the external service (bundle 3)" in message
    assert f"2 later bundle(s), from {b4.uploaded_at.isoformat()}, cannot be used without it" in message
    assert chain.windows() == [(_at(1), b2.last_wall)]
    service = Listing([b5, b1, b4, b2])
    with pytest.raises(RestoreError) as info:
        plan_external(service, Target("at", _at(4) - timedelta(hours=2)))
    assert message in str(info.value) and f"restorable from the external bundles: {_at(1).isoformat()} .. {b2.last_wall.isoformat()}" in str(info.value)
    assert [b.index for b in plan_external(service, Target("at", _at(2) - timedelta(hours=3))).bundles] == [1, 2]
    # without the first bundle nothing starts a chain
    with pytest.raises(RestoreError, match="holds no walkit bundle that starts a chain"):
        plan_external(Listing([b2, b3]), Target("at", _at(2)))


# -- real bundles ------------------------------------------------------------------------------


@dataclass
class Week:
    site: Site
    state_dir: Path


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Week:
    """Six days, a daily upload with a snapshot each, no failure; the site is gone afterwards."""
    site = Site(tmp_path_factory.mktemp("week"), seed=11)
    try:
        for day in range(6):
            site.day(day, writes=site.rng.randint(50, 80), records=5, drop_events=day == 2)
            assert site.backup(day).ok
    finally:
        site.close()
    shutil.rmtree(site.home.path)
    assert site.provider.state_dir is not None
    return Week(site, site.provider.state_dir)


def service(week: Week, tmp_path: Path) -> MockExternalBackupProvider:
    """A private copy of the week's service, to damage."""
    copy = tmp_path / "valerix"
    shutil.copytree(week.state_dir, copy)
    return MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=copy, clock=week.site.clock)


def _by_index(provider: MockExternalBackupProvider) -> dict[int, OffsiteBundle]:
    return {b.index: b for b in list_offsite(provider)}


def _instants(site: Site, lo: datetime, hi: datetime) -> list[datetime]:
    return [t for t, _ in site.recorded if lo < t <= hi]


def test_a_bundle_deleted_in_the_middle_orphans_the_later_ones(week: Week, tmp_path: Path) -> None:
    provider = service(week, tmp_path)
    bundles = _by_index(provider)
    assert sorted(bundles) == [1, 2, 3, 4, 5, 6]
    gone = bundles[4]
    blobs = tmp_path / "valerix" / "blobs"
    (blobs / gone.ref).unlink()
    (blobs / f"{gone.ref}.meta.json").unlink()
    chain = resolve_chain(list_offsite(provider))
    assert [b.index for b in chain.bundles] == [1, 2, 3] and [b.index for b in chain.orphans] == [5, 6]
    after_break = _instants(week.site, bundles[3].last_wall, bundles[6].last_wall)  # type: ignore[arg-type]
    assert len(after_break) >= 10
    for t in after_break[:: len(after_break) // 4]:
        with pytest.raises(RestoreError) as info:
            plan_external(provider, Target("at", t))
        message = str(info.value)
        assert "(bundle 4)" in message and f"the upload after bundle 3 (uploaded {bundles[3].uploaded_at.isoformat()}) is missing" in message
        assert f"2 later bundle(s), from {bundles[5].uploaded_at.isoformat()}" in message
        with pytest.raises(RestoreError) as again:
            restore_from_external(provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / "refused", progress=False)
        assert str(again.value) == message and not (tmp_path / "refused").exists()
    # instants before the break still restore, exactly
    before = _instants(week.site, bundles[1].snapshot_wall, bundles[3].last_wall)  # type: ignore[arg-type]
    for n, t in enumerate([before[0], before[len(before) // 2], before[-1]]):
        result = restore_from_external(provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / f"dump-{n}", progress=False)
        assert read_dump(tmp_path / f"dump-{n}") == week.site.expected_at(t)
        assert max(b.index for b in result.offsite.bundles) <= 3


def _flip(path: Path, member_prefix: str) -> str:
    """Flip one byte in the middle of the first tar member whose name starts with ``member_prefix``."""
    with tarfile.open(path) as tar:
        info = next(m for m in tar.getmembers() if m.name.startswith(member_prefix))
    offset = info.offset_data + info.size // 2
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))
    return info.name


@pytest.mark.parametrize(
    ("forged", "member"),
    [((), "wal/"), (("service",), "wal/"), (("service", "listing"), "wal/"), (("service", "listing"), "snapshot/")],
    ids=["blob-altered", "service-checksum-forged", "listing-checksum-forged", "snapshot-member-altered"],
)
def test_a_bundle_altered_on_the_service_is_refused_by_name(week: Week, tmp_path: Path, forged: tuple[str, ...], member: str) -> None:
    """One byte of a stored bundle flipped; with ``forged`` the service's own checksum of the blob, and the
    file checksum in the bundle's listed metadata, are made to agree with it, so that only the checks
    further in (the manifest's member hashes) can tell."""
    provider = service(week, tmp_path)
    bundles = _by_index(provider)
    t = _instants(week.site, bundles[4].last_wall, bundles[5].last_wall)[0]  # type: ignore[arg-type]
    plan = plan_external(provider, Target("at", t))
    assert [b.index for b in plan.bundles] == [4, 5]
    victim = plan.bundles[0] if member == "snapshot/" else plan.bundles[1]
    blob = tmp_path / "valerix" / "blobs" / victim.ref
    name = _flip(blob, member)
    if forged:
        sidecar = blob.with_name(blob.name + ".meta.json")
        record = json.loads(sidecar.read_text())
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        record["sha256"] = digest
        if "listing" in forged:
            record["metadata"]["sha256"] = digest
        sidecar.write_text(json.dumps(record))
    dump, work = tmp_path / "dump", tmp_path / "work"
    work.mkdir()
    with pytest.raises(RestoreError) as info:
        restore_from_external(provider, Target("at", t), workdir=work, to_dump=dump, progress=False)
    message = str(info.value)
    assert f"bundle {victim.index} " in message, message
    assert "damaged" in message or "SHA-256" in message, message
    if "listing" in forged:  # only the member hashes inside the bundle are left to tell
        assert name in message, message
    assert not dump.exists() and list(work.iterdir()) == []
    # the other bundles are fine: an instant that does not need the altered one still restores
    t_ok = _instants(week.site, bundles[1].last_wall, bundles[2].last_wall)[-1]  # type: ignore[arg-type]
    assert [b.index for b in plan_external(provider, Target("at", t_ok)).bundles] == [1, 2]
    restore_from_external(provider, Target("at", t_ok), workdir=work, to_dump=dump, progress=False)
    assert read_dump(dump) == week.site.expected_at(t_ok)


def _expected_plan(bundles: dict[int, OffsiteBundle], t: datetime) -> list[int]:
    """Computed from the listing alone: from the newest snapshot consistent by ``t`` to the first bundle covering ``t``."""
    snap = max(i for i, b in bundles.items() if b.snapshot_wall is not None and b.snapshot_wall <= t)
    cover = min(i for i, b in bundles.items() if b.last_wall is not None and b.last_wall >= t)
    return list(range(snap, max(snap, cover) + 1))


def test_the_plan_lists_exactly_the_bundles_from_the_snapshot_to_the_instant(week: Week, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = service(week, tmp_path)
    bundles = _by_index(provider)
    lo, hi = resolve_chain(list(bundles.values())).windows()[0]
    covered = [t for t, _ in week.site.recorded if lo <= t <= hi]
    seen = set()
    for t in covered:
        plan = plan_external(provider, Target("at", t))
        indexes = [b.index for b in plan.bundles]
        assert indexes == _expected_plan(bundles, t), t
        assert plan.snapshot_bundle.index == indexes[0]
        assert plan.download_bytes == sum(bundles[i].size for i in indexes)
        text = plan.describe()
        assert all(f"bundle {i} (" in text for i in indexes) and not any(f"bundle {i} (" in text for i in set(bundles) - set(indexes))
        seen.add(len(indexes))
        if len(indexes) == 1:  # only the upload's own instant, when capture's idle checkpoint made at that instant
            # (the clock had jumped to the backup hour) came before the bundle was built: it alone covers t then
            (only,) = indexes
            assert t == bundles[only].snapshot_wall == bundles[only].last_wall == bundles[only].uploaded_at, t
    # each snapshot is taken at its upload, after the day's changes: a day's instants need the day before's bundle too
    # (three when the instant follows the day's last change and capture's checkpoint came before it)
    assert 2 in seen and seen <= {1, 2, 3}
    # a seq target: from the snapshot's bundle to the one holding the event
    plan = plan_external(provider, Target("seq", bundles[4].first_seq + 3))
    assert [b.index for b in plan.bundles] == [3, 4]
    # the CLI's --dry-run prints the same plan and downloads nothing
    t = covered[len(covered) // 2]
    before = json.dumps(sorted(p.name for p in (tmp_path / "valerix" / "blobs").iterdir()))
    monkeypatch.setenv("WALKIT_MOCK_LATENCY_MS", "0")
    monkeypatch.setenv("WALKIT_MOCK_FAILURE_RATE", "0")
    out = walkit(
        "restore", "--from", "external", "--at", t.isoformat(), "--dry-run", "--provider", "mock",
        "--backup-dir", str(tmp_path / "valerix"), "--home", str(tmp_path / "gone"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == plan_external(provider, Target("at", t)).describe()
    assert json.dumps(sorted(p.name for p in (tmp_path / "valerix" / "blobs").iterdir())) == before
    assert len(provider.calls) == 6  # no upload call was made


class LandsThenFails(MockExternalBackupProvider):
    """Stores the bundle, then the connection drops: the caller cannot know it landed."""

    drop_after_next = False

    def upload(self, data: UploadData, metadata: dict[str, Any]) -> str:
        ref = super().upload(data, metadata)
        if self.drop_after_next:
            self.drop_after_next = False
            raise ProviderError("the connection dropped after the bundle was sent; the result is unknown")
        return ref


def test_an_upload_that_landed_unseen_and_the_resent_superset(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", seed=5)
    state_dir = site.provider.state_dir
    site.provider = LandsThenFails(latency_ms=0, failure_rate=0, state_dir=state_dir, clock=site.clock)
    try:
        for day in range(4):
            site.day(day, writes=40, records=4)
            site.provider.drop_after_next = day == 1  # type: ignore[attr-defined]
            entry = site.backup(day)
            assert entry.ok == (day != 1)
            if day == 1:
                assert isinstance(entry.error, ProviderError)
                assert site.ledger.calls()[-1].ok is False  # walkit counts it as failed: its changes go again tomorrow
                assert offsite_position(site.ledger, site.provider)[0].index == 1
    finally:
        site.close()
    listed = sorted(list_offsite(site.provider), key=lambda b: b.uploaded_at)
    assert [b.index for b in listed] == [1, 2, 2, 3]
    landed, resent = listed[1], listed[2]
    assert landed.meta["prev"] == resent.meta["prev"] == listed[0].meta["seal"]
    assert resent.first_seq == landed.first_seq and resent.last_seq > landed.last_seq
    assert listed[3].meta["prev"] == resent.meta["seal"]
    chain = resolve_chain(list_offsite(site.provider))
    assert [b.ref for b in chain.bundles] == [listed[0].ref, resent.ref, listed[3].ref]
    assert chain.orphans == [] and chain.missing() == ""
    # an instant both branches hold is restored through the chain's branch, exactly
    day1 = [t for t in site.days[1].instants if landed.last_wall is not None and t <= landed.last_wall]
    assert day1
    for n, t in enumerate([day1[0], day1[-1], site.days[2].instants[-1], site.days[3].instants[0]]):
        result = restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / f"dump-{n}", progress=False)
        assert landed.ref not in [b.ref for b in result.offsite.bundles]
        assert read_dump(tmp_path / f"dump-{n}") == site.expected_at(t)


def test_weekly_snapshots_a_restore_on_day_5_downloads_days_1_to_5(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", seed=9)
    try:
        for day in range(9):
            site.day(day, writes=site.rng.randint(50, 70), records=3)
            assert site.backup(day, Policy(snapshot_every_days=7)).ok
    finally:
        site.close()
    bundles = _by_index(site.provider)
    assert [i for i, b in sorted(bundles.items()) if b.snapshot] == [1, 8]  # day 1, then a week later
    assert all(bundles[i].meta["keep_from"] == 1 for i in range(2, 8))
    t = random.Random(3).choice(site.days[4].instants)  # day 5 (the days count from 1, indexes too)
    result = restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / "dump", progress=False)
    assert [b.index for b in result.offsite.bundles] == [1, 2, 3, 4, 5]
    assert result.offsite.snapshot_bundle.index == 1
    assert read_dump(tmp_path / "dump") == site.expected_at(t)
    # after the second snapshot only the newer week is needed
    t = site.days[8].instants[0]
    result = restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / "dump2", progress=False)
    assert [b.index for b in result.offsite.bundles] == [8, 9]
    assert read_dump(tmp_path / "dump2") == site.expected_at(t)


def test_encrypted_bundles_need_the_identity(tmp_path: Path) -> None:
    key = pyrage.x25519.Identity.generate()
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(f"# test key\n{key}\n")
    site = Site(tmp_path / "site", seed=4)
    try:
        for day in range(3):
            site.day(day, writes=30, records=2)
            entry = site.backup(day, recipients=[key.to_public()])
            assert entry.ok and entry.result is not None and entry.result.bundle is not None and entry.result.bundle.encrypted
    finally:
        site.close()
    t = site.days[2].instants[-1]
    with pytest.raises(RestoreError, match="encrypted"):
        restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / "no-key", progress=False)
    assert not (tmp_path / "no-key").exists()
    restore_from_external(site.provider, Target("at", t), identities=load_identities(keyfile), workdir=tmp_path, to_dump=tmp_path / "dump", progress=False)
    assert read_dump(tmp_path / "dump") == site.expected_at(t)
    # and the service never saw a readable byte of the data
    for b in list_offsite(site.provider):
        assert (tmp_path / "site" / "valerix" / "blobs" / b.ref).read_bytes().startswith(b"age-encryption.org/v1\n")


def test_timezone_of_the_listing_does_not_matter() -> None:
    """Listings may give times with any offset: coverage compares instants, not strings."""
    b1 = ob(1, 1, 10, "", "s1", 1, snapshot=True)
    meta = dict(b1.meta, last_wall=(_at(1) + timedelta(hours=2)).astimezone(timezone(timedelta(hours=-5))).isoformat())
    shifted = OffsiteBundle(b1.ref, b1.size, b1.uploaded_at, meta)
    plan = plan_external(Listing([shifted]), Target("at", _at(1) + timedelta(hours=1)))
    assert [b.index for b in plan.bundles] == [1]


def test_a_chain_of_years_of_daily_bundles() -> None:
    """About three years of daily uploads to a service that keeps everything (the mock, an object store)."""
    bundles = _linear(1200)
    chain = resolve_chain(bundles)
    assert len(chain.bundles) == 1200 and chain.orphans == []
    t = bundles[-1].last_wall - timedelta(minutes=5)  # type: ignore[operator]
    plan = plan_external(Listing(bundles), Target("at", t))
    assert [b.index for b in plan.bundles] == list(range(1, 1201))  # one snapshot, in bundle 1: every bundle is needed


def test_a_chain_the_filesystem_provider_pruned_still_restores(tmp_path: Path) -> None:
    """The filesystem provider keeps the newest ``max_backups`` and deletes older bundles the newest
    one's ``keep_from`` no longer needs (with a snapshot in every bundle: all older ones)."""
    site = Site(tmp_path / "site", seed=6)
    site.provider = FileSystemBackupProvider(tmp_path / "fs", compress=False, max_backups=3, clock=site.clock)  # type: ignore[assignment]
    try:
        for day in range(6):
            site.day(day, writes=40, records=3)
            assert site.backup(day).ok
    finally:
        site.close()
    listed = sorted(list_offsite(site.provider), key=lambda b: b.index)
    assert [b.index for b in listed] == [4, 5, 6]  # 1..3 deleted, as keep_from allowed
    assert listed[-1].meta["keep_from"] == 6 and all(b.snapshot for b in listed)
    chain = resolve_chain(listed)
    assert [b.index for b in chain.bundles] == [4, 5, 6] and chain.missing() == ""
    assert chain.windows() == [(listed[0].snapshot_wall, listed[-1].last_wall)]
    t = site.days[5].instants[0]
    result = restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / "dump", progress=False)
    assert [b.index for b in result.offsite.bundles] == [5, 6]
    assert read_dump(tmp_path / "dump") == site.expected_at(t)
    # an instant only the deleted bundles held is refused, naming what is restorable
    with pytest.raises(RestoreError, match="restorable from the external bundles"):
        plan_external(site.provider, Target("at", site.days[1].instants[0]))


def test_a_quiet_day_plan_starts_at_the_bundle_holding_the_scan_start(tmp_path: Path) -> None:
    """No change on day 2: its bundle holds a snapshot and no WAL record; a restore from that
    snapshot also needs the bundle before it, which holds the last event the scan's start follows."""
    site = Site(tmp_path / "site", seed=12)
    try:
        for day in range(5):
            if day != 2:
                site.day(day, writes=40, records=3)
            assert site.backup(day).ok
    finally:
        site.close()
    bundles = _by_index(site.provider)
    quiet = bundles[3]
    assert quiet.snapshot and quiet.last_seq == quiet.first_seq - 1 == bundles[2].last_seq and quiet.last_wall is None
    assert quiet.snapshot["wal_seq_before"] == bundles[2].last_seq
    t = site.backups[2].at  # the quiet day's upload moment: its snapshot is consistent from here
    plan = plan_external(site.provider, Target("at", t))
    assert plan.snapshot_bundle.index == 3 and [b.index for b in plan.bundles] == [2, 3, 4]
    restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / "dump", progress=False)
    assert read_dump(tmp_path / "dump") == site.expected_at(t)
    t = next(log for log in site.days if log.day == 3).instants[0]  # the day after: still from the quiet day's snapshot
    plan = plan_external(site.provider, Target("at", t))
    assert plan.snapshot_bundle.index == 3 and [b.index for b in plan.bundles] == [2, 3, 4]
    restore_from_external(site.provider, Target("at", t), workdir=tmp_path, to_dump=tmp_path / "dump2", progress=False)
    assert read_dump(tmp_path / "dump2") == site.expected_at(t)


def test_the_plan_always_downloads_its_snapshot_bundle() -> None:
    """A snapshot whose scan began after the last event its own bundle holds (the bundle's WAL slice
    came out short): its bundle must still be downloaded, or the restore has no snapshot to start from."""
    b1, b2 = ob(1, 1, 10, "", "s1", 1, snapshot=True), ob(2, 11, 20, "s1", "s2", 2)
    b3 = ob(3, 21, 30, "s2", "s3", 3, snapshot=True)
    b3.meta["snapshot"]["wal_seq_before"] = 35  # its scan began after seq 35, which bundle 4 holds
    b4 = ob(4, 31, 40, "s3", "s4", 4)
    plan = plan_external(Listing([b1, b2, b3, b4]), Target("at", _at(4) - timedelta(hours=2)))
    assert plan.snapshot_bundle.index == 3
    assert plan.snapshot_bundle in plan.bundles, [b.index for b in plan.bundles]
    assert [b.index for b in plan.bundles] == [3, 4]


def test_a_segment_compressed_while_a_bundle_is_built_is_not_left_out(tmp_path: Path) -> None:
    """Capture seals a segment and compresses it in the background (``seg-N.wal`` -> ``seg-N.wal.zst``)
    while the day's bundle lists the WAL.  When the compression finishes between the listing's look at
    the folder and its look at the file, the segment must still be listed (it was dropped silently:
    the bundle came out short, and its snapshot began after the bundle's last event)."""
    site = Site(tmp_path / "site", seed=8, capture={"segment_bytes": 4096})
    try:
        site.day(0, writes=60, records=1)
        site.wait_captured()
    finally:
        site.close()
    wal = site.home.wal_dir
    segments = list_segments(wal).segments
    assert len(segments) >= 4 and all(s.sealed for s in segments[:-1])
    victim = segments[-2]
    plain = wal / victim.name[: -len(".zst")]
    raw = zstandard.ZstdDecompressor().stream_reader(victim.path.read_bytes()).read()
    original = Path.is_file

    def awaiting_compression() -> None:  # sealed, not yet compressed: a valid part of the WAL
        plain.write_bytes(raw)
        victim.path.unlink()

    def compressed_meanwhile(self: Path) -> bool:  # the compression ends between the listing's two looks
        if self == plain and plain.exists():
            compress_segment(wal, victim.index)
        return original(self)

    awaiting_compression()
    assert [s.index for s in list_segments(wal).segments] == [s.index for s in segments]
    compress_segment(wal, victim.index)
    wrong = []
    for what, check in [
        ("build_bundle", lambda: build_bundle(site.home, tmp_path / "out", after=Position(), clock=site.clock).manifest["wal"]["last_seq"] == site.events),
        ("read_records", lambda: [r.seq for r in read_records(wal)] == list(range(1, site.events + 1))),
        ("list_segments", lambda: [s.index for s in list_segments(wal).segments] == [s.index for s in segments]),
    ]:
        awaiting_compression()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Path, "is_file", compressed_meanwhile)
            try:
                if not check():
                    wrong.append(f"{what} (short)")
            except WalkitError as exc:
                wrong.append(f"{what} ({exc})")
        assert victim.path.exists() and not plain.exists()
    assert wrong == [], f"{', '.join(wrong)} left out {victim.name}, compressed while the WAL was listed"

"""The day's one call (walkit.offsite.upload.upload), through the Python API, on a simulated clock.

Each test runs a private sandbox and a capture of it on one SimulatedClock, and uploads
to a MockExternalBackupProvider (its own 24 h rate limit is the alarm for a second call).

- the first upload sends the snapshot and the WAL from seq 1; a second one in the window
  is refused (exit code 3, when the next is allowed) before anything is built, written or
  sent; 24 h later the next bundle continues the chain;
- a failed call is spent, and the next day's bundle covers the failed day too;
- a provider that is down spends nothing, and a retry the same day succeeds;
- a bundle too large with its snapshot goes without it; too large without: refused, unspent;
- the snapshot policy (weekly, only the first) decides which bundles carry one;
- the calendar window (Europe/Zurich) allows the next call at local midnight;
- a call whose result was never recorded is spent; the next bundle continues after it
  only if the service lists it;
- nothing new: skipped, unspent;
- encrypted bundles: the service sees only age ciphertext; the identity restores them.

Every test that restores compares the state restored from the service's bundles alone
with ``state_at`` of the local home, byte for byte.
"""

from __future__ import annotations

import importlib
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyrage
import pytest

from walkit.errors import (
    ProviderError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitError,
    RestoreError,
    StorageLimitError,
)
from walkit.offsite.bundle import AGE_MAGIC, Position, build_bundle, load_identities, parse_recipients, verify_bundle
from walkit.offsite.external import list_offsite, plan_external, resolve_chain
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import Policy, bundles_dir, offsite_position, prepare_bundle, quota_dir
from walkit.restore.plan import Target

from .conftest import DAY, Crash, World, assert_service_rule, open_world

# the module, not the function walkit/__init__.py exports under the same name
upload_module = importlib.import_module("walkit.offsite.upload")
BUNDLE_NAME = re.compile(r"walkit-\d{8}T\d{6}Z-\d{6}-[0-9a-f]{6}\.tar(\.age)?")


def begin(w: World) -> None:
    """A first day: some changes, a snapshot, more changes."""
    w.write(3)
    w.snapshot()
    w.write(2)


def check_chain(metas: list[dict[str, Any]], events: int) -> None:
    """Consecutive bundles: each starts right after the previous one ends and names its seal."""
    assert metas[0]["first_seq"] == 1 and metas[0]["prev"] == ""
    for before, after in zip(metas, metas[1:], strict=False):
        assert after["index"] == before["index"] + 1
        assert after["first_seq"] == before["last_seq"] + 1 and after["prev"] == before["seal"]
    assert metas[-1]["last_seq"] == events


def test_one_call_per_window_is_refused_before_anything_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_world(tmp_path) as w:
        w.write(3)
        snap = w.snapshot()
        w.write(2)
        first = w.upload(policy=Policy(snapshot_every_days=1))
        assert first.ref and first.skipped is None and first.bundle is not None
        meta = first.bundle.metadata()
        assert (w.events, w.changes) == (7, 6)  # shop.orders' create event, then 3 + 2 inserts and an update
        assert meta["index"] == 1 and meta["first_seq"] == 1 and meta["last_seq"] == w.events and meta["prev"] == ""
        assert meta["snapshot"]["id"] == snap.id and not meta["encrypted"]
        (stored,) = w.mock.list()
        assert stored.ref == first.ref and stored.metadata["id"] == meta["id"] and stored.size == meta["size"]
        (call,) = w.ledger.calls()
        assert call.ok is True and call.ref == first.ref and call.id == first.call_id and call.what["id"] == meta["id"]
        blob = tmp_path / "downloaded.tar"
        blob.write_bytes(w.mock.download(first.ref))
        assert verify_bundle(blob).manifest["wal"]["last_seq"] == w.events  # what the service holds is the whole bundle
        assert w.bundle_files() == []  # a sent bundle is not kept

        w.write(2)
        w.clock.advance(hours=1)
        before = (w.bundle_files(), w.ledger_bytes(), w.mock.upload_calls)

        def must_not_run(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a bundle was prepared although the window's call is spent")

        with monkeypatch.context() as m:
            for name in ("prepare_bundle", "build_bundle", "take_snapshot", "list_snapshots"):
                m.setattr(upload_module, name, must_not_run)
            with pytest.raises(QuotaExceededError) as info:
                w.upload(uri=w.uri)
        refused = info.value
        assert refused.exit_code == 3 and refused.next_allowed == call.at + DAY
        assert (call.at + DAY).isoformat() in str(refused) and "nothing was sent" in str(refused)
        assert (w.bundle_files(), w.ledger_bytes(), w.mock.upload_calls) == before
        w.clock.set(call.at + DAY - timedelta(seconds=1))
        with pytest.raises(QuotaExceededError):
            w.upload(uri=w.uri)
        assert (w.bundle_files(), w.ledger_bytes(), w.mock.upload_calls) == before

        w.clock.set(call.at + DAY)
        second = w.upload(uri=w.uri)  # daily policy: a fresh snapshot goes with it
        assert second.bundle is not None
        meta2 = second.bundle.metadata()
        check_chain([meta, meta2], w.events)
        assert meta2["snapshot"] is not None and meta2["snapshot"]["id"] != snap.id
        assert [b.meta["id"] for b in resolve_chain(list_offsite(w.mock)).bundles] == [meta["id"], meta2["id"]]
        assert w.mock.upload_calls == 2 and w.bundle_files() == []
        assert_service_rule(w.mock)


def test_a_bundle_is_written_into_home_bundles_under_its_own_name(tmp_path: Path) -> None:
    """``keep_bundle=True`` keeps each sent bundle as HOME/bundles/walkit-<id>.tar[.age]."""
    identity = pyrage.x25519.Identity.generate()
    with open_world(tmp_path) as w:
        begin(w)
        plain = w.upload(keep_bundle=True)
        w.write(2)
        w.clock.set(w.ledger.calls()[0].at + DAY)
        sealed = w.upload(keep_bundle=True, recipients=parse_recipients(str(identity.to_public())))
        kept = []
        for result, suffix in ((plain, ".tar"), (sealed, ".tar.age")):
            assert result.bundle is not None
            path, meta = result.bundle.path, result.bundle.metadata()
            assert path.parent == bundles_dir(w.home) and BUNDLE_NAME.fullmatch(path.name) and path.name.endswith(suffix), path
            assert meta["name"] == path.name and path.is_file() and path.stat().st_size == meta["size"]
            kept.append(path.name)
        assert [b.metadata["name"] for b in w.mock.list()] == kept == sorted(w.bundle_files())


def test_a_failed_call_is_spent_and_the_next_bundle_covers_the_failed_day(tmp_path: Path) -> None:
    with open_world(tmp_path) as w:
        begin(w)
        day1 = w.upload().bundle.metadata()  # type: ignore[union-attr]
        t1 = w.ledger.calls()[0].at
        day2_change = w.write(3)
        w.clock.set(t1 + DAY)
        w.mock.failure_rate = 1.0  # the service fails today's call
        with pytest.raises(ProviderError) as info:
            w.upload()
        assert not isinstance(info.value, (ProviderUnavailableError, RateLimitError)) and info.value.sent is True
        w.mock.failure_rate = 0.0
        failed = w.ledger.calls()[-1]
        assert failed.ok is False and failed.spent and "simulated failure" in (failed.error or "")
        assert failed.what["first_seq"] == day1["last_seq"] + 1
        assert [c["outcome"] for c in w.mock.calls] == ["stored", "failed"] and len(w.mock.list()) == 1
        assert w.ledger.status()["used"] is True and offsite_position(w.ledger, w.mock)[0].last_seq == day1["last_seq"]

        w.clock.advance(hours=23)
        before = w.ledger_bytes()
        with pytest.raises(QuotaExceededError, match="failed") as refused:
            w.upload()
        assert refused.value.next_allowed == failed.at + DAY and w.ledger_bytes() == before
        day3_change = w.write(2)
        w.clock.set(failed.at + DAY)
        day3 = w.upload().bundle.metadata()  # type: ignore[union-attr]
        check_chain([day1, day3], w.events)  # day 2's changes are in it
        assert [c["outcome"] for c in w.mock.calls] == ["stored", "failed", "stored"]
        assert_service_rule(w.mock)
        for at in (day2_change, day3_change):
            assert w.offsite_state(at) == w.local_state(at)


def test_a_provider_that_is_down_spends_nothing_and_a_retry_the_same_day_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_world(tmp_path) as w:
        begin(w)
        w.mock.down = True
        with pytest.raises(ProviderUnavailableError) as info:
            w.upload()
        assert info.value.sent is False and "nothing was sent" in str(info.value)
        assert w.ledger.calls() == [] and w.ledger_bytes() == b"" and w.ledger.status()["used"] is False
        assert w.mock.upload_calls == 0

        # down after its health check answered: the upload itself cannot reach it, so nothing was sent
        with monkeypatch.context() as m:
            w.mock.down = False
            real_upload = w.mock.upload

            def goes_down(data: Any, metadata: dict[str, Any]) -> str:
                w.mock.down = True
                return real_upload(data, metadata)

            m.setattr(w.mock, "upload", goes_down)
            with pytest.raises(ProviderUnavailableError):
                w.upload()
        (call,) = w.ledger.calls()
        assert call.ok is False and call.sent is False and not call.spent
        assert w.ledger.status()["used"] is False and w.ledger.next_allowed() is None and w.mock.upload_calls == 0

        w.mock.down = False
        w.clock.advance(minutes=30)
        result = w.upload()
        assert result.ref and result.bundle is not None
        meta = result.bundle.metadata()
        assert meta["first_seq"] == 1 and meta["last_seq"] == w.events and meta["snapshot"] is not None
        assert w.mock.upload_calls == 1 and w.ledger.status()["used"] is True
        assert w.ledger.next_allowed() == w.ledger.calls()[-1].at + DAY


def test_an_upload_the_service_cannot_take_leaves_no_bundle_behind(tmp_path: Path) -> None:
    """A bundle is removed once it is sent; one that cannot be sent (the service is down, or
    it would not fit) must not stay in HOME/bundles either."""
    with open_world(tmp_path) as w:
        begin(w)
        w.mock.down = True
        with pytest.raises(ProviderUnavailableError):
            w.upload()
        assert w.bundle_files() == []
        w.mock.down = False
        w.mock.storage_limit_bytes = 100
        with pytest.raises(StorageLimitError):
            w.upload()
        assert w.bundle_files() == []
        w.mock.storage_limit_bytes = None
        assert w.upload().ref and w.bundle_files() == []


def test_a_bundle_too_large_goes_without_its_snapshot_and_one_too_large_even_then_is_refused_unspent(tmp_path: Path) -> None:
    with open_world(tmp_path, preload_bytes=96 * 1024) as w:  # the snapshot weighs ~96 KB, the WAL a few KB
        begin(w)
        probe = tmp_path / "probe"
        probe.mkdir()
        with_snapshot = prepare_bundle(w.home, w.ledger, None, out=probe, clock=w.clock)
        wal_only = build_bundle(w.home, probe, after=Position(), snapshot=None, clock=w.clock)
        assert with_snapshot.manifest["snapshot"] is not None and wal_only.manifest["snapshot"] is None
        assert with_snapshot.size > wal_only.size + 64 * 1024

        w.mock.storage_limit_bytes = wal_only.size - 1
        with pytest.raises(StorageLimitError) as info:
            w.upload()
        assert info.value.sent is False and "not spent" in str(info.value)
        assert w.ledger.calls() == [] and w.ledger_bytes() == b"" and w.ledger.status()["used"] is False
        assert w.mock.upload_calls == 0 and w.bundle_files() == []

        w.mock.storage_limit_bytes = (with_snapshot.size + wal_only.size) // 2
        result = w.upload()
        assert result.bundle is not None and result.bundle.manifest["snapshot"] is None
        assert any("sending the WAL only" in note for note in result.notes), result.notes
        meta = result.bundle.metadata()
        assert meta["first_seq"] == 1 and meta["last_seq"] == w.events
        (stored,) = w.mock.list()
        assert stored.size == result.bundle.size == wal_only.size and w.ledger.calls()[-1].ok is True
        assert w.bundle_files() == []


@pytest.mark.parametrize(
    ("every", "expected"),
    [(7, [True, False, False, False, False, False, False, True]), (0, [True, False, False, False])],
    ids=["weekly", "only-the-first"],
)
def test_the_snapshot_policy_decides_which_bundles_carry_one(tmp_path: Path, every: float, expected: list[bool]) -> None:
    with open_world(tmp_path, preload_bytes=64 * 1024) as w:
        begin(w)
        policy = Policy(snapshot_every_days=every)
        metas = [w.upload(policy=policy, uri=w.uri).bundle.metadata()]  # type: ignore[union-attr]
        start = w.ledger.calls()[0].at
        changes = []
        for day in range(1, len(expected)):
            w.clock.set(start + day * DAY - timedelta(hours=2))
            changes.append(w.write(2))
            w.clock.set(start + day * DAY)
            metas.append(w.upload(policy=policy, uri=w.uri).bundle.metadata())  # type: ignore[union-attr]
        assert [m["snapshot"] is not None for m in metas] == expected
        check_chain(metas, w.events)
        with_snap = [m["size"] for m in metas if m["snapshot"]]
        without = [m["size"] for m in metas if not m["snapshot"]]
        assert min(with_snap) > max(without) + 48 * 1024, (with_snap, without)
        # keep_from: the oldest bundle a restore from this one's chain needs
        assert [m["keep_from"] for m in metas] == ([m["index"] if m["snapshot"] else 1 for m in metas] if every else [1] * len(metas))
        if every == 7:
            assert metas[-1]["snapshot"]["id"] != metas[0]["snapshot"]["id"]
        at = changes[-2]  # the last day's changes before the newest bundle
        plan = plan_external(w.mock, Target("at", at))
        assert plan.snapshot_bundle.index == 1 and [b.index for b in plan.bundles] == list(range(1, len(expected)))
        assert w.offsite_state(at) == w.local_state(at)
        assert_service_rule(w.mock)


def test_the_calendar_window_in_zurich_allows_the_next_call_at_local_midnight(tmp_path: Path) -> None:
    zurich = ZoneInfo("Europe/Zurich")
    late = datetime(2025, 6, 10, 23, 30, tzinfo=zurich)
    midnight = datetime(2025, 6, 11, 0, 0, tzinfo=zurich)
    with open_world(tmp_path, rate_limit_hours=0) as w:  # a service whose rule is the calendar day
        w.ledger = QuotaLedger(quota_dir(w.home), window="calendar", tz="Europe/Zurich", clock=w.clock)
        begin(w)
        w.clock.set(late - timedelta(minutes=10))
        w.write(1)
        w.clock.set(late)
        first = w.upload().bundle.metadata()  # type: ignore[union-attr]
        assert w.ledger.next_allowed() == midnight and w.ledger.status()["next_allowed"] == "2025-06-10T22:00:00+00:00"
        w.write(2)
        w.clock.set(midnight - timedelta(seconds=1))
        before = w.ledger_bytes()
        with pytest.raises(QuotaExceededError) as info:
            w.upload()
        assert info.value.next_allowed == midnight and "2025-06-10T22:00:00+00:00" in str(info.value)
        assert w.ledger_bytes() == before and w.mock.upload_calls == 1
        w.clock.set(midnight)
        second = w.upload().bundle.metadata()  # type: ignore[union-attr]
        check_chain([first, second], w.events)
        assert w.ledger.next_allowed() == datetime(2025, 6, 12, 0, 0, tzinfo=zurich)


@pytest.mark.parametrize("stored", [True, False], ids=["the-service-lists-it", "the-service-lacks-it"])
def test_a_call_without_a_recorded_result_is_spent_and_the_next_bundle_follows_what_the_service_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stored: bool
) -> None:
    with open_world(tmp_path) as w:
        begin(w)
        day1 = w.upload().bundle.metadata()  # type: ignore[union-attr]
        day2_change = w.write(2)
        w.clock.set(w.ledger.calls()[0].at + DAY)
        real_upload, real_append = w.mock.upload, QuotaLedger._append

        def dies(data: Any, metadata: dict[str, Any]) -> str:
            if stored:
                real_upload(data, metadata)
            raise Crash  # the process dies during the call ...

        def append(self: QuotaLedger, record: dict[str, Any]) -> None:
            if record["kind"] == "result":
                raise Crash  # ... so no result line is ever written
            real_append(self, record)

        with monkeypatch.context() as m:
            m.setattr(w.mock, "upload", dies)
            m.setattr(QuotaLedger, "_append", append)
            with pytest.raises(Crash):
                w.upload()
        crashed = w.ledger.calls()[-1]
        assert crashed.ok is None and crashed.spent and crashed.what["first_seq"] == day1["last_seq"] + 1
        assert len(w.mock.list()) == (2 if stored else 1)
        w.clock.advance(hours=1)
        with pytest.raises(QuotaExceededError, match="result unknown: interrupted"):
            w.upload()

        follows = crashed.what if stored else day1
        position, last = offsite_position(w.ledger, w.mock)
        assert (position.last_seq, position.seal) == (follows["last_seq"], follows["seal"]) and last is not None
        assert last.id == (crashed.id if stored else w.ledger.calls()[0].id)
        day3_change = w.write(2)
        w.clock.set(crashed.at + DAY)
        day3 = w.upload().bundle.metadata()  # type: ignore[union-attr]
        assert day3["index"] == follows["index"] + 1 and day3["prev"] == follows["seal"]
        assert day3["first_seq"] == follows["last_seq"] + 1 and day3["last_seq"] == w.events
        chain = resolve_chain(list_offsite(w.mock))
        assert chain.bundles[-1].meta["id"] == day3["id"] and not chain.orphans
        assert_service_rule(w.mock)
        for at in (day2_change, day3_change):
            assert w.offsite_state(at) == w.local_state(at)


def test_an_interrupt_after_the_service_stored_the_bundle_leaves_no_hole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (a BaseException) once the service holds day 2's bundle: whatever the ledger
    records, the next call is refused in the window and day 3's bundle leaves no hole."""
    with open_world(tmp_path) as w:
        begin(w)
        w.upload()
        day2_change = w.write(2)
        w.clock.set(w.ledger.calls()[0].at + DAY)
        real_upload = w.mock.upload

        def interrupted(data: Any, metadata: dict[str, Any]) -> str:
            real_upload(data, metadata)
            raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(w.mock, "upload", interrupted)
            with pytest.raises(KeyboardInterrupt):
                w.upload()
        assert w.ledger.calls()[-1].spent and len(w.mock.list()) == 2
        w.clock.advance(hours=1)
        with pytest.raises(QuotaExceededError):
            w.upload()
        day3_change = w.write(2)
        w.clock.set(w.ledger.calls()[-1].at + DAY)
        w.upload()
        chain = resolve_chain(list_offsite(w.mock))
        assert chain.bundles[-1].last_seq == w.events and not chain.orphans and not chain.missing()
        assert_service_rule(w.mock)
        for at in (day2_change, day3_change):
            assert w.offsite_state(at) == w.local_state(at)


def test_nothing_new_since_the_last_upload_is_skipped_and_spends_nothing(tmp_path: Path) -> None:
    with open_world(tmp_path) as w:
        begin(w)
        w.stop_capture()  # its clean stop records the WAL's position; after that nothing arrives
        first = w.upload().bundle.metadata()  # type: ignore[union-attr]
        w.clock.set(w.ledger.calls()[0].at + DAY)
        before = (w.ledger_bytes(), w.mock.upload_calls)
        result = w.upload()
        assert result.skipped and "not spent" in result.skipped and result.ref is None and result.call_id is None
        assert (w.ledger_bytes(), w.mock.upload_calls) == before
        assert w.ledger.status()["used"] is False and w.bundle_files() == []

        w.start_capture()  # new changes later that day: the call is still there to make
        w.write(2)
        again = w.upload()
        assert again.ref and again.bundle is not None
        check_chain([first, again.bundle.metadata()], w.events)
        assert w.mock.upload_calls == 2
        assert_service_rule(w.mock)


def test_encrypted_bundles_show_the_service_only_ciphertext_and_the_identity_restores_them(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    keyfile = tmp_path / "age.key"
    keyfile.write_text(f"# created: by the test\n{identity}\n", encoding="utf-8")
    recipients = parse_recipients(str(identity.to_public()))
    with open_world(tmp_path) as w:
        w.write(3, marker="PLAINTEXT-MARKER")
        w.snapshot()
        day1_change = w.write(2, marker="PLAINTEXT-MARKER")
        first = w.upload(recipients=recipients)
        w.clock.advance(hours=20)
        day2_change = w.write(2, marker="PLAINTEXT-MARKER")
        w.clock.set(w.ledger.calls()[0].at + DAY)
        second = w.upload(recipients=recipients)
        for result in (first, second):
            assert result.ref and result.bundle is not None
            meta = result.bundle.metadata()
            assert meta["encrypted"] is True
            blob = w.mock.download(result.ref)
            assert blob.startswith(AGE_MAGIC), blob[:40]
            assert b"MANIFEST.json" not in blob and b"PLAINTEXT-MARKER" not in blob and b"walkit-bundle" not in blob
        identities = load_identities(keyfile)
        for at in (day1_change, day2_change):
            restored = w.offsite_state(at, identities=identities)
            assert restored == w.local_state(at) and restored["shop.orders"]
        with pytest.raises(RestoreError, match="WALKIT_AGE_IDENTITY"):
            w.offsite_state(day2_change)
        assert_service_rule(w.mock)

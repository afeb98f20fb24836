"""The worker's schedule on a simulated clock: the daily call at BACKUP_HOUR (caught up when
missed, never twice in a window), snapshots every N hours, retention, clean stops, start errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.service.conftest import wait_for
from walkit import list_snapshots, read_records
from walkit.errors import ServerError, WALLockedError
from walkit.service.worker import BackupService, create_backup_service


def _spent(service: BackupService) -> list[Any]:
    return [c for c in service.ledger.calls() if c.spent]


def _settle(service: BackupService) -> None:
    """Two full scheduler passes after the clock moved: whatever was due has been done."""
    seen = service.live()["scheduler_passes"]
    wait_for(lambda: service.live()["scheduler_passes"] >= seen + 2, what="two scheduler passes")


def _calls_done(service: BackupService, n: int) -> bool:
    """``n`` spent calls, each with its result recorded."""
    calls = _spent(service)
    return len(calls) == n and all(c.ok is not None for c in calls)


def test_the_daily_call_waits_for_the_hour_then_is_made_once_per_day(make_worker: Any, sim: Any) -> None:
    service, clock, provider = make_worker(start=datetime(2026, 3, 2, 1, 0, tzinfo=UTC), daily_backup_hour=2)
    pymongo.MongoClient(sim[0]).shop.orders.insert_one({"n": 1})
    _settle(service)
    assert provider.upload_calls == 0, "a first worker waits for its first BACKUP_HOUR"
    assert service.next_upload_at() == datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    clock.set(datetime(2026, 3, 2, 2, 0, 30, tzinfo=UTC))
    wait_for(lambda: _calls_done(service, 1), what="the 02:00 call")
    pymongo.MongoClient(sim[0]).shop.orders.insert_one({"n": 2})
    for hour in (3, 9, 23):
        clock.set(datetime(2026, 3, 2, hour, 0, tzinfo=UTC))
        _settle(service)
    clock.set(datetime(2026, 3, 3, 1, 59, tzinfo=UTC))
    _settle(service)
    assert provider.upload_calls == 1, "no second call inside the day"
    clock.set(datetime(2026, 3, 3, 2, 1, tzinfo=UTC))
    wait_for(lambda: _calls_done(service, 2), what="the next day's call")
    calls = _spent(service)
    assert [c.ok for c in calls] == [True, True] and calls[1].at - calls[0].at >= timedelta(hours=24)
    # the ledger has the result before the worker has counted it and pruned: wait for those, not a sleep
    wait_for(lambda: service.live()["uploads_ok"] == 2 and service.live()["last_prune_at"] is not None, what="the count and the prune")


def test_an_hour_missed_while_down_is_caught_up_at_the_next_opportunity(make_worker: Any, sim: Any) -> None:
    service, clock, provider = make_worker(start=datetime(2026, 3, 2, 1, 0, tzinfo=UTC), daily_backup_hour=2)
    client = pymongo.MongoClient(sim[0])
    client.shop.orders.insert_one({"n": 1})
    clock.set(datetime(2026, 3, 2, 2, 5, tzinfo=UTC))
    wait_for(lambda: _calls_done(service, 1), what="the first call")
    service.stop()
    client.shop.orders.insert_one({"n": 2})  # while the worker is down
    clock.set(datetime(2026, 3, 3, 10, 0, tzinfo=UTC))  # the 02:00 hour passed while it was down
    again = BackupService(service.uri, service.home, provider=provider, clock=clock, daily_backup_hour=2, tick=0.02, capture_options={"clock": clock})
    again.start()
    try:
        wait_for(lambda: _calls_done(again, 2), what="the missed call, caught up")
        assert _spent(again)[-1].at == datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
        # the rolling window: the 02:00 slot the next day waits until 10:00
        clock.set(datetime(2026, 3, 4, 2, 30, tzinfo=UTC))
        _settle(again)
        assert provider.upload_calls == 2
        assert again.next_upload_at() == datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
        client.shop.orders.insert_one({"n": 3})
        clock.set(datetime(2026, 3, 4, 10, 0, 1, tzinfo=UTC))
        wait_for(lambda: _calls_done(again, 3), what="the call once the window allows it")
    finally:
        again.stop()
    # the restart resumed capture where it was: every insert is in the WAL once (the one made
    # while the worker was down too: capture resumes from the WAL's last token)
    numbers = sorted(r.event()["fullDocument"]["n"] for r in read_records(service.home.wal_dir) if r.kind == "e" and r.event().get("operationType") == "insert" and r.event()["ns"]["coll"] == "orders")
    assert numbers == [1, 2, 3]


def test_an_unreachable_service_is_tried_again_and_the_call_is_not_spent(make_worker: Any, sim: Any, tmp_path: Path) -> None:
    service, clock, provider = make_worker(start=datetime(2026, 3, 2, 1, 0, tzinfo=UTC), daily_backup_hour=2, retry_minutes=15)
    pymongo.MongoClient(sim[0]).shop.orders.insert_one({"n": 1})
    (tmp_path / "offsite").mkdir(exist_ok=True)
    (tmp_path / "offsite" / "DOWN").touch()
    clock.set(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    wait_for(lambda: service.live()["uploads_failed"] == 1, what="the failed attempt")
    _settle(service)
    assert service.live()["uploads_failed"] == 1, "not retried before retry_minutes"
    assert provider.upload_calls == 0 and not _spent(service)
    (tmp_path / "offsite" / "DOWN").unlink()
    clock.set(datetime(2026, 3, 2, 2, 16, tzinfo=UTC))
    wait_for(lambda: _calls_done(service, 1), what="the retry")
    assert _spent(service)[0].ok


def test_a_call_that_failed_after_it_was_sent_is_not_repeated_in_the_window(make_worker: Any, sim: Any) -> None:
    service, clock, provider = make_worker(start=datetime(2026, 3, 2, 1, 0, tzinfo=UTC), daily_backup_hour=2, failure_rate=1.0)
    pymongo.MongoClient(sim[0]).shop.orders.insert_one({"n": 1})
    clock.set(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    wait_for(lambda: _calls_done(service, 1), what="the failing call")
    for minutes in (20, 300, 1400):
        clock.set(datetime(2026, 3, 2, 2, 0, tzinfo=UTC) + timedelta(minutes=minutes))
        _settle(service)
    assert provider.upload_calls == 1 and _spent(service)[0].ok is False
    clock.set(datetime(2026, 3, 3, 2, 0, 1, tzinfo=UTC))
    wait_for(lambda: _calls_done(service, 2), what="the next window's call")


def test_local_snapshots_every_n_hours_without_the_quota(make_worker: Any, sim: Any) -> None:
    service, clock, provider = make_worker(start=datetime(2026, 3, 2, 3, 0, tzinfo=UTC), snapshot_interval_hours=4)
    pymongo.MongoClient(sim[0]).shop.orders.insert_one({"n": 1})
    wait_for(lambda: len(list((service.home.path / "snapshots").glob("snap-*"))) == 1, what="capture's first snapshot")
    clock.advance(hours=3)
    _settle(service)
    assert service.live()["snapshots_taken"] == 0
    clock.advance(hours=1, seconds=1)
    wait_for(lambda: service.live()["snapshots_taken"] == 1, what="the 4-hourly snapshot")
    clock.advance(hours=4, seconds=1)
    wait_for(lambda: service.live()["snapshots_taken"] == 2, what="the next snapshot")
    assert provider.upload_calls == 0 and not _spent(service)


def test_retention_prunes_old_snapshots_after_the_daily_call(make_worker: Any, sim: Any) -> None:
    service, clock, provider = make_worker(start=datetime(2026, 3, 2, 3, 0, tzinfo=UTC), daily_backup_hour=4,
                                           snapshot_interval_hours=6, snapshot_retention_days=1, wal_retention_days=1)
    client = pymongo.MongoClient(sim[0])
    for day in range(4):
        client.shop.orders.insert_one({"day": day})
        for hour in range(0, 24, 6):
            clock.set(datetime(2026, 3, 2, 3, 30, tzinfo=UTC) + timedelta(days=day, hours=hour))
            _settle(service)
    snaps = sorted((service.home.path / "snapshots").glob("snap-*"))
    assert provider.upload_calls >= 3
    assert service.live()["snapshots_taken"] >= 12
    assert len(snaps) < service.live()["snapshots_taken"], "retention removed old snapshots"
    last_call = _spent(service)[-1].at
    pruned_at = datetime.fromisoformat(service.live()["last_prune_at"])
    assert pruned_at >= last_call, "retention ran after the day's call"
    # of the snapshots older than the retention window at that prune, only the WAL window's base stays
    old = [s.id for s in list_snapshots(service.home) if s.end_wall < pruned_at - timedelta(days=1)]
    assert len(old) <= 1, old


def test_stop_flushes_every_write_made_before_it(make_worker: Any, sim: Any) -> None:
    service, clock, provider = make_worker()
    coll = pymongo.MongoClient(sim[0]).shop.orders
    coll.insert_many([{"k": i} for i in range(300)])
    service.stop()
    events = [r.event() for r in read_records(service.home.wal_dir) if r.kind == "e" and r.event()["ns"].get("coll") == "orders"]
    # the first write created the collection: its create event (showExpandedEvents), then one insert per document
    assert [e["operationType"] for e in events] == ["create"] + ["insert"] * 300
    assert sorted(e["fullDocument"]["k"] for e in events[1:]) == list(range(300))
    assert json.loads((service.home.path / "worker.json").read_text())["phase"] == "stopped"


def test_start_fails_clearly(make_worker: Any, tmp_path: Path, sim: Any) -> None:
    service, clock, provider = make_worker()
    with pytest.raises(WALLockedError):
        BackupService(sim[0], service.home, provider=provider, clock=clock).start()
    with pytest.raises(ServerError):
        BackupService("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300", tmp_path / "other", provider=provider, clock=clock).start()


def test_create_backup_service_takes_the_originals_options(sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from walkit.providers.mock import MockExternalBackupProvider

    monkeypatch.setenv("MONGODB_URI", sim[0])
    provider = MockExternalBackupProvider(latency_ms=0, failure_rate=0)
    service = create_backup_service(serviceName="order-service", database="order_db", externalProvider=provider, dailyBackupHour=3, home=tmp_path / "h")
    assert (service.service_name, service.database, service.provider, service.daily_backup_hour) == ("order-service", "order_db", provider, 3)
    assert service.uri == sim[0]
    with pytest.raises(Exception, match="0..23"):
        create_backup_service(dailyBackupHour=24)


def test_a_call_refused_before_sending_is_retried_later_not_every_tick(make_worker: Any, sim: Any) -> None:
    from walkit.errors import ProviderError

    service, clock, provider = make_worker(start=datetime(2026, 3, 2, 1, 0, tzinfo=UTC), daily_backup_hour=2, retry_minutes=30)
    refusals: list[int] = []
    real_upload = provider.upload

    def refuse_once(data: Any, metadata: Any) -> Any:
        if not refusals:
            refusals.append(1)
            raise ProviderError("the name is already taken; nothing was stored", sent=False)
        return real_upload(data, metadata)

    provider.upload = refuse_once  # type: ignore[method-assign]
    pymongo.MongoClient(sim[0]).shop.orders.insert_one({"n": 1})
    clock.set(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    wait_for(lambda: refusals, what="the refused call")
    for _ in range(3):
        _settle(service)
    assert service.live()["uploads_failed"] == 1, "not retried on every tick"
    assert service.next_upload_at() >= datetime(2026, 3, 2, 2, 30, tzinfo=UTC)
    clock.set(datetime(2026, 3, 2, 2, 31, tzinfo=UTC))
    wait_for(lambda: _calls_done(service, 1) and _spent(service)[0].ok, what="the retry")


def test_an_unreadable_ledger_makes_the_worker_unhealthy_but_keeps_it_running(make_worker: Any) -> None:
    service, clock, provider = make_worker()
    ledger = service.ledger.path
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text('{"kind": "intent", "id": "a", "at": "2026-03-02T00:00:00+00:00", "what": {}}\nnot json\n{"kind": "result"}\n')
    _settle(service)
    live = service.live()
    assert live["running"] and not live["healthy"] and "line 2" in live["ledger_error"]
    before = live["scheduler_passes"]
    wait_for(lambda: service.live()["scheduler_passes"] > before + 2, what="the scheduler going on")
    assert json.loads((service.home.path / "worker.json").read_text())["healthy"] is False

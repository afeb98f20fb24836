"""/metrics, /healthz and /backup/strategy: what they say matches the home, the ledger and the worker."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Api

LIVE = {
    "running": True, "healthy": True, "phase": "capturing", "events_captured": 1234, "gaps": 1, "reconnects": 2,
    "errors": 3, "capture_lag_p99_seconds": 0.25, "last_event_at": None, "started_at": "2025-06-10T06:00:00+00:00",
}


def metrics(api: Api) -> dict[str, tuple[str, float]]:
    """Sample name -> (family type, value), parsed by prometheus_client's parser."""
    r = api.http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, tuple[str, float]] = {}
    for family in text_string_to_metric_families(r.text):
        assert family.documentation, family.name
        for sample in family.samples:
            assert sample.name not in out
            out[sample.name] = (family.type, sample.value)
    return out


def test_metrics_follow_the_home_and_the_ledger(make_api: Callable[..., Any]) -> None:
    api: Api = make_api()
    m = metrics(api)
    assert m["walkit_snapshots"] == ("gauge", 0)
    assert m["walkit_quota_available"] == ("gauge", 1)
    assert m["walkit_worker_up"] == ("gauge", 0)
    assert m["walkit_wal_bytes"] == ("gauge", 0)
    # unknown without a worker, or before any upload: left out
    for absent in ("walkit_events_captured_total", "walkit_capture_lag_seconds", "walkit_errors_total",
                   "walkit_last_successful_upload_timestamp_seconds", "walkit_quota_next_allowed_timestamp_seconds"):
        assert absent not in m

    api.post("/backup/snapshot")
    api.post("/backup/snapshot")
    (api.home.wal_dir / "seg-00000001.wal").write_bytes(b"x" * 1000)
    (api.home.wal_dir / "seg-00000000.wal.zst").write_bytes(b"y" * 234)
    m = metrics(api)
    assert m["walkit_snapshots"][1] == 2 == len(api.http.get("/backup/snapshots").json()["snapshots"])
    assert m["walkit_wal_bytes"][1] == 1234

    (api.home.wal_dir / "seg-00000001.wal").unlink()
    (api.home.wal_dir / "seg-00000000.wal.zst").unlink()
    assert api.post("/backup/trigger").status_code == 200
    m = metrics(api)
    call = api.ledger.calls()[-1]
    nxt = api.ledger.next_allowed()
    assert nxt is not None
    assert m["walkit_last_successful_upload_timestamp_seconds"][1] == pytest.approx(call.at.timestamp())
    assert m["walkit_quota_available"][1] == 0
    assert m["walkit_quota_next_allowed_timestamp_seconds"][1] == pytest.approx(nxt.timestamp())


def test_metrics_of_a_running_worker(make_api: Callable[..., Any]) -> None:
    m = metrics(make_api(live=lambda: dict(LIVE)))
    assert m["walkit_events_captured_total"] == ("counter", 1234)
    assert m["walkit_capture_gaps_total"] == ("counter", 1)
    assert m["walkit_capture_reconnects_total"] == ("counter", 2)
    assert m["walkit_errors_total"] == ("counter", 3)
    assert m["walkit_capture_lag_seconds"] == ("gauge", 0.25)
    assert m["walkit_worker_up"] == ("gauge", 1)
    partial = metrics(make_api(live=lambda: {"running": True, "capture_lag_p99_seconds": None}))
    assert "walkit_capture_lag_seconds" not in partial and "walkit_events_captured_total" not in partial
    assert partial["walkit_worker_up"][1] == 1


def test_healthz(make_api: Callable[..., Any]) -> None:
    api: Api = make_api()
    r = api.http.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True and "worker" not in r.json()["checks"]
    assert make_api(live=lambda: dict(LIVE)).http.get("/healthz").status_code == 200
    for live, why in (({"running": False}, "not running"), ({"running": True, "healthy": False, "phase": "reconnecting"}, "unhealthy (phase: reconnecting)")):
        r = make_api(live=lambda live=live: live).http.get("/healthz")
        assert r.status_code == 503 and r.json()["ok"] is False
        assert why in r.json()["error"] and r.json()["checks"]["worker"]["ok"] is False

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    assert make_api(live=broken).http.get("/healthz").status_code == 503
    api.ledger.folder.mkdir(parents=True, exist_ok=True)
    api.ledger.path.write_text('{"kind": "intent"}\nnot json\n')
    r = api.http.get("/healthz")
    assert r.status_code == 503 and "ledger.jsonl line 1" in r.json()["error"]
    shutil.rmtree(api.home.path)
    r = api.http.get("/healthz")
    assert r.status_code == 503 and str(api.home.path) in r.json()["error"]


def test_strategy(make_api: Callable[..., Any]) -> None:
    facts = {"backup_hour": 2, "snapshot_interval_hours": 6, "wal_retention_days": 7, "snapshot_retention_days": 14, "provider": "mock", "quota_window": "rolling"}
    api: Api = make_api(strategy=facts)
    body = api.http.get("/backup/strategy").json()
    methods = {m["name"]: m for m in body["methods"]}
    assert list(methods) == ["wal", "snapshots", "external"]
    assert [m["where"] for m in methods.values()] == ["local", "local", "off-site"]
    assert [m["uses_quota"] for m in methods.values()] == [False, False, True]
    assert "every 6 h" in methods["snapshots"]["frequency"]
    assert all(m["protects_against"] for m in methods.values())
    scenarios = {s["name"]: s for s in body["scenarios"]}
    assert set(scenarios) == {"recent_loss", "server_crash", "site_lost"}
    assert "newest successful upload" in scenarios["site_lost"]["max_data_loss"]
    assert body["configured"] == facts
    assert body["current"]["offsite_covered_until"] is None and body["current"]["max_loss_seconds_if_site_lost_now"] is None

    api.post("/backup/snapshot")
    api.post("/backup/trigger")
    current = api.http.get("/backup/strategy").json()["current"]
    covered = datetime.fromisoformat(current["offsite_covered_until"])
    assert covered == datetime.fromisoformat(api.ledger.calls()[-1].what["snapshot"]["end_wall"])
    assert 0 <= current["max_loss_seconds_if_site_lost_now"] < 60
    assert current["quota"]["used"] is True

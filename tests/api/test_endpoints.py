"""The /backup/* endpoints against real parts: snapshots of the session's MongoDB, the
quota ledger and upload(), the mock service in a temporary folder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from walkit.errors import ConfigError, WalkitError
from walkit.offsite.upload import UploadResult

from .conftest import AUTH, DOCS, TOKEN, Api

ISO_OR_NONE = (str, type(None))


def test_status_shape(make_api: Callable[..., Api]) -> None:
    api = make_api(live=lambda: {"running": True, "healthy": True, "phase": "capturing", "events_captured": 7})
    r = api.http.get("/backup/status")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) >= {"now", "home", "quota", "last_upload", "waiting", "local", "capture", "offsite", "worker", "api"}
    datetime.fromisoformat(body["now"])
    assert body["home"] == str(api.home.path)
    assert body["quota"] == {"window": "rolling", "used": False, "last_call": None, "next_allowed": None}
    assert body["last_upload"] is None
    assert isinstance(body["waiting"]["events"], int) and isinstance(body["waiting"]["snapshots"], list)
    assert isinstance(body["local"], list)
    assert isinstance(body["capture"]["age_seconds"], (float, int, type(None)))
    assert body["offsite"]["source"] == "the quota ledger"  # no provider call unless asked
    assert body["worker"] == {"running": True, "healthy": True, "phase": "capturing", "events_captured": 7}
    assert body["api"] == {"post_enabled": True}


def test_status_checks_the_provider_only_when_asked(api: Api) -> None:
    assert api.http.get("/backup/status?check_provider=true").json()["offsite"]["source"] == "mock"
    assert api.http.get("/backup/status?check_provider=false").json()["offsite"]["source"] == "the quota ledger"
    bad = api.http.get("/backup/status?check_provider=maybe")
    assert bad.status_code == 400 and "check_provider" in bad.json()["error"]
    (api.mock.state_dir / "DOWN").touch()  # type: ignore[operator]
    down = api.http.get("/backup/status?check_provider=true")
    assert down.status_code == 200
    assert down.json()["offsite"]["source"] == "mock" and "error" in down.json()["offsite"]


def test_status_without_worker_or_token(make_api: Callable[..., Api]) -> None:
    def broken_provider() -> None:
        raise ConfigError("the provider is not configured: set WALKIT_PROVIDER")

    body = make_api(token=None, provider=broken_provider).http.get("/backup/status?check_provider=true").json()
    assert body["worker"] == {"running": False}
    assert body["api"] == {"post_enabled": False}
    assert "WALKIT_PROVIDER" in body["offsite"]["error"]


def test_snapshot_then_listing(api: Api) -> None:
    assert api.http.get("/backup/snapshots").json() == {"snapshots": []}
    first = api.post("/backup/snapshot")
    assert first.status_code == 201, first.text
    snap = first.json()["snapshot"]
    assert snap["documents"] == DOCS and snap["collections"] == 1
    second = api.post("/backup/snapshot").json()["snapshot"]
    listed = api.http.get("/backup/snapshots").json()["snapshots"]
    assert [s["id"] for s in listed] == [snap["id"], second["id"]]  # newest last
    assert listed[0] == snap
    # local only: the quota and the service are untouched
    assert api.ledger.calls() == [] and api.mock.upload_calls == 0
    assert api.http.get("/backup/status").json()["waiting"]["snapshots"] == [snap["id"], second["id"]]


def test_snapshot_without_uri_is_503(make_api: Callable[..., Api]) -> None:
    api = make_api(uri=None)
    r = api.post("/backup/snapshot")
    assert r.status_code == 503
    assert r.json()["error"].startswith("no MongoDB URI configured")


def test_trigger_once_then_429_sending_nothing(api: Api) -> None:
    assert api.post("/backup/snapshot").status_code == 201
    first = api.post("/backup/trigger")
    assert first.status_code == 200, first.text
    result = first.json()
    assert result["skipped"] is None and result["ref"] and result["bundle"]["snapshot"]
    assert api.mock.upload_calls == 1 and [b.ref for b in api.mock.list()] == [result["ref"]]
    assert api.ledger.calls()[0].id == result["call"]

    second = api.post("/backup/trigger")
    assert second.status_code == 429
    assert api.mock.upload_calls == 1  # nothing was sent
    assert len(api.ledger.calls()) == 1  # nor recorded
    assert api.calls["trigger"] == 2
    body = second.json()
    nxt = api.ledger.next_allowed()
    assert nxt is not None and body["next_allowed"] == nxt.isoformat()
    retry = int(second.headers["retry-after"])
    assert 86_400 - 120 <= retry <= 86_400
    assert "spent" in body["error"] and "\n" not in body["error"]
    assert api.http.get("/backup/status").json()["quota"]["used"] is True


def test_concurrent_triggers_make_one_call(make_api: Callable[..., Api]) -> None:
    api = make_api(mock_options={"latency_ms": 400})  # the call lasts long enough for the others to overlap it
    api.post("/backup/snapshot")
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: api.post("/backup/trigger"), range(4)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 429, 429, 429], [r.text for r in responses]
    assert api.mock.upload_calls == 1 and len(api.ledger.calls()) == 1
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and "nothing was sent" in r.json()["error"]


def test_trigger_with_nothing_new_is_skipped_and_not_spent(api: Api) -> None:
    r = api.post("/backup/trigger")  # no snapshot, no WAL: nothing to send
    assert r.status_code == 200
    assert r.json()["skipped"] and r.json()["ref"] is None
    assert api.mock.upload_calls == 0 and api.ledger.status()["used"] is False


def test_provider_down_is_503_and_not_spent(api: Api) -> None:
    api.post("/backup/snapshot")
    down = api.mock.state_dir / "DOWN"  # type: ignore[operator]
    down.touch()
    r = api.post("/backup/trigger")
    assert r.status_code == 503
    assert r.json()["spent"] is False and "down" in r.json()["error"]
    assert api.mock.upload_calls == 0 and api.ledger.status()["used"] is False
    down.unlink()
    assert api.post("/backup/trigger").status_code == 200  # the day's call was still there
    assert api.mock.upload_calls == 1


def test_provider_failure_is_502_and_spent(make_api: Callable[..., Api]) -> None:
    api = make_api(mock_options={"failure_rate": 1.0})
    api.post("/backup/snapshot")
    r = api.post("/backup/trigger")
    assert r.status_code == 502 and r.json()["spent"] is True
    assert api.mock.upload_calls == 1
    assert api.post("/backup/trigger").status_code == 429
    assert api.mock.upload_calls == 1


def test_too_large_is_507_and_not_spent(make_api: Callable[..., Api]) -> None:
    api = make_api(mock_options={"max_upload_bytes": 10})
    api.post("/backup/snapshot")
    r = api.post("/backup/trigger")
    assert r.status_code == 507 and r.json()["spent"] is False
    assert api.mock.upload_calls == 0 and api.ledger.status()["used"] is False


@pytest.mark.parametrize("path", ["/backup/snapshot", "/backup/trigger"])
def test_post_needs_the_token(api: Api, path: str) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}, {"Authorization": f"Token {TOKEN}"}, {"Authorization": TOKEN}):
        r = api.post(path, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["error"]
    for wrong in (TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "x"):
        r = api.post(path, headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 403 and r.json()["error"] == "the bearer token is wrong"
    assert api.calls == {"snapshot": 0, "trigger": 0}
    expected = {"/backup/snapshot": 201, "/backup/trigger": 200}[path]
    assert api.post(path, headers={"Authorization": f"bearer {TOKEN}"}).status_code == expected  # the scheme is case-insensitive


@pytest.mark.parametrize("token", [None, ""])
def test_post_disabled_without_a_configured_token(make_api: Callable[..., Api], token: str | None) -> None:
    api = make_api(token=token)
    for path in ("/backup/snapshot", "/backup/trigger"):
        for headers in (AUTH, {}, {"Authorization": "Bearer"}):
            r = api.post(path, headers=headers)
            assert r.status_code == 403
            assert r.json() == {"error": "POST endpoints are disabled: set WALKIT_API_TOKEN"}
    assert api.calls == {"snapshot": 0, "trigger": 0}
    assert api.http.get("/backup/snapshots").status_code == 200  # GET needs no token


def test_errors_are_one_clear_line_and_never_a_traceback(make_api: Callable[..., Api], caplog: pytest.LogCaptureFixture) -> None:
    def walkit_error() -> UploadResult:
        raise WalkitError("the bundle folder is read-only\nmake it writable")

    def crash() -> UploadResult:
        raise RuntimeError("internal detail 0xdeadbeef")

    with caplog.at_level(logging.DEBUG):
        r = make_api(trigger=walkit_error).post("/backup/trigger")
        assert r.status_code == 500
        assert r.json() == {"error": "the bundle folder is read-only make it writable"}
        r = make_api(trigger=crash).post("/backup/trigger")
        assert r.status_code == 500
        assert "RuntimeError" in r.json()["error"]
        assert "0xdeadbeef" not in r.text and "Traceback" not in r.text
    crashes = [rec for rec in caplog.records if rec.name == "walkit.api" and rec.exc_info]
    assert len(crashes) == 1 and "0xdeadbeef" in str(crashes[0].exc_info[1])  # type: ignore[index]
    assert TOKEN not in caplog.text


def test_the_token_is_never_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        api.post("/backup/snapshot")
        api.post("/backup/trigger")
        api.post("/backup/trigger")
        api.post("/backup/trigger", headers={"Authorization": f"Bearer {TOKEN}-wrong"})
        api.http.get("/backup/status", headers=AUTH)
    assert any(rec.name == "walkit.api" for rec in caplog.records)  # it did log
    assert TOKEN not in caplog.text and "Authorization" not in caplog.text and "Bearer" not in caplog.text


def test_unknown_paths_and_methods_answer_json(api: Api) -> None:
    r = api.http.get("/backup/nothing")
    assert r.status_code == 404 and "/openapi.json" in r.json()["error"]
    r = api.http.get("/backup/trigger")
    assert r.status_code == 405 and "GET" in r.json()["error"] and "POST" in r.headers["allow"]

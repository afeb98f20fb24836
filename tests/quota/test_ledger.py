"""The quota ledger: one call per window, whatever crashes or competes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from walkit.clock import SimulatedClock
from walkit.errors import ConfigError, QuotaError, QuotaExceededError
from walkit.offsite.quota import QuotaLedger

T0 = datetime(2026, 3, 28, 21, 30, tzinfo=UTC)  # 22:30 in Zurich, the night before DST starts
ROOT = Path(__file__).resolve().parents[2]


def ledger(folder: Path, clock: SimulatedClock, **kw: str) -> QuotaLedger:
    return QuotaLedger(folder, clock=clock, **kw)


def test_rolling_window_allows_one_call_per_24_hours(tmp_path: Path) -> None:
    clock = SimulatedClock(T0)
    q = ledger(tmp_path, clock)
    assert q.status()["used"] is False and q.next_allowed() is None
    with q.spend({"bundle": "b1"}) as call:
        call.ref = "ref-1"
    clock.advance(23 * 3600 + 59 * 60)
    before = q.path.read_bytes()
    with pytest.raises(QuotaExceededError) as info:
        with q.spend({"bundle": "b2"}):
            raise AssertionError("the body must not run")
    assert info.value.exit_code == 3 and info.value.next_allowed == T0 + timedelta(hours=24)
    assert "next is allowed at 2026-03-29T21:30:00+00:00" in str(info.value) and "nothing was sent" in str(info.value)
    assert q.path.read_bytes() == before  # a refused call writes nothing
    status = q.status()
    assert status["used"] is True and status["last_call"]["ref"] == "ref-1" and status["next_allowed"] == (T0 + timedelta(hours=24)).isoformat()
    clock.advance(60)
    with q.spend({"bundle": "b2"}) as call:
        call.ref = "ref-2"
    assert [c.ref for c in q.calls()] == ["ref-1", "ref-2"] and all(c.ok for c in q.calls())


def test_calendar_window_in_a_time_zone(tmp_path: Path) -> None:
    clock = SimulatedClock(T0)
    q = ledger(tmp_path, clock, window="calendar", tz="Europe/Zurich")
    with q.spend():
        pass
    # the next calendar day in Zurich begins at 2026-03-29 00:00 +01:00 = 23:00 UTC: 90 minutes later
    assert q.next_allowed() == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    clock.advance(89 * 60)
    with pytest.raises(QuotaExceededError):
        with q.spend():
            pass
    clock.advance(60)
    with q.spend():
        pass
    # that day is 23 hours long (DST): the next call is allowed at midnight +02:00 = 22:00 UTC
    assert q.next_allowed() == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)


def test_a_failed_call_is_spent_unless_nothing_was_sent(tmp_path: Path) -> None:
    clock = SimulatedClock(T0)
    q = ledger(tmp_path, clock)
    with pytest.raises(ConnectionError):
        with q.spend() as call:
            call.sent = False  # the service could not be reached: nothing left the machine
            raise ConnectionError("connection refused")
    assert q.next_allowed() is None and q.calls()[0].ok is False
    with pytest.raises(TimeoutError):
        with q.spend():
            raise TimeoutError("no answer after the upload")  # it may have arrived: spent
    with pytest.raises(QuotaExceededError, match="failed"):
        with q.spend():
            pass


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from walkit.offsite.quota import QuotaLedger
    with QuotaLedger(Path(sys.argv[1])).spend({"bundle": "x"}) as call:
        print("calling", flush=True)
        time.sleep(60)
        call.ref = "never"
    """
)


def test_kill_9_during_the_call_counts_as_spent_and_a_second_process_is_refused(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "calling"
        q = QuotaLedger(tmp_path)
        before = q.path.read_bytes()
        with pytest.raises(QuotaExceededError, match=f"being made right now by walkit pid {proc.pid}"):
            with q.spend():
                raise AssertionError("the body must not run")
        assert q.path.read_bytes() == before
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    q = QuotaLedger(tmp_path)
    (call,) = q.calls()
    assert call.ok is None and call.spent  # no result: the call may have been made
    with pytest.raises(QuotaExceededError, match="result unknown: interrupted"):
        with q.spend():
            pass


def test_a_torn_last_line_is_ignored_and_damage_elsewhere_stops_everything(tmp_path: Path) -> None:
    clock = SimulatedClock(T0)
    q = ledger(tmp_path, clock)
    with q.spend() as call:
        call.ref = "r"
    clock.advance(25 * 3600)
    with q.path.open("ab") as f:
        f.write(b'{"kind": "intent", "id": "call-torn", "at": "2026-03-')  # a crash while appending
    assert len(q.calls()) == 1 and q.next_allowed() <= clock.now()  # the torn intent is not a call
    q.path.write_bytes(b'{"kind": "intent", "id": "a", "at": "2026-03-28T21:30:00+00:00"}\nGARBAGE\n')
    before = q.path.read_bytes()
    with pytest.raises(QuotaError, match="line 2: unreadable"):
        with q.spend():
            raise AssertionError("the body must not run")
    assert q.path.read_bytes() == before


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rolling, calendar"):
        QuotaLedger(tmp_path, window="weekly")
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        QuotaLedger(tmp_path, tz="Mars/Olympus")


def test_a_call_after_a_torn_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """The torn fragment is cut before the next intent is written, so the ledger stays readable."""
    clock = SimulatedClock(T0)
    q = ledger(tmp_path, clock)
    with q.spend() as call:
        call.ref = "first"
    with q.path.open("ab") as f:
        f.write(b'{"kind": "result", "id": "x", "ok": tr')  # a crash while appending
    clock.advance(25 * 3600)
    with q.spend() as call:
        call.ref = "second"
    clock.advance(25 * 3600)
    q.check_allowed()  # readable: no QuotaError
    assert [c.ref for c in q.calls()] == ["first", "second"]
    assert all(isinstance(json.loads(line), dict) for line in q.path.read_bytes().splitlines())  # no line glued to a fragment

"""Clocks: every walkit component asks a Clock for the time.

Nothing in walkit calls ``datetime.now()`` directly, so a simulation can run
thirty days in seconds through the real code by handing it a
:class:`SimulatedClock`.  Times are always timezone-aware UTC ``datetime``.

Guaranteed: ``SimulatedClock.now()`` never goes backwards unless ``set()`` is
called with an earlier instant.  Not guaranteed: ``SystemClock`` is the wall
clock and can jump if the machine's clock is changed.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "SimulatedClock", "as_utc", "iso"]


def as_utc(dt: datetime) -> datetime:
    """``dt`` with a time zone: a naive datetime means UTC (as everywhere in walkit)."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601, or None."""
    return value.isoformat() if value is not None else None


@runtime_checkable
class Clock(Protocol):
    """Anything that can tell the time and wait."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class SimulatedClock:
    """A clock that only moves when told to (thread-safe).

    ``sleep()`` advances the clock instead of waiting, so code that sleeps
    until tomorrow's backup hour returns at once with the clock at that hour.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` (plus any ``timedelta`` keywords)."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a SimulatedClock only advances; use set() to go back")
        with self._lock:
            self._now += step
            return self._now

    def set(self, instant: datetime) -> None:
        """Jump to ``instant`` (naive means UTC)."""
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        with self._lock:
            self._now = instant.astimezone(UTC)

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def __repr__(self) -> str:
        return f"SimulatedClock({self.now().isoformat()})"

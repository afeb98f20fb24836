"""The quota ledger: at most one call to the external service per window, crash-safe.

``HOME/quota/ledger.jsonl`` is an append-only log, one JSON object per line,
each fsynced before the next step::

    {"kind": "intent", "id": ..., "at": ISO, "what": {...}}     written before the call
    {"kind": "result", "id": ..., "at": ISO, "ok": bool, "sent": bool, "ref": ..., "error": ...}

A call is *spent* once its intent is on disk, unless its result says nothing
was sent (``sent: false``, e.g. the service could not be reached at all).
An intent without a result (a crash during the call, or an interruption such
as Ctrl-C: whether the call went through is unknown) counts as spent: walkit
never risks a second call in a window.  Windows: ``rolling`` (24 h after the
last spent call, as the service enforces) or ``calendar`` (the next calendar
day in a time zone).  ``HOME/quota/ledger.lock`` (flock) is held from the
check to the result, so two processes can never both call: the second is
refused at once.

Guaranteed: a refused call writes nothing.  A torn last line (a crash while
appending) is ignored: its call had not been made.  Any other unreadable line
stops everything with :class:`QuotaError` naming the file and line, rather
than risk a second call.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from walkit._fs import append_json_line
from walkit.clock import Clock, SystemClock
from walkit.errors import ConfigError, QuotaError, QuotaExceededError

__all__ = ["QuotaLedger", "Call", "WINDOWS"]

WINDOWS = ("rolling", "calendar")
DAY = timedelta(hours=24)


@dataclass
class Call:
    """One call to the external service, as the ledger knows it."""

    id: str
    at: datetime
    what: dict[str, Any] = field(default_factory=dict)
    ok: bool | None = None  # None: no result recorded (crashed during the call)
    sent: bool = True
    ref: Any = None
    error: str | None = None

    @property
    def spent(self) -> bool:
        return self.sent


class QuotaLedger:
    """The ledger of one home: ``with ledger.spend(what) as call: ...`` makes the day's call."""

    def __init__(self, folder: Path, *, window: str = "rolling", tz: str = "UTC", clock: Clock | None = None) -> None:
        if window not in WINDOWS:
            raise ConfigError(f"quota window {window!r} is not one of {', '.join(WINDOWS)}")
        try:
            self.tz = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"time zone {tz!r} is unknown (use an IANA name such as Europe/Zurich)") from None
        self.folder = Path(folder)
        self.path = self.folder / "ledger.jsonl"
        self.window = window
        self.clock = clock or SystemClock()
        self._lock_fd: int | None = None
        self._owner: int | None = None

    # -- reading -------------------------------------------------------------------
    def calls(self) -> list[Call]:
        """Every call on record, oldest first."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        calls: dict[str, Call] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                kind, call_id = rec["kind"], rec["id"]
                if kind == "intent":
                    calls[call_id] = Call(call_id, datetime.fromisoformat(rec["at"]), rec.get("what") or {})
                elif kind == "result":
                    call = calls[call_id]
                    call.ok, call.sent, call.ref, call.error = bool(rec["ok"]), bool(rec.get("sent", True)), rec.get("ref"), rec.get("error")
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines):
                    continue  # no newline after it: a torn last line, its step never completed
                raise QuotaError(
                    f"{self.path} line {number}: unreadable ({exc}); no call is made until a person checks the ledger "
                    "(a second call in a window must never happen)"
                ) from None
        return sorted(calls.values(), key=lambda c: c.at)

    def last_spent(self) -> Call | None:
        spent = [c for c in self.calls() if c.spent]
        return spent[-1] if spent else None

    def next_allowed(self, last: Call | None = None) -> datetime | None:
        """When the next call may be made (None: now)."""
        last = last if last is not None else self.last_spent()
        if last is None:
            return None
        if self.window == "rolling":
            return last.at + DAY
        local = last.at.astimezone(self.tz)
        next_day = (local + timedelta(days=1)).date()
        return datetime(next_day.year, next_day.month, next_day.day, tzinfo=self.tz).astimezone(UTC)

    def status(self) -> dict[str, Any]:
        last = self.last_spent()
        nxt = self.next_allowed(last)
        now = self.clock.now()
        return {
            "window": self.window,
            "used": nxt is not None and now < nxt,
            "last_call": None if last is None else {"id": last.id, "at": last.at.isoformat(), "ok": last.ok, "ref": last.ref, "error": last.error},
            "next_allowed": None if nxt is None or now >= nxt else nxt.isoformat(),
        }

    def check_allowed(self) -> None:
        """QuotaExceededError (saying when the next call is allowed) if the window's call is spent."""
        now = self.clock.now()
        nxt = self.next_allowed()
        if nxt is not None and now < nxt:
            last = self.last_spent()
            assert last is not None
            raise QuotaExceededError(
                f"today's call is spent (call {last.id} at {last.at.isoformat()}, "
                f"{'ok' if last.ok else 'failed' if last.ok is False else 'result unknown: interrupted'}); "
                f"the next is allowed at {nxt.isoformat()}; nothing was sent",
                nxt,
            )

    # -- spending ------------------------------------------------------------------
    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold ``ledger.lock`` (re-entrant for this object in this thread), so that preparing
        and making a call cannot overlap another process's; QuotaExceededError if it is held."""
        if self._lock_fd is not None and self._owner == threading.get_ident():
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.folder / "ledger.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(lock, 64).decode(errors="replace").strip() or "another process"
                raise QuotaExceededError(f"the external call is being made right now by {holder}; nothing was sent", None) from None
            os.ftruncate(lock, 0)
            os.pwrite(lock, f"walkit pid {os.getpid()}\n".encode(), 0)
            self._lock_fd, self._owner = lock, threading.get_ident()
            try:
                yield
            finally:
                self._lock_fd, self._owner = None, None
        finally:
            os.close(lock)  # releases the flock

    @contextmanager
    def spend(self, what: dict[str, Any] | None = None) -> Iterator[Call]:
        """Hold the lock, check the window, record the intent durably, and yield the call.

        The ``with`` body makes the call and sets ``call.ref`` (or raises).  On leaving,
        the result is recorded: ok, or the error (``call.sent = False`` before raising
        says nothing reached the service, which leaves the quota unspent).
        QuotaExceededError before anything is written when the window's call is spent.
        """
        with self.hold():
            self.check_allowed()
            now = self.clock.now()
            call = Call(f"call-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}", now, dict(what or {}))
            self._append({"kind": "intent", "id": call.id, "at": now.isoformat(), "what": call.what})
            try:
                yield call
            except Exception as exc:
                call.ok, call.error = False, f"{type(exc).__name__}: {exc}"
                self._append({"kind": "result", "id": call.id, "at": self.clock.now().isoformat(), "ok": False, "sent": call.sent, "error": call.error})
                raise
            call.ok = True
            self._append({"kind": "result", "id": call.id, "at": self.clock.now().isoformat(), "ok": True, "sent": True, "ref": call.ref})

    def _append(self, record: dict[str, Any]) -> None:
        """One fsynced line (a torn last line is cut first); called with the lock held."""
        append_json_line(self.path, record)

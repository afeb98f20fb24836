"""Helpers shared by several test files."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from walkit.home import Home
from walkit.restore import replay
from walkit.wal.capture import ChangeCapture


def take(stream: Any, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next ``n`` events of a change stream (fails after ``timeout`` seconds)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} events arrived: {[e['operationType'] for e in out]}"
        ev = stream.try_next()
        if ev is not None:
            out.append(ev)
        elif not stream.alive:
            break
    assert len(out) == n, f"stream closed after {len(out)} of {n} events"
    return out


@contextmanager
def capturing(uri: str, home: Path, wait: float = 20.0, **options: Any) -> Iterator[ChangeCapture]:
    """ChangeCapture running in a thread, its stream open; stopped (and its errors raised) on exit."""
    options.setdefault("fsync_interval", 0.05)
    options.setdefault("initial_snapshot", False)  # tests that want one ask for it
    cap = ChangeCapture(uri, Home(home), **options)
    thread, failures = in_background(cap)
    deadline = time.monotonic() + wait
    while cap.stats.checkpoints == 0 and not failures:  # the stream is open: writes from now on are seen
        assert time.monotonic() < deadline, "capture did not open its change stream in time"
        time.sleep(0.01)
    try:
        yield cap
    finally:
        cap.stop()
        thread.join(wait)
        assert not thread.is_alive(), "capture did not stop in time"
        if failures:
            raise failures[0]


def apply_update_description(before: dict[str, Any], desc: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``before`` changed as an update event's updateDescription says (walkit's replay rule)."""
    doc = copy.deepcopy(before)
    replay.apply_update_description(doc, desc)
    return doc

def walkit(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m walkit ARGV`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "walkit", *argv], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The CLI failed with ``code`` and said why in exactly one ``walkit: error:`` line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walkit: error: "), lines[0]
    return lines[0]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def in_background(cap: ChangeCapture) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``cap`` in a daemon thread; what stopped it lands in the returned list."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            cap.run()
        except BaseException as exc:  # reported in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run, name="test-capture", daemon=True)
    thread.start()
    return thread, failures

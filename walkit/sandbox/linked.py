"""A sandbox in a child process, on a simulated clock that this process drives.

A simulation gains a core this way: the sandbox's command handling runs in
its own process, beside the simulation's client and capture (one Python
process runs one thread at a time).

    >>> with LinkedSandboxProcess(start=datetime(2026, 1, 5, tzinfo=UTC)) as box:
    ...     box.clock.set(box.clock.now() + timedelta(hours=1))   # the child's clock too
    ...     pymongo.MongoClient(box.uri).db.c.insert_one({"x": 1})  # wallTime: 01:00

The child (``python -m walkit.sandbox.linked``) serves like ``walkit
sandbox`` on a :class:`~walkit.clock.SimulatedClock`, with one more command,
``walkitSetClock``, that sets it.  :class:`LinkedClock` is a
``SimulatedClock`` whose ``set()`` and ``advance()`` (and so ``sleep()``)
set the child's clock too, over a connection of their own, before they
return: every command sent afterwards, on any connection, runs at the new
instant, exactly as with an in-process ``Sandbox(clock=...)``.  The child
stops when its stdin closes, so it does not outlive its parent.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from datetime import datetime
from typing import Any

import bson

from walkit.clock import SimulatedClock
from walkit.errors import SandboxError
from walkit.sandbox import DEFAULT_OPLOG_SIZE, HOST, Sandbox, SandboxProcess
from walkit.sandbox.engine import Ctx, Engine, command
from walkit.sandbox.errors import CommandError
from walkit.sandbox.wire import OP_MSG, read_request

__all__ = ["LinkedClock", "LinkedSandboxProcess"]

SET_CLOCK = "walkitSetClock"


class LinkedClock(SimulatedClock):
    """A SimulatedClock that also sets the linked child sandbox's clock (thread-safe)."""

    def __init__(self, start: datetime, port: int, timeout: float = 30.0) -> None:
        super().__init__(start)
        self._sock = socket.create_connection((HOST, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._push_lock = threading.Lock()  # local time and the child's change together, in order
        self._ids = 0

    def set(self, instant: datetime) -> None:
        with self._push_lock:
            super().set(instant)
            self._push()

    def set_deferred(self, instant: datetime) -> dict[str, Any]:
        """Set this clock only, and return the command that sets the child's: send it first,
        on the connection whose commands must run at ``instant`` (a connection's commands run
        in order).  Until the child has run it, commands on other connections see the old time."""
        with self._push_lock:
            super().set(instant)
            return {SET_CLOCK: self.now().isoformat()}

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        with self._push_lock:
            now = super().advance(seconds, **delta)
            self._push()
            return now

    def _push(self) -> None:
        """Send this clock's time to the child and wait until it has it."""
        self._ids += 1
        body = bson.encode({SET_CLOCK: self.now().isoformat(), "$db": "admin"})
        payload = struct.pack("<I", 0) + b"\x00" + body
        try:
            self._sock.sendall(struct.pack("<iiii", 16 + len(payload), self._ids, 0, OP_MSG) + payload)
            reply = read_request(self._sock).body  # an OP_MSG reply has a request's shape
        except (OSError, EOFError) as exc:
            raise SandboxError(f"the linked sandbox process is gone: {exc}") from None
        if reply.get("ok") != 1.0:
            raise SandboxError(f"the linked sandbox refused the time: {reply.get('errmsg')}")

    def close(self) -> None:
        self._sock.close()


class LinkedSandboxProcess(SandboxProcess):
    """A :class:`SandboxProcess` on a simulated clock starting at ``start``: drive it with ``.clock``.

    ``max_await_ms`` answers an awaiting change-stream ``getMore`` within that time, whatever
    its ``maxTimeMS`` (an empty batch sooner, as MongoDB may send one): an idle stream
    then polls more often, so a change stream reader sees sooner that it has caught up.
    """

    _stdin = subprocess.PIPE

    def __init__(
        self,
        start: datetime,
        port: int = 0,
        *,
        oplog_size: int = DEFAULT_OPLOG_SIZE,
        startup_timeout: float = 30.0,
        max_await_ms: float | None = None,
    ) -> None:
        self._start = start
        self._max_await_ms = max_await_ms
        super().__init__(port, oplog_size=oplog_size, startup_timeout=startup_timeout)
        try:
            self.clock = LinkedClock(start, self.port)
        except OSError as exc:
            self.kill()
            raise SandboxError(f"cannot reach the linked sandbox process at {self.uri}: {exc}") from None

    def _command(self, port: int, oplog_size: int) -> list[str]:
        await_ms = [] if self._max_await_ms is None else ["--max-await-ms", str(self._max_await_ms)]
        return [sys.executable, "-m", __name__, "--port", str(port), "--oplog-size", str(oplog_size), "--start", self._start.isoformat(), *await_ms]

    def stop(self) -> int | None:
        if hasattr(self, "clock"):
            self.clock.close()
        return super().stop()


def _set_clock(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    value = ctx.body[SET_CLOCK]
    if not isinstance(eng.clock, SimulatedClock) or not isinstance(value, str):
        raise CommandError(14, f"{SET_CLOCK} needs an ISO instant, on a sandbox with a simulated clock")
    eng.clock.set(datetime.fromisoformat(value))
    return {}


def _tune_gc() -> None:
    """Spare the child's oplog from the cyclic collector's full passes.

    A long simulation keeps ~100,000 logged changes (millions of objects) that
    the generational collector would traverse again and again (15% of the
    child's time over 30 simulated days); the sandbox makes few reference
    cycles, so it collects young objects less often and leaves the old ones
    (and everything imported so far) alone.
    """
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def main(argv: list[str] | None = None) -> int:
    """The child: serve on a SimulatedClock until SIGTERM or until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m walkit.sandbox.linked")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--oplog-size", type=int, default=DEFAULT_OPLOG_SIZE)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--max-await-ms", type=float, default=None, help="answer awaiting change-stream getMores within this time")
    args = parser.parse_args(argv)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    command(SET_CLOCK)(_set_clock)
    box = Sandbox(args.port, oplog_size=args.oplog_size, clock=SimulatedClock(args.start))
    box.engine.max_await = None if args.max_await_ms is None else args.max_await_ms / 1000

    def _orphaned() -> None:  # the parent closed our stdin, or died
        while os.read(0, 4096):  # (the raw fd: a daemon thread in a buffered read aborts the exit)
            pass
        signal.raise_signal(signal.SIGTERM)

    threading.Thread(target=_orphaned, name="walkit-linked-parent", daemon=True).start()
    _tune_gc()
    print(box.uri, flush=True)
    box.serve_until_interrupted()
    return 0


if __name__ == "__main__":
    status = main()
    # Nothing outlives this process: skip freeing a long simulation's millions of objects one by one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

"""The backup worker in a child process, on a simulated clock this script drives (run by test_faults.py).

    python worker_child.py --uri URI --home HOME --mock STATE --start ISO [--speed X] [options]

Runs :class:`walkit.service.worker.BackupService` against URI into HOME, with a
:class:`MockExternalBackupProvider` living in the folder STATE (no latency, no random
failures: the test decides what fails) on a :class:`SimulatedClock` that starts at ISO and
is advanced by a thread, ``--speed`` simulated seconds per real second.  SIGTERM or SIGINT
stops the worker cleanly (``service.stop()``: capture catches up and fsyncs) and the
script exits 0.

Test hooks, each printed on stdout (flushed) when reached, so a test can ``kill -9`` the
process in the middle of that step; they only slow the real code down, they change
nothing it does:

``--call-seconds S``      the mock service takes S *real* seconds over the upload call, after
                          it has logged the call (``in upload call <sim time>``);
``--slow-snapshot S``     the worker's scheduled snapshot sleeps S real seconds after each
                          collection it has written into its temporary folder
                          (``in snapshot <sim time>``; capture's own snapshots are not slowed);
``--slow-bundle S``       the daily call sleeps S real seconds once its bundle is built in
                          HOME/bundles, before anything is recorded in the quota ledger
                          (``in bundle <sim time>``);
``--slow-prune S``        retention sleeps S real seconds when it reaches its second WAL
                          segment, having decided about (and maybe removed) the first
                          (``in prune <sim time>``).

It also prints ``ready <sim time>`` once capture's stream is open, ``phase <name>`` at every
change of the worker's phase, and ``stopped <exit>`` at the end.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from walkit.clock import SimulatedClock
from walkit.providers.mock import MockExternalBackupProvider
from walkit.service.worker import BackupService

# the modules themselves (walkit re-exports functions of the same names as some of them)
retention_module = importlib.import_module("walkit.offsite.retention")
service_module = importlib.import_module("walkit.service.worker")
snapshot_module = importlib.import_module("walkit.restore.snapshot")
upload_module = importlib.import_module("walkit.offsite.upload")


def say(*words: Any) -> None:
    print(*words, flush=True)


class SlowMock(MockExternalBackupProvider):
    """The mock service, taking ``call_seconds`` real seconds over each upload call once it is logged."""

    call_seconds = 0.0

    def _proceed(self, *args: Any, **kwargs: Any) -> tuple[str, int]:
        if self.call_seconds:
            say("in upload call", self.clock.now().isoformat())
            time.sleep(self.call_seconds)
        return super()._proceed(*args, **kwargs)


def slow_snapshots(seconds: float, clock: SimulatedClock) -> None:
    real = snapshot_module._dump_collection

    def dump(*args: Any, **kwargs: Any) -> Any:
        entry = real(*args, **kwargs)
        if threading.current_thread().name == "walkit-scheduler":
            say("in snapshot", clock.now().isoformat())
            time.sleep(seconds)
        return entry

    snapshot_module._dump_collection = dump  # type: ignore[assignment]


def slow_bundle(seconds: float, clock: SimulatedClock) -> None:
    real = upload_module.build_bundle

    def build(*args: Any, **kwargs: Any) -> Any:
        bundle = real(*args, **kwargs)
        say("in bundle", clock.now().isoformat())
        time.sleep(seconds)
        return bundle

    upload_module.build_bundle = build  # type: ignore[assignment]


def slow_prune(seconds: float, clock: SimulatedClock) -> None:
    real_prune, real_summarize = retention_module.prune, retention_module.summarize
    seen = [0]

    def prune(*args: Any, **kwargs: Any) -> Any:
        seen[0] = 0
        return real_prune(*args, **kwargs)

    def summarize(*args: Any, **kwargs: Any) -> Any:
        seen[0] += 1
        if seen[0] == 2:
            say("in prune", clock.now().isoformat())
            time.sleep(seconds)
        return real_summarize(*args, **kwargs)

    retention_module.summarize = summarize  # type: ignore[assignment]
    service_module.prune = prune  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--home", required=True, type=Path)
    p.add_argument("--mock", required=True, type=Path)
    p.add_argument("--start", required=True, type=datetime.fromisoformat)
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--db")
    p.add_argument("--tick", type=float, default=0.05)
    p.add_argument("--backup-hour", type=int, default=2)
    p.add_argument("--snapshot-interval", type=float, default=6.0, help="hours (simulated)")
    p.add_argument("--wal-days", type=float, default=7.0)
    p.add_argument("--snapshot-days", type=float, default=30.0)
    p.add_argument("--segment-kb", type=int, default=0, help="WAL segment size (0: the default)")
    p.add_argument("--call-seconds", type=float, default=0.0)
    p.add_argument("--slow-snapshot", type=float, default=0.0)
    p.add_argument("--slow-bundle", type=float, default=0.0)
    p.add_argument("--slow-prune", type=float, default=0.0)
    args = p.parse_args(argv)

    clock = SimulatedClock(args.start)
    provider = SlowMock(latency_ms=0, failure_rate=0, state_dir=args.mock, clock=clock)
    provider.call_seconds = args.call_seconds
    if args.slow_snapshot:
        slow_snapshots(args.slow_snapshot, clock)
    if args.slow_bundle:
        slow_bundle(args.slow_bundle, clock)
    if args.slow_prune:
        slow_prune(args.slow_prune, clock)
    capture_options: dict[str, Any] = {"fsync_interval": 0.05}
    if args.segment_kb:
        capture_options["segment_bytes"] = args.segment_kb * 1024
    service = BackupService(
        args.uri, args.home, database=args.db, provider=provider, daily_backup_hour=args.backup_hour,
        snapshot_interval_hours=args.snapshot_interval, wal_retention_days=args.wal_days,
        snapshot_retention_days=args.snapshot_days, clock=clock, tick=args.tick, capture_options=capture_options,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        service.stop_soon()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def run_clock() -> None:
        last = time.monotonic()
        while not stop.wait(0.02):
            now = time.monotonic()
            clock.advance((now - last) * args.speed)
            last = now

    threading.Thread(target=run_clock, name="child-clock", daemon=True).start()
    service.start()
    say("ready", clock.now().isoformat())

    def watch_phase() -> None:
        phase = None
        while not stop.wait(0.005):
            if service._phase != phase:
                phase = service._phase
                say("phase", phase)

    threading.Thread(target=watch_phase, name="child-phase", daemon=True).start()
    service.wait()
    stop.set()
    service.stop()
    live = service.live()
    say("stopped", live["events_captured"], live["uploads_ok"], live["uploads_failed"], live["errors"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

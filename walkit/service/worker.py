"""The backup worker: capture + local snapshots + the daily call + retention, in one process.

``BackupService(uri, home, provider=..., daily_backup_hour=2).start()`` (or
``walkit run``) runs, until :meth:`BackupService.stop`:

- **capture** (:class:`ChangeCapture`) in a thread: every change into the
  WAL, resuming after a restart exactly where the WAL ends; if it fails
  (anything capture does not retry itself), the worker logs it, reports
  itself unhealthy and starts capture again after a pause;
- a **scheduler** thread that, every ``tick`` seconds, on the service's
  clock:

  * takes a local snapshot when the newest is ``snapshot_interval_hours``
    old (0: never; no quota is used);
  * makes the **daily call** once the day's ``BACKUP_HOUR`` has passed (in
    ``quota_tz``) and no call was spent since, as soon as the quota ledger
    allows (so an hour missed while the worker was down is caught up at the
    next opportunity, and a call made by hand earlier counts for its day's
    slot only).  A service that could not be reached (nothing sent) is
    tried again every ``retry_minutes``; a call that failed after it was
    sent waits for the next window, as the ledger requires;
  * prunes (``WAL_RETENTION_DAYS``/``SNAPSHOT_RETENTION_DAYS``) after each
    day's call and once at start.

- ``HOME/worker.json`` is rewritten every tick with :meth:`live` (the
  counters ``walkit serve`` in another process shows).

Guaranteed: :meth:`stop` lets capture catch up and fsync everything before it
returns; a ``kill -9`` at any point loses nothing acknowledged (the WAL and
the ledger are crash-safe) and never leads to a second call in a window.
Not guaranteed: snapshots and calls happen at the tick's resolution, not at
the exact second.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from walkit.clock import Clock, SystemClock, iso
from walkit.errors import ProviderError, ProviderUnavailableError, QuotaExceededError, ServerError, StorageLimitError, WalkitError
from walkit.home import Home
from walkit.mongo import describe_error, redact
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.retention import PruneReport, prune
from walkit.offsite.upload import Policy, UploadResult, quota_dir, upload
from walkit.providers.base import ExternalBackupProvider
from walkit.restore.snapshot import SnapshotInfo, list_snapshots, take_snapshot
from walkit.service import settings
from walkit.service.config import Config
from walkit.wal.capture import ChangeCapture

log = logging.getLogger("walkit.service")

__all__ = ["BackupService", "create_backup_service", "worker_state"]


class BackupService:
    """The worker (see the module docstring); the original's ``createBackupService`` options map to
    ``service_name``, ``database``, ``provider`` (``externalProvider``) and ``daily_backup_hour``."""

    def __init__(
        self,
        uri: str,
        home: Home | str | Path | None = None,
        *,
        service_name: str = "walkit",
        database: str | None = None,
        provider: ExternalBackupProvider | None = None,
        daily_backup_hour: int = 2,
        snapshot_interval_hours: float = 6.0,
        wal_retention_days: float = 7.0,
        snapshot_retention_days: float = 30.0,
        policy: Policy | None = None,
        recipients: Sequence[Any] = (),
        quota_window: str = "rolling",
        quota_tz: str = "UTC",
        clock: Clock | None = None,
        tick: float = 1.0,
        retry_minutes: float = 15.0,
        capture_options: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= daily_backup_hour <= 23:
            raise WalkitError(f"daily_backup_hour must be 0..23, got {daily_backup_hour}")
        self.uri = uri
        self.home = home if isinstance(home, Home) else Home(home)
        self.service_name = service_name
        self.database = database
        self.clock = clock or SystemClock()
        self.ledger = QuotaLedger(quota_dir(self.home), window=quota_window, tz=quota_tz, clock=self.clock)
        self.provider = provider if provider is not None else settings.make_configured_provider(
            "mock", settings.provider_location("mock", None, self.home), clock=self.clock
        )
        self.daily_backup_hour = daily_backup_hour
        self.tz = ZoneInfo(quota_tz)
        self.snapshot_interval = timedelta(hours=snapshot_interval_hours)
        self.wal_retention_days = wal_retention_days
        self.snapshot_retention_days = snapshot_retention_days
        self.policy = policy or Policy()
        self.recipients = list(recipients)
        self.tick = tick
        self.retry = timedelta(minutes=retry_minutes)
        self.capture_options = dict(capture_options or {})
        self.capture: ChangeCapture | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready = threading.Event()
        self._capture_error: BaseException | None = None
        self._earlier = {"events": 0, "gaps": 0, "reconnects": 0}  # counts of capture runs before this one
        self._counters = {"scheduler_passes": 0, "errors": 0, "capture_restarts": 0, "uploads_ok": 0, "uploads_failed": 0, "uploads_skipped": 0, "snapshots_taken": 0}
        self._phase = "stopped"
        self._started_at: datetime | None = None
        self._first_started_at: datetime | None = None  # of the first worker in this home (HOME/worker.json)
        self._times: dict[str, datetime | None] = {"last_snapshot_at": None, "last_upload_attempt_at": None, "last_prune_at": None}
        self._next_snapshot_at: datetime | None = None
        self._retry_after: datetime | None = None  # the service was unreachable: not before this
        self._given_up_slot: datetime | None = None  # this slot's call cannot succeed (e.g. too large)
        self._work = threading.Lock()  # one snapshot/upload/prune at a time in this process
        self._state_lock = threading.Lock()  # one writer of worker.json at a time

    @classmethod
    def from_config(cls, config: Config, *, clock: Clock | None = None, **overrides: Any) -> BackupService:
        """The worker ``walkit run`` starts: every setting from ``config``."""
        from walkit.errors import ConfigError

        if not config.mongodb_uri:
            raise ConfigError("MONGODB_URI is not set: the worker needs the replica set to back up (or --uri)")
        env = config.environ()
        home = Home(config.walkit_home)
        provider = settings.configured_provider(home, env, clock=clock)
        options: dict[str, Any] = dict(
            service_name=config.walkit_service_name, database=config.walkit_database, provider=provider,
            daily_backup_hour=config.backup_hour, snapshot_interval_hours=config.walkit_snapshot_interval_hours,
            wal_retention_days=config.wal_retention_days, snapshot_retention_days=config.snapshot_retention_days,
            policy=Policy(snapshot_every_days=config.walkit_snapshot_every_days), recipients=settings.recipients(None, env),
            quota_window=config.walkit_quota_window, quota_tz=config.walkit_quota_tz, clock=clock,
        )
        options.update(overrides)
        return cls(config.mongodb_uri, home, **options)

    # -- life cycle --------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> BackupService:
        """Start capture and the scheduler; returns once capture's stream is open.

        Raises capture's error if it cannot start (wrong URI, not a replica set,
        WAL locked by another process)."""
        if self._threads:
            raise WalkitError("the worker is already running")
        if self.capture is not None:  # a restart of this object: the last run's counts carry over
            for key in self._earlier:
                self._earlier[key] += getattr(self.capture.stats, key)
            self.capture = None
        self._ready.clear()
        self._started_at = self.clock.now()
        self._first_started_at = _first_start(self.home) or self._started_at
        self._phase = "starting"
        log.info("worker starting: %s from %s into %s", self.service_name, redact(self.uri), self.home.path)
        capture_thread = threading.Thread(target=self._capture_loop, name="walkit-capture", daemon=True)
        capture_thread.start()
        deadline = time.monotonic() + timeout
        while not (self._ready.is_set() and self.capture is not None and self.capture.streaming.is_set()):
            time.sleep(0.01)
            if self._stop.is_set() and self._capture_error is None:  # stopped (a signal) while starting
                capture_thread.join(timeout)
                self._phase = "stopped"
                return self
            if not capture_thread.is_alive() or time.monotonic() > deadline:
                self._stop.set()
                capture_thread.join(10)
                error = self._capture_error or WalkitError(f"capture did not start within {timeout:g} s")
                if isinstance(error, WalkitError):
                    raise error
                raise ServerError(describe_error(error) or f"capture could not start: {error}") from error
        self._phase = "capturing"
        scheduler = threading.Thread(target=self._schedule_loop, name="walkit-scheduler", daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="walkit-heartbeat", daemon=True)
        self._threads = [capture_thread, scheduler, heartbeat]
        scheduler.start()
        heartbeat.start()
        return self

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the scheduler (after its current step), then capture (caught up, fsynced).

        False (and an error logged) when a thread did not end within ``timeout`` seconds:
        then what it was doing (a snapshot, the call) may be cut short by the process exiting."""
        self._stop.set()
        if not self._threads:
            self._stop = threading.Event()
            return True
        self._phase = "stopping"
        log.info("worker stopping")
        if self.capture is not None:
            self.capture.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        self._stop = threading.Event()  # a later start() begins afresh
        self._phase = "stopped"
        self._write_state()
        if stuck:
            log.error("worker stopped with %s still running after %g s: its step may be cut short", ", ".join(stuck), timeout)
            return False
        log.info("worker stopped; %d events captured in this run, everything is on disk", self.live()["events_captured"])
        return True

    def stop_soon(self) -> None:
        """Ask the worker to stop (safe in a signal handler); :meth:`wait` then returns."""
        self._stop.set()

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from another thread or a signal handler)."""
        while not self._stop.wait(0.5):
            pass

    def __enter__(self) -> BackupService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    # -- actions (the HTTP API's POSTs call these too) ---------------------------------------
    def snapshot(self) -> SnapshotInfo:
        """Take a local snapshot now (no quota)."""
        with self._work, self._in_phase("snapshot"):
            info = take_snapshot(self.uri, self.home, database=self.database, clock=self.clock, progress=False)
        self._counters["snapshots_taken"] += 1
        self._times["last_snapshot_at"] = self.clock.now()
        self._next_snapshot_at = self.clock.now() + self.snapshot_interval
        log.info("snapshot %s taken: %d documents", info.id, info.documents, extra={"snapshot": info.id})
        return info

    def trigger(self) -> UploadResult:
        """Make the day's one call now: QuotaExceededError (nothing sent) when it is spent."""
        with self._work, self._in_phase("upload"):
            self._times["last_upload_attempt_at"] = self.clock.now()
            try:
                result = upload(self.home, self.provider, self.ledger, policy=self.policy, recipients=self.recipients, uri=self.uri, clock=self.clock, progress=False)
            except QuotaExceededError:
                raise
            except BaseException:
                self._counters["uploads_failed"] += 1
                raise
        self._counters["uploads_skipped" if result.skipped else "uploads_ok"] += 1
        if result.skipped:
            log.info("daily call: nothing sent (%s)", result.skipped)
        else:
            log.info("daily call made: %s (%d bytes)", result.ref, result.bundle.size if result.bundle else 0, extra={"ref": str(result.ref)})
        return result

    def prune(self) -> PruneReport:
        """Apply retention now."""
        with self._work, self._in_phase("prune"):
            report = prune(self.home, self.ledger, wal_days=self.wal_retention_days, snapshot_days=self.snapshot_retention_days, clock=self.clock)
        self._times["last_prune_at"] = self.clock.now()
        if report.segments or report.snapshots:
            log.info("pruned %d WAL segments and %d snapshots (%d bytes)", len(report.segments), len(report.snapshots), report.bytes)
        return report

    # -- what it is doing -------------------------------------------------------------------
    def next_upload_at(self) -> datetime:
        """When the scheduler will next make the daily call (if the service answers);
        QuotaError when the ledger cannot be read."""
        now = self.clock.now()
        slot = self._slot(now)
        last = self.ledger.last_spent()
        fresh = last is None and self._first_started_at is not None and slot < self._first_started_at
        made = last is not None and last.at >= slot
        due = slot if not fresh and not made and self._given_up_slot != slot else self._slot(slot + timedelta(days=1, hours=1))
        return max(now, due, self._allowed(last) or due, self._retry_after or due)

    def live(self) -> dict[str, Any]:
        """The worker's counters (the HTTP API's ``worker`` part and ``/metrics``)."""
        stats = self.capture.stats if self.capture else None
        lags = _recent(stats.lags) if stats else []
        try:
            next_upload, ledger_error = iso(self.next_upload_at()), None
        except WalkitError as exc:
            next_upload, ledger_error = None, str(exc)
        scheduling = any(t.name == "walkit-scheduler" and t.is_alive() for t in self._threads)
        out: dict[str, Any] = {
            "service": self.service_name,
            "running": self.running,
            "healthy": self.running and scheduling and self._capture_error is None and ledger_error is None and self._ready.is_set(),
            "phase": self._phase,
            "pid": os.getpid(),
            "started_at": iso(self._started_at),
            "first_started_at": iso(self._first_started_at),
            "events_captured": self._earlier["events"] + (stats.events if stats else 0),
            "gaps": self._earlier["gaps"] + (stats.gaps if stats else 0),
            "reconnects": self._earlier["reconnects"] + (stats.reconnects if stats else 0),
            "last_seq": stats.last_seq if stats else None,
            "capture_lag_p99_seconds": _percentile(lags, 0.99),
            "capture_lag_max_seconds": max(lags) if lags else None,
            "capture_error": None if self._capture_error is None else str(self._capture_error),
            **self._counters,
            **{k: iso(v) for k, v in self._times.items()},
            "next_upload_at": next_upload,
            "ledger_error": ledger_error,
            "updated_at": iso(self.clock.now()),
        }
        return out

    # -- threads ------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        pause = 1.0
        stop = self._stop
        while not stop.is_set():
            options = {"clock": SystemClock(), **self.capture_options}  # lags are real seconds, whatever the schedule's clock
            capture = ChangeCapture(self.uri, self.home, database=self.database, **options)
            capture.on_ready = lambda _cap: self._on_capture_ready()
            old, self.capture = self.capture, capture
            if old is not None:
                for key in self._earlier:
                    self._earlier[key] += getattr(old.stats, key)
            try:
                capture.run(stop)
                return
            except BaseException as exc:  # noqa: BLE001 - reported, then retried
                self._capture_error = exc
                self._counters["errors"] += 1
                if not self._ready.is_set():
                    return  # start() raises it
                log.error("capture stopped: %s; starting it again in %.0f s", exc, pause)
                self._counters["capture_restarts"] += 1
                stop.wait(pause)
                pause = min(pause * 2, 60.0)

    def _on_capture_ready(self) -> None:
        self._capture_error = None
        self._ready.set()
        assert self.capture is not None and self.capture.writer is not None
        log.info("capture running: %s, next seq %d", self.capture.scope, self.capture.writer.next_seq)

    def _heartbeat_loop(self) -> None:
        """worker.json every ``tick``, also while a long step runs (``walkit serve`` reads it)."""
        stop = self._stop  # this run's (stop() gives a later start a new one)
        while not stop.wait(max(self.tick, 0.2)):
            self._write_state()

    def _schedule_loop(self) -> None:
        stop = self._stop
        self._step(first=True)
        while not stop.wait(self.tick):
            self._step()

    def _step(self, first: bool = False) -> None:
        """One scheduler pass; errors are logged and counted, never fatal."""
        for name, due, action in (
            ("snapshot", self._snapshot_due, self.snapshot),
            ("daily call", self._upload_due, self._daily_call),
            ("retention", lambda: first, self.prune),
        ):
            if self._stop.is_set():
                return
            try:
                if due():
                    action()
            except WalkitError as exc:
                self._counters["errors"] += 1
                log.error("%s failed: %s", name, exc)
            except Exception as exc:  # noqa: BLE001 - the worker must go on
                self._counters["errors"] += 1
                log.exception("%s failed unexpectedly: %s", name, exc)
        self._counters["scheduler_passes"] += 1
        self._write_state()  # never raises

    def _snapshot_due(self) -> bool:
        if self.snapshot_interval <= timedelta(0) or (self.capture is not None and self.capture.snapshotting):
            return False
        now = self.clock.now()
        if self._next_snapshot_at is None:  # first pass: continue the cadence of the snapshots already here
            newest = max((s.created for s in list_snapshots(self.home)), default=now)  # none: capture takes the first
            self._next_snapshot_at = min(max(newest + self.snapshot_interval, now), now + self.snapshot_interval)
        return now >= self._next_snapshot_at

    def _slot(self, now: datetime) -> datetime:
        """The latest ``BACKUP_HOUR`` o'clock at or before ``now`` (in the quota's zone)."""
        local = now.astimezone(self.tz)
        slot = local.replace(hour=self.daily_backup_hour, minute=0, second=0, microsecond=0)
        if slot > local:
            slot -= timedelta(days=1)
        return slot

    def _upload_due(self) -> bool:
        now = self.clock.now()
        slot = self._slot(now)
        last = self.ledger.last_spent()
        if last is not None and last.at >= slot:
            return False  # this slot's call is made
        if last is None and self._first_started_at is not None and slot < self._first_started_at:
            return False  # the first worker in this home waits for its first hour (nothing was missed)
        if self._given_up_slot == slot or (self._retry_after is not None and now < self._retry_after):
            return False
        allowed = self._allowed(last)
        return allowed is None or now >= allowed

    def _allowed(self, last: Any) -> datetime | None:
        """The ledger's next allowed call, and no sooner than the provider's own rolling limit
        (a calendar-day window must not call a service that counts 24 h from the last call)."""
        allowed = self.ledger.next_allowed(last)
        hours = getattr(self.provider, "rate_limit_hours", 0) or 0
        if last is not None and hours:
            own = last.at + timedelta(hours=hours)
            allowed = own if allowed is None else max(allowed, own)
        return allowed

    def _daily_call(self) -> None:
        now = self.clock.now()
        try:
            result = self.trigger()
            self._retry_after = now + self.retry if result.skipped else None  # nothing new: look again later
        except QuotaExceededError as exc:
            log.info("daily call not made: %s", exc)
            return
        except ProviderUnavailableError as exc:
            self._retry_after = now + self.retry
            log.warning("daily call not made, the service is unreachable (%s); trying again at %s; today's call is not spent", exc, iso(self._retry_after))
            return
        except StorageLimitError as exc:
            self._given_up_slot = self._slot(now)
            log.error("daily call not made: %s; trying again at the next daily hour", exc)
            return
        except ProviderError as exc:
            if exc.sent:
                log.error("daily call failed after it was sent: %s; the next is allowed at %s", exc, iso(self.ledger.next_allowed()))
                return
            self._retry_later("the service refused it before anything was sent", exc)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. MongoDB down for the snapshot, a full disk: nothing was sent
            self._retry_later("it could not be prepared", exc)
            return
        self.prune()

    def _retry_later(self, why: str, exc: Exception) -> None:
        self._counters["errors"] += 1
        self._retry_after = self.clock.now() + self.retry
        log.error("daily call not made, %s (%s); trying again at %s; today's call is not spent", why, exc, iso(self._retry_after))

    def _write_state(self) -> None:
        """Rewrite worker.json atomically (one writer at a time); a failure is logged, never raised."""
        path = self.home.worker_state
        if not self.home.path.is_dir():
            return
        tmp = path.with_name(".worker.json.tmp")
        try:
            with self._state_lock:
                tmp.write_text(json.dumps(self.live(), default=str))
                os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc.strerror)
        except Exception as exc:  # noqa: BLE001 - reporting must never stop the worker
            log.warning("cannot write %s: %s", path, exc)

    @contextmanager
    def _in_phase(self, phase: str) -> Iterator[None]:
        """The worker's phase for the duration of a step (seen in ``live()`` and worker.json)."""
        before, self._phase = self._phase, phase
        self._write_state()
        try:
            yield
        finally:
            self._phase = before


def create_backup_service(
    uri: str | None = None,
    *,
    serviceName: str | None = None,  # noqa: N803 - the original's option names
    externalProvider: ExternalBackupProvider | None = None,  # noqa: N803
    dailyBackupHour: int | None = None,  # noqa: N803
    **options: Any,
) -> BackupService:
    """The original's ``createBackupService({serviceName, database, externalProvider, dailyBackupHour})``;
    ``uri`` defaults to ``$MONGODB_URI``; any :class:`BackupService` option may be given too."""
    from walkit.errors import ConfigError

    uri = uri or os.environ.get("MONGODB_URI")
    if not uri:
        raise ConfigError("no MongoDB URI: pass uri= or set MONGODB_URI")
    if serviceName is not None:
        options["service_name"] = serviceName
    if externalProvider is not None:
        options["provider"] = externalProvider
    if dailyBackupHour is not None:
        options["daily_backup_hour"] = dailyBackupHour
    return BackupService(uri, options.pop("home", None), **options)


def _read_state(home: Home) -> tuple[dict[str, Any], float] | None:
    """HOME/worker.json and its mtime (None: no worker has written it, or it is unreadable)."""
    path = home.worker_state
    try:
        mtime = path.stat().st_mtime
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (state, mtime) if isinstance(state, dict) else None


def _first_start(home: Home) -> datetime | None:
    """When the first worker started in ``home`` (None: never, or unreadable)."""
    found = _read_state(home)
    try:
        return datetime.fromisoformat(found[0]["first_started_at"]) if found else None
    except (ValueError, KeyError, TypeError):
        return None


def worker_state(home: Home, stale_after: float = 30.0) -> dict[str, Any]:
    """What a worker last wrote to ``HOME/worker.json`` (for a process other than the worker's:
    ``walkit serve``, ``walkit status``); ``running`` only if it is fresh and its process lives."""
    found = _read_state(home)
    if found is None:
        return {"running": False, "healthy": False, "phase": "no worker has run in this home"}
    state, mtime = found
    if not _pid_alive(state.get("pid")) or time.time() - mtime > stale_after:
        state.update(running=False, healthy=False, phase=f"not running (last seen {datetime.fromtimestamp(mtime, UTC).isoformat()})")
    return state


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recent(values: Any, n: int = 2000) -> list[float]:
    for _ in range(3):
        try:
            items = list(values)
            return items[-n:]
        except RuntimeError:  # appended to while copied
            continue
    return []


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6)

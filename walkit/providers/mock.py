"""MockExternalBackupProvider: the "Valerix" simulation of the seed, strict as the real service.

It enforces the service's own rule, independently of walkit's quota ledger: one upload
call per ``rate_limit_hours`` (24) rolling window on its clock.  The window starts at the
previous upload call that the service processed (stored, failed, or refused for size);
calls it refused as rate limited do not move it.  A call inside the window raises
:class:`RateLimitError` and stores nothing: that is the alarm that walkit called twice.
Every upload call that reached it is recorded in :attr:`calls`, including refused and
failed ones; calls made while it is down never reached it and are not recorded.

With ``state_dir`` the service lives in that folder (``calls.jsonl``, ``blobs/``,
``lock``, ``DOWN``), so several processes, and a test after a ``kill -9``, see one
service: blobs and their descriptions are written temp + fsync + rename, the call log is
appended and fsynced before the call proceeds, and an flock serializes uploads.  Without
it, everything is in memory (and the uploads are held in memory).

Guaranteed: an upload that does not return a ref stores nothing that is listed; a call
interrupted by a crash counts against the window and shows as failed.  Failure decisions
are a hash of ``(seed, call number)``, so processes sharing ``state_dir`` agree; with
``seed=None`` they are random.  Not guaranteed: the latency is simulated with
``clock.sleep`` and is not a network model.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import random
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from walkit._fs import append_json_line
from walkit.clock import Clock, SystemClock
from walkit.errors import ConfigError, ProviderError, ProviderUnavailableError, RateLimitError, StorageLimitError, WalkitError
from walkit.providers.base import ExternalBackupProvider, Limits, StoredBackup, UploadData
from walkit.providers.filesystem import (
    _alias,
    _copy,
    _exclusive,
    _find,
    _json_metadata,
    _LimitExceededError,
    _new_ref,
    _open_source,
    _parse_time,
    _read_blob,
    _read_lines,
    _scan,
    _SourceError,
    _store,
    _sweep,
    _to_stored,
)

__all__ = ["MockExternalBackupProvider", "OUTCOMES"]

#: The outcomes of an upload call, as :attr:`MockExternalBackupProvider.calls` reports them.
OUTCOMES = ("stored", "failed", "rate_limited", "storage_full", "too_large")


class MockExternalBackupProvider(ExternalBackupProvider):
    """The Valerix simulation: latency, random failures, a storage limit, one upload per 24 h.

    The seed's ``latencyMs``/``failureRate``/``storageLimitBytes`` are accepted as aliases.
    ``storage_limit_bytes`` (None: unlimited) caps the total stored; ``max_upload_bytes``
    (None: unlimited) caps one upload; both refusals raise :class:`StorageLimitError` and
    count as calls.  ``down = True`` (or a file ``state_dir/DOWN``) makes the service
    unreachable: ``health_check()`` is False and the other calls raise
    :class:`ProviderUnavailableError` (``sent`` False).  ``rate_limit_hours=0`` turns the
    rate limit off.
    """

    name = "mock"

    def __init__(
        self,
        latency_ms: float = 500,
        failure_rate: float = 0.05,
        storage_limit_bytes: int | None = 500 * 1024 * 1024,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        seed: int | str | None = None,
        max_upload_bytes: int | None = None,
        rate_limit_hours: float = 24,
        latencyMs: float | None = None,  # noqa: N803 - the seed's names
        failureRate: float | None = None,  # noqa: N803
        storageLimitBytes: int | None = None,  # noqa: N803
    ) -> None:
        latency_ms = _alias("latency_ms", latency_ms, 500, "latencyMs", latencyMs)
        failure_rate = _alias("failure_rate", failure_rate, 0.05, "failureRate", failureRate)
        storage_limit_bytes = _alias(
            "storage_limit_bytes", storage_limit_bytes, 500 * 1024 * 1024, "storageLimitBytes", storageLimitBytes
        )
        if not _number(latency_ms) or latency_ms < 0:
            raise ConfigError(f"latency_ms must be a number >= 0, not {latency_ms!r}")
        if not _number(failure_rate) or not 0 <= failure_rate <= 1:
            raise ConfigError(f"failure_rate must be a number from 0 to 1, not {failure_rate!r}")
        for option, value in (("storage_limit_bytes", storage_limit_bytes), ("max_upload_bytes", max_upload_bytes)):
            if value is not None and (not _number(value) or isinstance(value, float) or value < 0):
                raise ConfigError(f"{option} must be a whole number of bytes >= 0 or None (no limit), not {value!r}")
        if not _number(rate_limit_hours) or rate_limit_hours < 0:
            raise ConfigError(f"rate_limit_hours must be a number >= 0 (0: no rate limit), not {rate_limit_hours!r}")
        if seed is not None and not isinstance(seed, (int, str)):
            raise ConfigError(f"seed must be an int, a str or None, not {type(seed).__name__}")
        self.latency_ms = float(latency_ms)
        self.failure_rate = float(failure_rate)
        self.storage_limit_bytes = storage_limit_bytes
        self.max_upload_bytes = max_upload_bytes
        self.rate_limit_hours = float(rate_limit_hours)
        self.seed = seed
        self.clock: Clock = clock or SystemClock()
        #: Set True to take the (simulated) service down.
        self.down = False
        self.state_dir = None if state_dir is None else Path(state_dir).expanduser()
        self._rng = random.Random()
        self._thread_lock = threading.Lock()
        self._mem_calls: list[dict[str, Any]] = []
        self._mem_blobs: dict[str, tuple[bytes, dict[str, Any]]] = {}
        if self.state_dir is not None:
            try:
                (self.state_dir / "blobs").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the mock service's state_dir {self.state_dir} ({exc.strerror or exc})"
                ) from None

    # -- the interface -----------------------------------------------------------------
    def upload(self, data: UploadData, metadata: dict[str, Any]) -> str:
        """One upload call: RateLimitError inside the window, StorageLimitError when too big,
        ProviderError on a simulated failure; every such call is counted."""
        meta = _json_metadata(metadata)
        with ExitStack() as stack:
            src, declared = _open_source(stack, data)
            self._require_up()
            try:
                stack.enter_context(self._serialized())  # held until the result is logged
                self._require_up()
                if self.state_dir is not None:
                    _sweep(self._blobs)
                log = self._call_log()
                n = len(log) + 1
                at = self.clock.now()
                self._log({"kind": "call", "n": n, "at": at.isoformat(), "size": declared})
            except OSError as exc:
                raise ProviderUnavailableError(
                    f"the mock service's state in {self.state_dir} is unusable ({exc}); nothing was sent"
                ) from None
            outcome, ref, size = "failed", None, declared
            try:
                ref, size = self._proceed(n, at, log, src, declared, meta)
                outcome = "stored"
                return ref
            except _Refusal as refusal:
                outcome = refusal.outcome
                raise refusal.error from None
            finally:
                try:
                    self._log(
                        {"kind": "result", "n": n, "outcome": outcome, "ref": ref if outcome == "stored" else None, "size": size}
                    )
                except OSError:
                    pass  # unlogged results read as interrupted calls: still counted

    def download_to(self, ref: str, out: BinaryIO) -> int:
        """Write the stored bytes of ``ref`` to ``out`` (after the latency)."""
        self._require_up()
        self.clock.sleep(self.latency_ms / 1000)
        if self.state_dir is None:
            entry = self._mem_blobs.get(ref) if isinstance(ref, str) else None
            if entry is None:
                raise ProviderError(f"the mock service holds no backup {ref!r}; list() shows the backups it holds")
            out.write(entry[0])  # held in memory: nothing to check
            return len(entry[0])
        return _read_blob(self._blobs, _find(self._blobs, ref, "the mock service"), out)

    def list(self) -> list[StoredBackup]:
        """Everything stored, oldest first."""
        self._require_up()
        return [_to_stored(r) for r in self._records()]

    def health_check(self) -> bool:
        """False while the service is down."""
        return not self._is_down()

    def limits(self) -> Limits:
        """``max_upload_bytes`` and what is left of ``storage_limit_bytes``."""
        self._require_up()
        free = None
        if self.storage_limit_bytes is not None:
            free = max(0, self.storage_limit_bytes - sum(r["size"] for r in self._records()))
        return Limits(max_upload_bytes=self.max_upload_bytes, free_bytes=free)

    # -- observation -------------------------------------------------------------------
    @property
    def calls(self) -> builtins.list[dict[str, Any]]:
        """Every upload call that reached the service, oldest first:
        ``{"at", "ok", "outcome", "ref", "size"}`` (``outcome`` is one of :data:`OUTCOMES`;
        a call still running or interrupted by a crash shows as failed)."""
        stored_by_call = {r.get("call"): r["ref"] for r in self._records()}
        result = []
        for c in self._call_log():
            outcome, ref = c["outcome"], c.get("ref")
            if outcome is None:  # no result logged: interrupted (or still running)
                ref = stored_by_call.get(c["n"])
                outcome = "stored" if ref else "failed"
            result.append({"at": c["at"], "ok": outcome == "stored", "outcome": outcome, "ref": ref, "size": c.get("size")})
        return result

    @property
    def upload_calls(self) -> int:
        """How many upload calls reached the service."""
        return len(self._call_log())

    def __repr__(self) -> str:
        where = f"state_dir={str(self.state_dir)!r}" if self.state_dir else "in memory"
        return (
            f"MockExternalBackupProvider(latency_ms={self.latency_ms:g}, failure_rate={self.failure_rate:g}, "
            f"storage_limit_bytes={self.storage_limit_bytes}, {where})"
        )

    # -- the call ------------------------------------------------------------------------
    def _proceed(
        self, n: int, at: datetime, log: builtins.list[dict[str, Any]], src: BinaryIO, declared: int, meta: dict[str, Any]
    ) -> tuple[str, int]:
        """Decide and store call ``n``: its (ref, size), or _Refusal with the outcome."""
        self.clock.sleep(self.latency_ms / 1000)
        processed = [c for c in log if c["outcome"] != "rate_limited"]
        if self.rate_limit_hours and processed:
            prev = processed[-1]
            allowed = prev["at"] + timedelta(hours=self.rate_limit_hours)
            if at < allowed:
                raise _Refusal(
                    "rate_limited",
                    RateLimitError(
                        f"the backup service (Valerix mock) refused upload call #{n}: call #{prev['n']} was made at "
                        f"{prev['at'].isoformat()}, less than {self.rate_limit_hours:g} h earlier, and it allows one upload "
                        f"call per {self.rate_limit_hours:g} h; the next is allowed at {allowed.isoformat()}; nothing was "
                        "stored.  walkit made a second call in one window: check the quota ledger"
                    ),
                )
        used = sum(r["size"] for r in self._records())
        if self.max_upload_bytes is not None and declared > self.max_upload_bytes:
            raise _Refusal("too_large", self._too_large(declared))
        if self.storage_limit_bytes is not None and used + declared > self.storage_limit_bytes:
            raise _Refusal("storage_full", self._storage_full(declared, used))
        if self._fails(n):
            raise _Refusal(
                "failed",
                ProviderError(
                    f"the backup service (Valerix mock) had a simulated failure on upload call #{n} "
                    f"(failure_rate={self.failure_rate:g}); nothing was stored; the call counts against its "
                    f"{self.rate_limit_hours:g} h window"
                ),
            )
        room = [
            x
            for x in (self.max_upload_bytes, None if self.storage_limit_bytes is None else self.storage_limit_bytes - used)
            if x is not None
        ]
        ref = _new_ref("valerix", at)
        try:
            size = self._store(ref, n, at, src, meta, limit=min(room) if room else None)
        except _LimitExceededError as exc:
            too_large = self.max_upload_bytes is not None and exc.size > self.max_upload_bytes
            raise _Refusal(
                "too_large" if too_large else "storage_full",
                self._too_large(exc.size) if too_large else self._storage_full(exc.size, used),
            ) from None
        except _SourceError as exc:
            raise _Refusal("failed", ProviderError(f"could not read the data to upload ({exc}); nothing was stored")) from None
        except OSError as exc:
            raise _Refusal(
                "failed",
                ProviderError(
                    f"the mock service could not store upload call #{n} in {self.state_dir} ({exc}); nothing was stored"
                ),
            ) from None
        except WalkitError as exc:
            raise _Refusal("failed", exc) from None
        return ref, size

    def _too_large(self, size: int) -> StorageLimitError:
        return StorageLimitError(
            f"the backup service (Valerix mock) refused the upload: {size:,} bytes is more than the {self.max_upload_bytes:,} "
            "it accepts in one upload; nothing was stored; the call counts against its window"
        )

    def _storage_full(self, size: int, used: int) -> StorageLimitError:
        assert self.storage_limit_bytes is not None
        return StorageLimitError(
            f"the backup service (Valerix mock) refused the upload: {size:,} bytes do not fit, {used:,} of its "
            f"{self.storage_limit_bytes:,} bytes are used; nothing was stored; the call counts against its window"
        )

    def _fails(self, n: int) -> bool:
        if self.failure_rate <= 0:
            return False
        if self.failure_rate >= 1:
            return True
        if self.seed is None:
            return self._rng.random() < self.failure_rate
        digest = hashlib.sha256(f"walkit-mock-failure:{self.seed!r}:{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.failure_rate

    # -- state -----------------------------------------------------------------------------
    @property
    def _blobs(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "blobs"

    def _is_down(self) -> bool:
        return bool(self.down) or (self.state_dir is not None and (self.state_dir / "DOWN").exists())

    def _require_up(self) -> None:
        if self._is_down():
            where = (
                f" (the file {self.state_dir / 'DOWN'} exists)" if self.state_dir and (self.state_dir / "DOWN").exists() else ""
            )
            raise ProviderUnavailableError(f"the backup service (Valerix mock) is down{where}; nothing was sent; try again later")

    @contextmanager
    def _serialized(self) -> Iterator[None]:
        with self._thread_lock:
            if self.state_dir is None:
                yield
            else:
                with _exclusive(self.state_dir / "lock", "the mock backup service"):
                    yield

    def _records(self) -> builtins.list[dict[str, Any]]:
        if self.state_dir is None:
            return sorted((r for _, r in self._mem_blobs.values()), key=lambda r: (_parse_time(r["uploaded_at"]), r["ref"]))
        return _scan(self._blobs)

    def _store(self, ref: str, n: int, at: datetime, src: BinaryIO, meta: dict[str, Any], *, limit: int | None) -> int:
        if self.state_dir is not None:
            return _store(self._blobs, ref, src, meta, at, compress=False, limit=limit, call=n)["size"]
        buf = io.BytesIO()
        size, sha = _copy(src, buf.write, limit=limit)
        record = {
            "ref": ref,
            "size": size,
            "sha256": sha,
            "uploaded_at": at.astimezone(UTC).isoformat(),
            "metadata": meta,
            "call": n,
        }
        self._mem_blobs[ref] = (buf.getvalue(), record)
        return size

    def _log(self, record: dict[str, Any]) -> None:
        if self.state_dir is None:
            self._mem_calls.append(record)
        else:
            append_json_line(self.state_dir / "calls.jsonl", record)

    def _call_log(self) -> builtins.list[dict[str, Any]]:
        """The calls, oldest first: ``{"n", "at" (datetime), "outcome" (None: no result), "ref", "size"}``."""
        raw = self._mem_calls if self.state_dir is None else _read_lines(self.state_dir / "calls.jsonl")
        calls: dict[int, dict[str, Any]] = {}
        for rec in raw:
            try:
                if rec["kind"] == "call":
                    calls[rec["n"]] = {
                        "n": rec["n"],
                        "at": _parse_time(rec["at"]),
                        "outcome": None,
                        "ref": None,
                        "size": rec.get("size"),
                    }
                elif rec["kind"] == "result" and rec["n"] in calls:
                    calls[rec["n"]].update(outcome=rec["outcome"], ref=rec.get("ref"), size=rec.get("size"))
            except (KeyError, TypeError, ValueError) as exc:
                raise ProviderError(
                    f"the mock service's call log has a bad record {rec!r} ({exc}); move {self.state_dir}/calls.jsonl away"
                ) from None
        return [calls[n] for n in sorted(calls)]


class _Refusal(Exception):  # noqa: N818 - internal carrier, never escapes
    """An upload call that ends without storing: its outcome and the error for the caller."""

    def __init__(self, outcome: str, error: ProviderError | WalkitError) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.error = error


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

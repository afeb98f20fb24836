"""The day's one call: build, check and upload the bundle, recorded in the quota ledger.

:func:`upload` does, in order (a crash at any step is safe):

1. refuse at once, sending nothing, when the window's call is spent
   (QuotaExceededError, exit 3, says when the next call is allowed);
2. build the bundle of everything since the last **successful** upload (so a
   failed day is covered by the next day's bundle) into ``HOME/bundles/``,
   with a snapshot when the :class:`Policy` asks for one, and verify it;
3. check its size against the provider's limits; if it would be refused and it
   holds a snapshot, rebuild it without (the WAL alone keeps coverage
   whole), else refuse (StorageLimitError) without spending the call;
4. check that the service answers (ProviderUnavailableError: not spent);
5. record the intent durably, make the call, record the result
   (:meth:`walkit.offsite.quota.QuotaLedger.spend`).

The ledger is the only record of what is off-site: a call whose result is
"ok" moved the coverage on; one that failed did not; one whose result is
unknown (a crash during the call) counts as spent, and its bundle counts as
uploaded only if the provider lists it.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from walkit.clock import Clock, SystemClock
from walkit.errors import ProviderError, ProviderUnavailableError, StorageLimitError
from walkit.home import Home
from walkit.offsite.bundle import Bundle, Position, build_bundle
from walkit.offsite.quota import Call, QuotaLedger
from walkit.providers.base import ExternalBackupProvider
from walkit.restore.snapshot import SnapshotInfo, list_snapshots, take_snapshot

__all__ = ["Policy", "UploadResult", "upload", "prepare_bundle", "offsite_position", "position_after", "uploaded_calls", "last_offsite_snapshot", "bundles_dir", "quota_dir"]


def bundles_dir(home: Home) -> Path:
    return home.bundles_dir


def quota_dir(home: Home) -> Path:
    return home.quota_dir


@dataclass(frozen=True)
class Policy:
    """What goes into a bundle besides the WAL since the last successful upload.

    ``snapshot_every_days``: include a snapshot when the newest one off-site is
    at least this old (1: daily, 7: weekly with WAL-only days between, 0: only
    until one is off-site).  A larger value makes bundles smaller and
    restores from off-site longer (more WAL to replay, more bundles to fetch).
    ``take_snapshot``: take a fresh one (needs ``uri``) when the newest local
    snapshot is already off-site or older than a day.
    """

    snapshot_every_days: float = 1.0
    take_snapshot: bool = True

    def __post_init__(self) -> None:
        if self.snapshot_every_days < 0:
            from walkit.errors import ConfigError

            raise ConfigError(f"snapshot_every_days must be >= 0, got {self.snapshot_every_days}")


@dataclass
class UploadResult:
    """What ``upload`` did."""

    bundle: Bundle | None
    ref: str | None = None
    call_id: str | None = None
    skipped: str | None = None  # why nothing was sent (nothing new)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "call": self.call_id,
            "skipped": self.skipped,
            "notes": self.notes,
            "bundle": None if self.bundle is None else self.bundle.metadata(),
        }


def uploaded_calls(ledger: QuotaLedger, provider: ExternalBackupProvider | None = None) -> list[Call]:
    """The ledger's calls whose bundle is off-site, oldest first: ok ones, and unknown ones the provider lists."""
    calls = ledger.calls()
    unknown = [c for c in calls if c.ok is None and c.what.get("id")]
    listed: set[str] = set()
    if unknown and provider is not None:
        with contextlib.suppress(ProviderError):
            listed = {str(b.metadata.get("id")) for b in provider.list()}
    return [c for c in calls if c.what.get("format") == "walkit-bundle" and (c.ok or (c.ok is None and c.what.get("id") in listed))]


def offsite_position(ledger: QuotaLedger, provider: ExternalBackupProvider | None = None) -> tuple[Position, Call | None]:
    """Where the next bundle starts, and the last upload it follows (None: nothing off-site yet)."""
    return position_after(uploaded_calls(ledger, provider))


def position_after(done: list[Call]) -> tuple[Position, Call | None]:
    """:func:`offsite_position` of calls already read with :func:`uploaded_calls`."""
    if not done:
        return Position(), None
    last = max(done, key=lambda c: (int(c.what["index"]), int(c.what["last_seq"])))
    return Position.after_upload(last.what), last


def last_offsite_snapshot(calls: list[Call]) -> tuple[datetime | None, int | None]:
    """When the newest snapshot off-site was consistent, and its bundle's index."""
    best: tuple[datetime | None, int | None] = (None, None)
    for call in calls:
        snap = call.what.get("snapshot")
        if snap:
            when = datetime.fromisoformat(snap["end_wall"])
            if best[0] is None or when > best[0]:
                best = (when, int(call.what["index"]))
    return best


def _choose_snapshot(home: Home, policy: Policy, calls: list[Call], clock: Clock, uri: str | None, notes: list[str]) -> SnapshotInfo | None:
    offsite_at, _ = last_offsite_snapshot(calls)
    now = clock.now()
    due = offsite_at is None or (policy.snapshot_every_days > 0 and now - offsite_at >= timedelta(days=policy.snapshot_every_days))
    if not due:
        return None
    local = list_snapshots(home)
    newest = local[-1] if local else None
    fresh_enough = newest is not None and (offsite_at is None or newest.end_wall > offsite_at) and now - newest.end_wall < timedelta(days=1)
    if not fresh_enough and policy.take_snapshot and uri:
        scope: dict[str, Any] = {}
        if newest is not None:  # the same scope as the snapshots this home already takes
            scope = {"database": newest.database, "collections": list(newest.scope_collections) or None, "exclude_collections": list(newest.scope_exclude) or None}
        return take_snapshot(uri, home, clock=clock, progress=False, **scope)
    if newest is not None and (offsite_at is None or newest.end_wall > offsite_at):
        return newest
    notes.append("a snapshot was due but none is newer than the one off-site (give --uri to take one); this bundle holds the WAL only")
    return None


def _keep_from(snapshot: SnapshotInfo, calls: list[Call], after: Position) -> int:
    """The oldest bundle a restore from ``snapshot`` needs: the one holding the WAL from its scan's
    start (the snapshot may be older than the last upload), as :func:`walkit.offsite.external.plan_external` picks."""
    before = snapshot.wal_seq_before or 0
    if not before:
        return 1
    holding = [int(c.what["index"]) for c in calls if int(c.what.get("last_seq") or 0) >= before]
    return min(holding) if holding else after.index + 1


def prepare_bundle(
    home: Home,
    ledger: QuotaLedger,
    provider: ExternalBackupProvider | None = None,
    *,
    policy: Policy | None = None,
    recipients: Any = (),
    uri: str | None = None,
    out: Path | None = None,
    clock: Clock | None = None,
    notes: list[str] | None = None,
    progress: bool | None = None,
) -> Bundle:
    """Build and verify the bundle the next upload would send (nothing is sent, no quota used)."""
    clock = clock or ledger.clock
    policy = policy or Policy()
    notes = notes if notes is not None else []
    calls = uploaded_calls(ledger, provider)
    after, _ = position_after(calls)
    snapshot = _choose_snapshot(home, policy, calls, clock, uri, notes)
    _, snap_index = last_offsite_snapshot(calls)
    keep_from = _keep_from(snapshot, calls, after) if snapshot is not None else (snap_index or 1)
    folder = out or bundles_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(home, folder, after=after, snapshot=snapshot, recipients=recipients, keep_from=keep_from, clock=clock, progress=progress)
    if provider is None:
        return bundle
    try:
        refusal = provider.limits().refusal(bundle.size)
        if refusal and snapshot is not None:
            notes.append(f"with its snapshot the bundle would be refused ({refusal}); sending the WAL only")
            bundle.path.unlink()
            bundle = build_bundle(home, folder, after=after, snapshot=None, recipients=recipients, keep_from=snap_index or 1, clock=clock, progress=progress)
            refusal = provider.limits().refusal(bundle.size)
        if refusal:
            raise StorageLimitError(f"the bundle would be refused: {refusal}; nothing was sent and today's call is not spent", sent=False)
    except BaseException:
        with contextlib.suppress(OSError):
            bundle.path.unlink()
        raise
    return bundle


def upload(
    home: Home,
    provider: ExternalBackupProvider,
    ledger: QuotaLedger,
    *,
    policy: Policy | None = None,
    recipients: Any = (),
    uri: str | None = None,
    clock: Clock | None = None,
    keep_bundle: bool = False,
    progress: bool | None = None,
) -> UploadResult:
    """Make the window's one call (see the module docstring)."""
    clock = clock or ledger.clock or SystemClock()
    with ledger.hold():  # from the check to the result: a second process is refused at once
        ledger.check_allowed()  # refuse before building anything
        _remove_leftovers(bundles_dir(home), ledger)
        if not provider.health_check():
            raise ProviderUnavailableError(f"{provider.name} is down (its health check fails); nothing was sent and today's call is not spent")
        notes: list[str] = []
        rolling = getattr(provider, "rate_limit_hours", 0)
        if ledger.window == "calendar" and rolling:
            notes.append(f"{provider.name} enforces a rolling {rolling:g} h window; with a calendar window a call less than that after the last one is refused (and spent)")
        bundle = prepare_bundle(home, ledger, provider, policy=policy, recipients=recipients, uri=uri, clock=clock, notes=notes, progress=progress)
        return _send(bundle, provider, ledger, notes, keep_bundle)


def _remove_leftovers(folder: Path, ledger: QuotaLedger) -> None:
    """What a crashed build or upload left behind (the ledger lock is held: no upload is running).
    Bundles kept on purpose (``keep_bundle``) after a successful call stay."""
    if not folder.is_dir():
        return
    kept = {c.what.get("name") for c in ledger.calls() if c.ok}
    for stale in folder.iterdir():
        if stale.name.startswith(".tmp-") or (stale.name.startswith("walkit-") and stale.name not in kept):
            with contextlib.suppress(OSError):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _send(bundle: Bundle, provider: ExternalBackupProvider, ledger: QuotaLedger, notes: list[str], keep_bundle: bool) -> UploadResult:
    try:
        if bundle.empty:
            return UploadResult(bundle, skipped="nothing new since the last successful upload; the call is not spent", notes=notes)
        metadata = bundle.metadata()
        with ledger.spend(metadata) as call:
            try:
                call.ref = provider.upload(bundle.path, metadata)
            except ProviderError as exc:
                call.sent = exc.sent
                raise
            except Exception as exc:  # a provider that let something else through: assume it may have sent
                raise ProviderError(f"{provider.name}: upload failed ({type(exc).__name__}: {exc})") from None
        return UploadResult(bundle, ref=str(call.ref), call_id=call.id, notes=notes)
    finally:
        if not keep_bundle:
            with contextlib.suppress(OSError):
                bundle.path.unlink()

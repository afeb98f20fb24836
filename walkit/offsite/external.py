"""Restore from the external bundles alone, after losing the whole site.

The provider's listing says what each bundle covers (its metadata); the
bundles form a chain (each one's WAL segment names the previous one's seal
as ``prev``).  :func:`resolve_chain` follows it from the first bundle; when
an upload whose result was unknown landed after all, two bundles continue
the same one and the chain takes the branch that reaches furthest.  A bundle
that is missing ends the chain; the bundles after it cannot be used, and
instants after the chain's end are refused saying which upload is missing.

:func:`plan_external` (no download) picks the newest off-site snapshot that
is consistent at or before the target and the bundles from the one holding
its scan's start to the one covering the target; :func:`restore_from_external`
downloads them into a temporary home, checks every hash and the chain, and
runs the ordinary local restore there (same destinations and flags).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from walkit.clock import as_utc
from walkit.errors import BundleError, ProviderError, RestoreError
from walkit.home import Home
from walkit.offsite.bundle import FORMAT, HashingWriter, Position, check_contents, unpack_bundle
from walkit.providers.base import ExternalBackupProvider, StoredBackup
from walkit.restore.local import RestoreResult, restore
from walkit.restore.plan import Target

__all__ = ["OffsiteBundle", "Chain", "OffsitePlan", "list_offsite", "resolve_chain", "plan_external", "restore_from_external"]


def _dt(value: Any) -> datetime | None:
    if not value:
        return None
    return as_utc(datetime.fromisoformat(str(value)))


@dataclass(frozen=True)
class OffsiteBundle:
    """One bundle as the provider lists it."""

    ref: str
    size: int
    uploaded_at: datetime
    meta: dict[str, Any]

    @property
    def index(self) -> int:
        return int(self.meta["index"])

    @property
    def first_seq(self) -> int:
        return int(self.meta["first_seq"])

    @property
    def last_seq(self) -> int:
        return int(self.meta["last_seq"])

    @property
    def last_wall(self) -> datetime | None:
        return _dt(self.meta.get("last_wall"))

    @property
    def snapshot(self) -> dict[str, Any] | None:
        return self.meta.get("snapshot")

    @property
    def snapshot_wall(self) -> datetime | None:
        return _dt(self.snapshot["end_wall"]) if self.snapshot else None

    def position(self) -> Position:
        return Position.after_upload(self.meta)

    def describe(self) -> str:
        snap = f", snapshot consistent from {self.snapshot['end_wall']}" if self.snapshot else ""
        return (
            f"bundle {self.index} ({self.ref}, uploaded {self.uploaded_at.isoformat()}, {self.size:,} bytes): "
            f"seq {self.first_seq}..{self.last_seq}, changes up to {self.meta.get('last_wall') or '-'}{snap}"
        )


@dataclass
class Chain:
    """The usable bundles in order, and those cut off by a missing one."""

    bundles: list[OffsiteBundle] = field(default_factory=list)
    orphans: list[OffsiteBundle] = field(default_factory=list)

    @property
    def end(self) -> datetime | None:
        walls = [b.last_wall for b in self.bundles if b.last_wall is not None]
        return max(walls) if walls else None

    def missing(self) -> str:
        """What breaks the chain, in words ("" if nothing does)."""
        if not self.orphans:
            return ""
        last = self.bundles[-1] if self.bundles else None
        first_orphan = min(self.orphans, key=lambda b: (b.index, b.uploaded_at))
        after = f"bundle {last.index} (uploaded {last.uploaded_at.isoformat()})" if last else "the start"
        return (
            f"the upload after {after} is missing from the external service (bundle {last.index + 1 if last else 1}); "
            f"{len(self.orphans)} later bundle(s), from {first_orphan.uploaded_at.isoformat()}, cannot be used without it"
        )

    def windows(self) -> list[tuple[datetime, datetime]]:
        """The instants restorable from these bundles: from the first snapshot's consistency to the chain's end."""
        snaps = [b.snapshot_wall for b in self.bundles if b.snapshot_wall is not None]
        end = self.end
        if not snaps or end is None:
            return []
        return [(min(snaps), max(end, min(snaps)))]


def list_offsite(provider: ExternalBackupProvider) -> list[OffsiteBundle]:
    """The walkit bundles the provider holds (other uploads are ignored)."""
    stored: list[StoredBackup] = provider.list()
    out = []
    for item in stored:
        meta = item.metadata or {}
        if meta.get("format") != FORMAT:
            continue
        try:
            int(meta["index"]), int(meta["first_seq"]), int(meta["last_seq"]), str(meta["seal"])
        except (KeyError, TypeError, ValueError):
            continue
        out.append(OffsiteBundle(item.ref, item.size, item.uploaded_at, meta))
    return out


def resolve_chain(bundles: Sequence[OffsiteBundle]) -> Chain:
    """Follow the chain from its first bundle, taking the branch that reaches furthest.

    The first bundle is the one with an empty ``prev``; when the provider pruned the oldest
    bundles (as ``keep_from`` allows), it is a bundle whose ``prev`` is not listed and whose
    index is at most the newest bundle's ``keep_from``.
    """
    children: dict[str, list[OffsiteBundle]] = {}
    for b in bundles:
        children.setdefault(str(b.meta.get("prev") or ""), []).append(b)
    roots = children.get("", [])
    if not roots and bundles:
        seals = {str(b.meta["seal"]) for b in bundles}
        newest = max(bundles, key=lambda b: (b.index, b.last_seq))
        keep = int(newest.meta.get("keep_from") or 1)  # without one, the whole chain is needed
        roots = [b for b in bundles if str(b.meta.get("prev") or "") not in seals and b.index <= keep]
    # the longest path from each root, without recursion: a chain of years of daily bundles is deep
    best: list[OffsiteBundle] = []
    for root in sorted(roots, key=lambda b: (b.index, b.uploaded_at)):
        stack: list[list[OffsiteBundle]] = [[root]]
        while stack:
            path = stack.pop()
            tip = path[-1]
            nexts = [c for c in children.get(str(tip.meta["seal"]), []) if c is not tip and c not in path]
            if not nexts:
                if not best or (tip.last_seq, -len(path)) > (best[-1].last_seq, -len(best)):
                    best = path
                continue
            if len(nexts) == 1:
                path.append(nexts[0])  # the common case: extend in place
                stack.append(path)
            else:
                stack.extend(path + [c] for c in nexts)
    used = {id(b) for b in best}
    end_seq = best[-1].last_seq if best else 0
    orphans = [b for b in bundles if id(b) not in used and b.last_seq > end_seq]
    return Chain(best, sorted(orphans, key=lambda b: (b.index, b.uploaded_at)))


@dataclass
class OffsitePlan:
    """Which bundles a restore from the external service downloads."""

    target: Target
    chain: Chain
    snapshot_bundle: OffsiteBundle
    bundles: list[OffsiteBundle]

    @property
    def download_bytes(self) -> int:
        return sum(b.size for b in self.bundles)

    def describe(self) -> str:
        snap = self.snapshot_bundle.snapshot or {}
        lines = [
            f"restore {self.target} from the external service",
            f"  snapshot   {snap.get('id')} (in bundle {self.snapshot_bundle.index}), consistent from {snap.get('end_wall')}",
            f"  download   {len(self.bundles)} bundle(s), {self.download_bytes:,} bytes:",
        ]
        lines += [f"    {b.describe()}" for b in self.bundles]
        return "\n".join(lines)


def _covers(b: OffsiteBundle, target: Target) -> bool:
    if target.kind == "at":
        assert isinstance(target.value, datetime)
        return b.last_wall is not None and b.last_wall >= as_utc(target.value)
    want = int(target.value)  # type: ignore[arg-type]
    return b.last_seq >= want


def plan_external(provider: ExternalBackupProvider, target: Target) -> OffsitePlan:
    """Choose the bundles for ``target`` from the provider's listing (nothing is downloaded)."""
    try:
        found = list_offsite(provider)
    except ProviderError as exc:
        raise RestoreError(f"cannot list the external bundles: {exc}") from None
    chain = resolve_chain(found)
    if not chain.bundles:
        raise RestoreError(f"{provider.name} holds no walkit bundle" + (f" that starts a chain ({chain.missing()})" if chain.orphans else ""))
    at = as_utc(target.value) if isinstance(target.value, datetime) else None
    window = chain.windows()
    where = "; ".join(f"restorable from the external bundles: {a.isoformat()} .. {b.isoformat()}" for a, b in window) or "no bundle holds a snapshot"
    if not any(_covers(b, target) for b in chain.bundles):
        last = chain.bundles[-1]
        reason = chain.missing() or (
            f"the newest upload (bundle {last.index}, uploaded {last.uploaded_at.isoformat()}) covers changes up to "
            f"{last.meta.get('last_wall') or '-'}; the upload after it, the one that would hold this, has not been made or failed"
        )
        raise RestoreError(f"cannot restore {target} from the external service: {reason}; {where}")
    if at is not None:
        usable = [b for b in chain.bundles if b.snapshot_wall is not None and b.snapshot_wall <= at]
    else:
        want = int(target.value)  # type: ignore[arg-type]
        usable = [b for b in chain.bundles if b.snapshot and int(b.snapshot.get("wal_seq_before") or 0) < want]
    if not usable:
        raise RestoreError(f"cannot restore {target} from the external service: it is before the first off-site snapshot; {where}")
    snap_bundle = max(usable, key=lambda b: (b.snapshot_wall or datetime.min.replace(tzinfo=UTC), b.index))
    seq_before = int(snap_bundle.snapshot.get("wal_seq_before") or 0)  # type: ignore[union-attr]
    start = next((i for i, b in enumerate(chain.bundles) if b.last_seq >= seq_before and (seq_before or i == 0)), 0)
    start = min(start, chain.bundles.index(snap_bundle))
    stop = next(i for i, b in enumerate(chain.bundles) if _covers(b, target))
    stop = max(stop, chain.bundles.index(snap_bundle))
    return OffsitePlan(target, chain, snap_bundle, chain.bundles[start : stop + 1])


def _matches_listing(manifest: dict[str, Any], b: OffsiteBundle) -> None:
    """BundleError unless the downloaded bundle is the one the listing (which chose it) describes."""
    wal, snap = manifest["wal"], manifest.get("snapshot")
    told = b.snapshot
    checks = {
        "id": (manifest.get("id"), b.meta.get("id")),
        "index": (manifest.get("index"), b.index),
        "first seq": (wal.get("first_seq"), b.first_seq),
        "last seq": (wal.get("last_seq"), b.last_seq),
        "seal": (wal.get("seal"), b.meta.get("seal")),
        "snapshot": (snap.get("id") if snap else None, told.get("id") if told else None),
    }
    for what, (held, listed) in checks.items():
        if held != listed:
            raise BundleError(f"{b.ref}: its {what} is {held!r}, the service's listing says {listed!r}; the listing or the bundle was altered")


def restore_from_external(
    provider: ExternalBackupProvider,
    target: Target,
    *,
    identities: Sequence[Any] | None = None,
    workdir: str | Path | None = None,
    progress: bool | None = None,
    **options: Any,
) -> RestoreResult:
    """Download, check and unpack the bundles :func:`plan_external` picks into a temporary home
    under ``workdir`` (removed afterwards), then :func:`walkit.restore.local` there with ``options``
    (to_uri/to_db/drop, to_dump, as_dataframes, database, collections)."""
    plan = plan_external(provider, target)
    scratch = Path(tempfile.mkdtemp(prefix="walkit-offsite-", dir=workdir))
    try:
        home = Home(scratch / "home").create()
        prev: Position | None = None
        position = plan.chain.bundles.index(plan.bundles[0])
        if position > 0:
            prev = plan.chain.bundles[position - 1].position()
        from tqdm import tqdm

        bar = tqdm(total=plan.download_bytes, unit="B", unit_scale=True, desc="download", disable=(None if progress is None else not progress), leave=False)
        for b in plan.bundles:
            blob = scratch / f"bundle-{b.index}"
            try:
                with blob.open("wb") as f:
                    sink = HashingWriter(f)  # hashed as it arrives: no second read of the file
                    provider.download_to(b.ref, cast(BinaryIO, sink))  # it has write(): all a download needs
            except ProviderError as exc:
                raise RestoreError(f"cannot download bundle {b.index} ({b.ref}): {exc}") from None
            bar.update(b.size)
            listed = b.meta.get("sha256")
            if listed and sink.digest.hexdigest() != listed:
                raise RestoreError(f"bundle {b.index} ({b.ref}) as downloaded does not match the SHA-256 it was uploaded with; the copy on {provider.name} is damaged")
            with_snapshot = b is plan.snapshot_bundle
            folder = scratch / f"unpacked-{b.index}"
            try:
                bundle = unpack_bundle(blob, folder, identities, snapshot=with_snapshot)
                bundle.path = Path(b.ref)
                _matches_listing(bundle.manifest, b)
                check_contents(bundle, folder, prev, snapshot=with_snapshot)
            except BundleError as exc:
                raise RestoreError(f"bundle {b.index} from the external service cannot be used: {str(exc).replace(str(blob), b.ref)}") from None
            blob.unlink()
            seg = folder / bundle.manifest["wal"]["member"]
            seg.rename(home.wal_dir / seg.name)
            if with_snapshot:
                snapshots = home.snapshots_dir
                snapshots.mkdir(exist_ok=True)
                (folder / "snapshot").rename(snapshots / str(b.snapshot["id"]))  # type: ignore[index]
            shutil.rmtree(folder, ignore_errors=True)
            prev = bundle.position
        bar.close()
        result = restore(home, target, progress=progress, **options)
        result.offsite = plan
        return result
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch, ignore_errors=True)

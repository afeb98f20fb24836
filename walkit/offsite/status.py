"""``walkit status``: the quota, what is off-site, what waits for the next upload, what can be restored.

Reads local state only (the WAL, the snapshots, the quota ledger), unless a
provider is given, in which case the off-site part comes from its listing.
Never writes anything and never calls the service's upload.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from walkit.clock import Clock, iso
from walkit.errors import ProviderError, WalkitError
from walkit.home import Home
from walkit.offsite.bundle import slice_records
from walkit.offsite.external import OffsiteBundle, list_offsite, resolve_chain
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import last_offsite_snapshot, position_after, uploaded_calls
from walkit.providers.base import ExternalBackupProvider
from walkit.restore.local import scan_wal
from walkit.restore.plan import Target, windows
from walkit.restore.snapshot import list_snapshots

__all__ = ["status"]


def status(home: Home, ledger: QuotaLedger, provider: ExternalBackupProvider | None = None, clock: Clock | None = None) -> dict[str, Any]:
    """Everything ``walkit status --json`` prints (see the module docstring)."""
    clock = clock or ledger.clock
    now = clock.now()
    out: dict[str, Any] = {"now": now.isoformat(), "home": str(home.path), "quota": ledger.status()}
    calls = uploaded_calls(ledger, provider)
    position, last = position_after(calls)
    out["last_upload"] = None if last is None else {
        "call": last.id, "at": last.at.isoformat(), "ref": last.ref, "index": last.what.get("index"),
        "first_seq": last.what.get("first_seq"), "last_seq": last.what.get("last_seq"),
        "changes_up_to": last.what.get("last_wall"), "snapshot": last.what.get("snapshot"), "bytes": last.what.get("size"),
    }
    # waiting for the next upload
    pending: dict[str, Any] = {"events": 0, "gaps": 0, "first_seq": None, "last_seq": None, "newest_change": None}
    snaps = list_snapshots(home) if home.path.exists() else []
    try:
        for rec in slice_records(home.wal_dir, position):
            if rec.kind in ("e", "g"):
                pending["events" if rec.kind == "e" else "gaps"] += 1
                pending["first_seq"] = pending["first_seq"] or rec.seq
                pending["last_seq"] = rec.seq
            if isinstance(rec.wt, datetime) and rec.kind != "c":
                pending["newest_change"] = rec.wt.isoformat()
    except WalkitError as exc:
        pending["error"] = str(exc)
    offsite_snap, _ = last_offsite_snapshot(calls)
    pending["snapshots"] = [s.id for s in snaps if offsite_snap is None or s.end_wall > offsite_snap]
    out["waiting"] = pending
    # restorable windows
    runs, _ = scan_wal(home.wal_dir, Target("at", datetime(1970, 1, 1, tzinfo=UTC))) if home.wal_dir.exists() else ([], None)
    out["local"] = [{"from": iso(a), "to": iso(b)} for a, b, _ in windows(snaps, runs)]
    newest = max((r.end_wall for r in runs if r.end_wall is not None), default=None)
    out["capture"] = {"newest_record": iso(newest), "age_seconds": None if newest is None else round((now - newest).total_seconds(), 3)}
    if provider is not None:
        try:
            chain = resolve_chain(list_offsite(provider))
            out["offsite"] = {
                "source": provider.name, "bundles": len(chain.bundles), "missing": chain.missing() or None,
                "windows": [{"from": iso(a), "to": iso(b)} for a, b in chain.windows()],
            }
        except ProviderError as exc:
            out["offsite"] = {"source": provider.name, "error": str(exc)}
    else:
        chain = resolve_chain([OffsiteBundle(str(c.ref), int(c.what.get("size") or 0), c.at, c.what) for c in calls])
        out["offsite"] = {
            "source": "the quota ledger", "bundles": len(chain.bundles), "missing": chain.missing() or None,
            "windows": [{"from": iso(a), "to": iso(b)} for a, b in chain.windows()],
        }
    return out


def describe(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`status`."""
    q = report["quota"]
    lines = []
    if q["used"]:
        last = q["last_call"]
        result = {True: "ok", False: "failed"}.get(last["ok"], "result unknown (interrupted)")
        lines.append(f"quota        used ({q['window']} window): call at {last['at']}, {result}; next call allowed at {q['next_allowed']}")
    else:
        lines.append(f"quota        available now ({q['window']} window)")
    up = report["last_upload"]
    if up is None:
        lines.append("last upload  none yet")
    else:
        snap = f", snapshot {up['snapshot']['id']}" if up.get("snapshot") else ", WAL only"
        lines.append(f"last upload  bundle {up['index']} at {up['at']} (ref {up['ref']}): seq {up['first_seq']}..{up['last_seq']}, changes up to {up['changes_up_to'] or '-'}{snap}")
    w = report["waiting"]
    if "error" in w:
        lines.append(f"waiting      cannot tell: {w['error']}")
    else:
        seqs = f" (seq {w['first_seq']}..{w['last_seq']})" if w["first_seq"] else ""
        lines.append(f"waiting      {w['events']} events{seqs}, {w['gaps']} gaps, {len(w['snapshots'])} newer snapshot(s); newest change {w['newest_change'] or '-'}")
    local = "; ".join(f"{x['from']} .. {x['to']}" for x in report["local"]) or "nothing (needs a snapshot inside the WAL's coverage)"
    lines.append(f"local        restorable {local}")
    off = report["offsite"]
    if "error" in off:
        lines.append(f"off-site     cannot list {off['source']}: {off['error']}")
    else:
        span = "; ".join(f"{x['from']} .. {x['to']}" for x in off["windows"]) or "nothing yet"
        lines.append(f"off-site     restorable {span} ({off['bundles']} bundles, per {off['source']})" + (f"; {off['missing']}" if off["missing"] else ""))
    cap = report["capture"]
    age = f" ({cap['age_seconds']:.0f} s ago)" if cap["age_seconds"] is not None else ""
    lines.append(f"capture      newest WAL record {cap['newest_record'] or '-'}{age}")
    worker = report.get("worker")
    if worker:
        if worker.get("running"):
            health = "healthy" if worker.get("healthy") else "UNHEALTHY"
            lines.append(f"worker       running, {health} (pid {worker.get('pid')}, {worker.get('phase')}); next call due {worker.get('next_upload_at') or '-'}")
        else:
            lines.append(f"worker       {worker.get('phase') or 'not running'}")
    return "\n".join(lines)

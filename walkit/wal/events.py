"""Change events as walkit reads them back from the WAL.

:class:`ChangeEvent` is the normalised view of one WAL record (an event or a
gap marker): sequence number, operation, namespace, times, document key and
the payload exactly as captured.  ``raw`` keeps the event's original BSON
bytes; nothing here re-encodes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from walkit.wal.format import Record

__all__ = ["ChangeEvent"]


def _plain(value: Any) -> Any:
    """Raw documents (and raw documents inside lists) as plain dicts."""
    if isinstance(value, RawBSONDocument):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class ChangeEvent:
    """One captured change (or gap marker) with its WAL sequence number."""

    seq: int
    operation: str  # insert update replace delete drop rename dropDatabase invalidate ... or "gap"
    cluster_time: Timestamp | None
    wall_time: datetime | None
    db: str | None
    coll: str | None
    document_key: Any = None
    full_document: Any = None
    update_description: Any = None
    to: Any = None
    operation_description: Any = None  # DDL events (create, createIndexes, dropIndexes, modify) under showExpandedEvents
    txn_number: int | None = None
    token: Any = None
    reason: str | None = None
    raw: RawBSONDocument | None = None

    @classmethod
    def from_record(cls, rec: Record) -> ChangeEvent:
        if rec.kind == "g":
            return cls(
                seq=int(rec.get("seq")), operation="gap", cluster_time=rec.get("ct"), wall_time=rec.get("wt"),
                db=None, coll=None, token=rec.get("resume_tok"), reason=rec.get("reason"),
            )
        ev = rec.get("ev")
        ns = ev.get("ns") or {}
        txn = ev.get("txnNumber")
        return cls(
            seq=int(rec.get("seq")),
            operation=ev["operationType"],
            cluster_time=rec.get("ct"),
            wall_time=rec.get("wt"),
            db=ns.get("db"),
            coll=ns.get("coll"),
            document_key=ev.get("documentKey"),
            full_document=ev.get("fullDocument"),
            update_description=ev.get("updateDescription"),
            to=ev.get("to"),
            operation_description=ev.get("operationDescription"),
            txn_number=int(txn) if txn is not None else None,
            token=rec.get("tok"),
            raw=ev,
        )

    @property
    def namespace(self) -> str:
        return ".".join(p for p in (self.db, self.coll) if p)

    def as_document(self) -> dict[str, Any]:
        """What ``walkit wal show --json`` prints for this event."""
        out: dict[str, Any] = {"seq": self.seq, "op": self.operation, "clusterTime": self.cluster_time, "wallTime": self.wall_time}
        if self.operation == "gap":
            out["reason"] = self.reason
            return out
        out["ns"] = {k: v for k, v in (("db", self.db), ("coll", self.coll)) if v is not None}
        for key, value in (
            ("documentKey", self.document_key),
            ("fullDocument", self.full_document),
            ("updateDescription", self.update_description),
            ("to", self.to),
            ("operationDescription", self.operation_description),
        ):
            if value is not None:
                out[key] = _plain(value)
        if self.txn_number is not None:
            out["txnNumber"] = self.txn_number
        return out

    def to_json(self) -> str:
        """One line of canonical Extended JSON."""
        return json_util.dumps(self.as_document(), json_options=CANONICAL_JSON_OPTIONS)

    def describe(self) -> str:
        """One human-readable line."""
        ts = f"{self.cluster_time.time}.{self.cluster_time.inc}" if self.cluster_time else "-"
        when = self.wall_time.isoformat(timespec="milliseconds") if self.wall_time else "-"
        head = f"{self.seq:>8}  {when}  {ts:<16} {self.operation:<12} {self.namespace}"
        if self.operation == "gap":
            return f"{head}  GAP: {self.reason}"
        parts = [head]
        if self.document_key is not None:
            parts.append(f"key={json_util.dumps(_plain(self.document_key))}")
        if self.update_description is not None:
            parts.append(f"update={json_util.dumps(_plain(self.update_description))}")
        elif self.full_document is not None:
            parts.append(f"doc={json_util.dumps(_plain(self.full_document))}")
        if self.to is not None:
            parts.append(f"to={self.to.get('db')}.{self.to.get('coll')}")
        elif self.operation_description is not None:
            parts.append(f"ddl={json_util.dumps(_plain(self.operation_description))}")
        if self.txn_number is not None:
            parts.append(f"txn={self.txn_number}")
        return "  ".join(parts)

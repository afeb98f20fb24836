"""Sessions, retryable writes and multi-document transactions in the sandbox.

What is faithful: a committed transaction's changes reach change streams
together, all with one clusterTime and each with ``lsid`` and ``txnNumber``;
an aborted transaction leaves no trace (its writes are undone from the
pre-images the engine kept, and collections its writes created are dropped); a document written by an open transaction
cannot be written by another transaction (WriteConflict 112, labelled
TransientTransactionError, so drivers' ``with_transaction`` retries) and a
plain write to it waits until the transaction ends.  A retried write (same
``lsid`` + ``txnNumber``) is answered from a cache, not run twice.

Collections created inside a transaction (``create``, a first insert or
upsert, ``createIndexes`` on a collection the transaction creates) are part
of it, as in MongoDB 4.4+: their ``create`` and ``createIndexes`` entries
commit with it, and an abort drops them.

What is approximate: reads outside a transaction see its uncommitted writes
(read-uncommitted, where MongoDB gives snapshot isolation), and other DDL
inside a transaction is refused (263) rather than partly supported.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bson

from walkit.sandbox.errors import CommandError
from walkit.sandbox.oplog import Entry

if TYPE_CHECKING:
    from walkit.sandbox.engine import Ctx, Engine, Handler

TRANSIENT = ["TransientTransactionError"]
RETRYABLE_WRITES = {"insert", "update", "delete", "findandmodify"}
NOT_IN_TXN = {"drop", "dropdatabase", "renamecollection", "dropindexes", "collmod"}
TXN_LIFETIME = 60.0
WAIT_FOR_TXN = 5.0
RETRY_CACHE = 10_000

DocId = tuple[str, str, bytes]


@dataclass
class Transaction:
    lsid: dict[str, Any]
    number: int
    entries: list[Entry] = field(default_factory=list)
    state: str = "active"  # active | committed | aborted
    started: float = field(default_factory=time.monotonic)
    claims: set[DocId] = field(default_factory=set)
    #: Collections it created (dropped again on abort).
    created: list[tuple[str, str]] = field(default_factory=list)


def _lsid_key(lsid: Any) -> bytes:
    if isinstance(lsid, dict) and "id" in lsid:
        return bytes(lsid["id"])
    raise CommandError(9, "lsid must be a document with an 'id' field")


def doc_id(db: str, coll: str, key: Any) -> DocId:
    return (db, coll, bson.encode({"k": key}))


class Sessions:
    """Session table, transaction state and the retryable-write cache."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.txns: dict[bytes, Transaction] = {}
        self.owners: dict[DocId, Transaction] = {}
        self.retried: OrderedDict[tuple[bytes, int], dict[str, Any]] = OrderedDict()

    # -- dispatch ------------------------------------------------------------
    def run(self, ctx: Ctx, handler: Handler) -> dict[str, Any]:
        body = ctx.body
        lsid = body.get("lsid")
        number = body.get("txnNumber")
        name = ctx.name.lower()
        ctx.lsid = lsid
        if name in ("committransaction", "aborttransaction"):
            return handler(self.engine, ctx)
        if body.get("autocommit") is False:
            ctx.txn = self._txn_for(lsid, number, bool(body.get("startTransaction")))
            if name in NOT_IN_TXN:
                raise CommandError(263, f"Cannot run '{ctx.name}' in a multi-document transaction.")
            try:
                reply = handler(self.engine, ctx)
            except Exception:  # any failure inside a transaction aborts it, as in MongoDB
                self.abort(ctx.txn)
                raise
            if reply.get("writeErrors"):
                self.abort(ctx.txn)
            return reply
        if number is not None and name in RETRYABLE_WRITES and lsid is not None:
            key = (_lsid_key(lsid), int(number))
            if key in self.retried:
                return copy.deepcopy(self.retried[key])
            reply = handler(self.engine, ctx)
            self.retried[key] = copy.deepcopy(reply)
            while len(self.retried) > RETRY_CACHE:
                self.retried.popitem(last=False)
            return reply
        return handler(self.engine, ctx)

    def _txn_for(self, lsid: Any, number: Any, start: bool) -> Transaction:
        if number is None:
            raise CommandError(72, "autocommit=false needs a txnNumber")
        key = _lsid_key(lsid)
        current = self.txns.get(key)
        if start:
            if current is not None and current.number >= number:
                raise CommandError(251, f"txnNumber {number} is not newer than {current.number}", TRANSIENT)
            if current is not None and current.state == "active":
                self.abort(current)
            txn = self.txns[key] = Transaction(lsid=lsid, number=int(number))
            return txn
        if current is None or current.number != number or current.state != "active":
            raise CommandError(251, f"Transaction with txnNumber {number} has been aborted or was never started.", TRANSIENT)
        if time.monotonic() - current.started > TXN_LIFETIME:
            self.abort(current)
            raise CommandError(251, "Transaction exceeded its lifetime and was aborted.", TRANSIENT)
        return current

    # -- document claims -------------------------------------------------------
    def claim(self, ctx: Ctx, db: str, coll: str, keys: Iterable[Any]) -> bool:
        """Claim documents for a write; False if the caller must wait and retry.

        Inside a transaction a document held by another one is a WriteConflict;
        outside, the caller waits (the engine lock is released meanwhile).
        """
        if not self.owners and ctx.txn is None:  # no transaction holds anything: nothing to check or note
            return True
        ids = [doc_id(db, coll, k) for k in keys]
        for did in ids:
            owner = self.owners.get(did)
            if owner is None or owner is ctx.txn:
                continue
            if time.monotonic() - owner.started > TXN_LIFETIME:
                self.abort(owner)
                continue
            if ctx.txn is not None:
                raise CommandError(112, "Write conflict during plan execution and yielding is disabled.", list(TRANSIENT))
            return False
        if ctx.txn is not None:
            for did in ids:
                self.owners[did] = ctx.txn
                ctx.txn.claims.add(did)
        return True

    def wait_for_release(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommandError(112, "a transaction holds this document and did not finish in time")
        self.engine.oplog.changed.wait(min(remaining, 0.05))

    def _release(self, txn: Transaction) -> None:
        for did in txn.claims:
            if self.owners.get(did) is txn:
                del self.owners[did]
        txn.claims.clear()
        self.engine.oplog.changed.notify_all()

    # -- commit / abort --------------------------------------------------------
    def commit(self, txn: Transaction) -> None:
        eng = self.engine
        if txn.entries:
            ts = eng.oplog.next_ts()
            for index, entry in enumerate(txn.entries):
                entry.ts = ts
                entry.txn_index = index
                entry.lsid = txn.lsid
                entry.txn_number = txn.number
            eng.publish(txn.entries)
        txn.entries = []
        txn.state = "committed"
        self._release(txn)

    def abort(self, txn: Transaction | None) -> None:
        if txn is None or txn.state != "active":
            return
        eng = self.engine
        try:
            for entry in reversed(txn.entries):
                if entry.doc_key is None:  # a collection's create or createIndexes: dropped below
                    continue
                coll = eng.coll(entry.db, entry.coll or "")
                key = (entry.doc_key or {}).get("_id")
                if entry.op == "insert":
                    coll.delete_one({"_id": key})
                elif entry.pre is not None:  # update, replace, delete: put the old document back
                    coll.replace_one({"_id": key}, copy.deepcopy(entry.pre), upsert=True)
            for db, name in txn.created:
                if eng.exists(db, name) and eng.coll(db, name).estimated_document_count() == 0:
                    eng.coll(db, name).drop()
                    eng.colls.pop((db, name), None)
        finally:
            txn.created = []
            txn.entries = []
            txn.state = "aborted"
            self._release(txn)


def _txn_from_ctx(eng: Engine, ctx: Ctx) -> Transaction:
    if ctx.db != "admin":
        raise CommandError(13, f"{ctx.name} may only be run against the admin database.")
    key = _lsid_key(ctx.arg("lsid"))
    txn = eng.sessions.txns.get(key)
    number = ctx.arg("txnNumber")
    if txn is None or txn.number != number:
        raise CommandError(251, f"Transaction with txnNumber {number} was never started.", TRANSIENT)
    return txn


def _commit(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    txn = _txn_from_ctx(eng, ctx)
    if txn.state == "aborted":
        raise CommandError(251, "Transaction has been aborted.", TRANSIENT)
    if txn.state == "active":
        eng.sessions.commit(txn)
    return {}


def _abort(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    txn = _txn_from_ctx(eng, ctx)
    if txn.state == "committed":
        raise CommandError(256, "Transaction has been committed; it cannot be aborted.")
    eng.sessions.abort(txn)
    return {}


def _register() -> None:
    from walkit.sandbox.engine import command

    command("commitTransaction")(_commit)
    command("abortTransaction")(_abort)


_register()

"""Applying captured change events to a state: in memory, or into a MongoDB database.

Replay is idempotent, so a fuzzy snapshot plus every event from its start
gives the exact state at the cut:

- ``insert``/``replace`` (and an ``update`` carrying a post-image) set the
  whole document;
- ``update`` applies the ``updateDescription``: its values are results, not
  operators (``truncatedArrays``, then ``removedFields``, then
  ``updatedFields``; ``disambiguatedPaths`` when present).  A path that no
  longer fits the document (a later change, already in the snapshot,
  replaced a parent with a scalar) is skipped: that later change is replayed
  too and sets it;
- ``delete`` removes by ``_id``; ``drop``, ``rename`` and ``dropDatabase``
  act on whole collections.  A rename whose source is unknown replaces its
  target by an empty collection when it came after the snapshot's scan, and
  is taken as already applied when it came during it.  Other events
  (``invalidate``, DDL) change no documents.  Known limit: a collection renamed *into* the restored scope
  from outside it arrives empty of what it held before the rename.

Documents are keyed by the BSON bytes of their ``_id`` (so ``1`` and ``1.0``
are different keys here, as they are not in MongoDB; a known limit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import bson
from bson import json_util
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, ReplaceOne, UpdateOne
from pymongo import errors as pm

from walkit.errors import RestoreError
from walkit.mongo import describe_error
from walkit.restore.catalog import DOC, Catalog, is_ddl

__all__ = ["MemoryState", "MongoTarget", "apply_update_description", "namespace_of"]

Namespace = tuple[str, str]
#: Documents up to this size stay decoded once updated (cheap repeated updates); larger ones go back to BSON.
KEEP_DECODED = 64 << 10


def namespace_of(event: Mapping[str, Any]) -> Namespace | None:
    ns = event.get("ns") or {}
    return (ns["db"], ns["coll"]) if ns.get("db") and ns.get("coll") else None


def _id_key(doc_id: Any) -> bytes:
    return bson.encode({"_id": doc_id}, codec_options=DOC)


class _PathError(Exception):
    """A path that does not fit the document as it is now."""


def _walk(doc: dict[str, Any], parts: list[Any], create: bool) -> tuple[Any, Any]:
    node: Any = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise _PathError
            node = node[index]
        elif isinstance(node, dict):
            key = str(part)
            if key not in node:
                if not create:
                    raise _PathError
                node[key] = {}
            node = node[key]
        else:
            raise _PathError
        if not isinstance(node, dict | list):
            raise _PathError
    last = parts[-1]
    if isinstance(node, list):
        try:
            return node, int(last)
        except ValueError:
            raise _PathError from None
    return node, str(last)


def apply_update_description(doc: dict[str, Any], desc: dict[str, Any]) -> None:
    """Change ``doc`` in place as an update event's ``updateDescription`` says."""
    paths = desc.get("disambiguatedPaths") or {}

    def parts(path: str) -> list[Any]:
        return list(paths[path]) if path in paths else path.split(".")

    for trunc in desc.get("truncatedArrays") or []:
        try:
            node, key = _walk(doc, parts(trunc["field"]), create=False)
            value = node[key] if (isinstance(node, list) and key < len(node)) or (isinstance(node, dict) and key in node) else None
            if isinstance(value, list):
                del value[int(trunc["newSize"]) :]
        except _PathError:
            pass
    for path in desc.get("removedFields") or []:
        try:
            node, key = _walk(doc, parts(path), create=False)
            if isinstance(node, dict):
                node.pop(key, None)
            elif key < len(node):
                node[key] = None  # $unset of an array element leaves null, as MongoDB does
        except _PathError:
            pass
    for path, value in (desc.get("updatedFields") or {}).items():
        try:
            node, key = _walk(doc, parts(path), create=True)
            if isinstance(node, list):
                while len(node) < key:
                    node.append(None)
                if key == len(node):
                    node.append(value)
                else:
                    node[key] = value
            else:
                node[key] = value
        except _PathError:
            pass


class MemoryState:
    """Collections held in memory: ``{(db, coll): {_id bytes: document}}``, plus their
    metadata (:class:`walkit.restore.catalog.Catalog`: options, indexes, UUID).

    Documents stay BSON bytes until an update needs them decoded; documents of
    any size up to 16 MiB are kept as their own ``bytes`` (never a view into a
    WAL record).  For the dump folder, pandas, and tests; memory grows with the
    data restored.
    """

    def __init__(self, settled: Any = None, catalog: Catalog | None = None) -> None:
        self.collections: dict[Namespace, dict[bytes, bytes | dict[str, Any]]] = {}
        #: The snapshot's end: events after it are known not to be in the loaded documents.
        self.settled = settled
        self.catalog = catalog if catalog is not None else Catalog()

    def load(self, ns: Namespace, docs: Iterable[RawBSONDocument], metadata: dict[str, Any] | None = None) -> None:
        coll = self.collections.setdefault(ns, {})
        if metadata is not None:
            self.catalog.load(ns, metadata)
        for doc in docs:
            coll[_id_key(doc["_id"])] = bytes(doc.raw)

    def apply(self, event: RawBSONDocument, ns: Namespace | None = None) -> None:
        op = event["operationType"]
        ns = ns or namespace_of(event)
        if ns is None:
            return
        if op == "rename" and ns not in self.collections and not _after(event, self.settled):
            pass  # inside the snapshot's scan: already in the loaded documents and metadata
        else:
            self.catalog.apply(event, ns)
        if op in ("insert", "replace", "update", "delete"):
            key = _id_key(event["documentKey"]["_id"])
            coll = self.collections.setdefault(ns, {})
            full = event.get("fullDocument")
            if op == "delete":
                coll.pop(key, None)
            elif full is not None:
                coll[key] = bytes(full.raw)  # a copy: the raw of a large nested document is a view
            elif op == "update" and key in coll:
                doc = coll[key]
                size = 0 if isinstance(doc, dict) else len(doc)
                if not isinstance(doc, dict):
                    doc = bson.decode(doc, DOC)
                apply_update_description(doc, bson.decode(bytes(event["updateDescription"].raw), DOC))
                # a large document goes back to BSON: as Python objects it takes several times its size
                coll[key] = bson.encode(doc, codec_options=DOC) if size > KEEP_DECODED else doc
        elif is_ddl(op):
            self.collections.setdefault(ns, {})
        elif op == "drop":
            self.collections.pop(ns, None)
        elif op == "rename":
            to = (event["to"]["db"], event["to"]["coll"])
            if ns in self.collections:
                self.collections[to] = self.collections.pop(ns)
            elif _after(event, self.settled):  # a source with no documents we know of replaces the target
                self.collections.pop(to, None)
            # else: inside the snapshot's scan, the rename is already in the loaded documents
        elif op == "dropDatabase":
            for name in [n for n in self.collections if n[0] == ns[0]]:
                del self.collections[name]

    def documents(self, ns: Namespace) -> Iterator[bytes]:
        """The collection's documents as BSON bytes, in ``_id`` byte order."""
        coll = self.collections.get(ns, {})
        for key in sorted(coll):
            doc = coll[key]
            yield doc if isinstance(doc, bytes) else bson.encode(doc, codec_options=DOC)

    def metadata(self, ns: Namespace) -> dict[str, Any]:
        """The collection's mongodump ``metadata.json`` at the replayed instant."""
        return self.catalog.get(ns).as_metadata(ns[1])


class MongoTarget:
    """Replay one source database into collections ``prefix + name`` of a MongoDB
    database, in batched ordered ``bulk_write`` calls, as mongorestore does:
    each collection is created with its options before its first document,
    documents are written with document validation bypassed (the source
    validated them), and :meth:`finish` applies later option changes
    (collMod) and builds the indexes after the data.

    ``wanted`` limits it to some collections (None: all).  The restore writes
    into such temporary collections and renames them at the end.  An option
    or index the target refuses is a RestoreError naming the collection and
    what was refused.
    """

    def __init__(
        self, db: Any, source_db: str, prefix: str, wanted: set[str] | None = None, batch: int = 1000,
        settled: Any = None, catalog: Catalog | None = None,
    ) -> None:
        self.db, self.source_db, self.prefix, self.wanted, self.batch = db, source_db, prefix, wanted, batch
        self.settled = settled  # the snapshot's end (see MemoryState)
        self.catalog = catalog if catalog is not None else Catalog()
        self.pending: list[tuple[str, Any]] = []
        self.skipped = 0
        #: The temporary collections made so far, with the options each was created with.
        self.made: dict[str, dict[str, Any]] = {}

    def name(self, ns: Namespace | None) -> str | None:
        if ns is None or ns[0] != self.source_db or (self.wanted is not None and ns[1] not in self.wanted):
            return None
        return self.prefix + ns[1]

    def load(self, ns: Namespace, docs: Iterable[RawBSONDocument], metadata: dict[str, Any] | None = None) -> None:
        name = self.name(ns)
        if name is None:
            return
        if metadata is not None:
            self.catalog.load(ns, metadata)
        self._make(name, ns)
        coll = self.db[name]
        chunk: list[RawBSONDocument] = []
        for doc in docs:
            chunk.append(doc)
            if len(chunk) >= self.batch:
                coll.insert_many(chunk, ordered=False, bypass_document_validation=True)
                chunk = []
        if chunk:
            coll.insert_many(chunk, ordered=False, bypass_document_validation=True)

    def _make(self, name: str, ns: Namespace) -> None:
        """Create the collection with its options (as the catalog has them now) if not made yet."""
        if name in self.made:
            return
        options = self.catalog.get(ns).options
        try:
            self.db.create_collection(name, check_exists=False, **options)
        except pm.OperationFailure as exc:
            if exc.code != 48:  # NamespaceExists: made by an earlier write
                what = ", ".join(sorted(options)) or "no options"
                raise RestoreError(
                    f"the target refused to create collection {ns[1]!r} with its options ({what}): {describe_error(exc) or exc}; "
                    "restore into a server that supports them (or --to-dump); nothing was left behind"
                ) from None
        self.made[name] = dict(options)

    def apply(self, event: RawBSONDocument) -> None:
        op = event["operationType"]
        ns = namespace_of(event)
        if op == "dropDatabase" and ns is not None and ns[0] == self.source_db:
            self.flush()
            for coll in self.db.list_collection_names():
                if coll.startswith(self.prefix):
                    self.db.drop_collection(coll)
            self.made.clear()
            self.catalog.apply(event, ns)
            return
        name = self.name(ns)
        if op == "rename":
            to = event["to"]
            target = self.name((to["db"], to["coll"]))
            if name is None and target is None:
                return
            self.flush()
            if name is not None and name in self.made:
                self.catalog.apply(event, ns)
                options = self.made.pop(name)
                if target is not None:
                    self.db[name].rename(target, dropTarget=True)
                    self.made[target] = options
                else:
                    self.db.drop_collection(name)  # renamed out of what is restored
            elif target is not None and _after(event, self.settled):
                self.catalog.apply(event, ns)
                self.db.drop_collection(target)  # an empty (or unrestored) source replaces it
                self.made.pop(target, None)
            return
        if name is None or ns is None:
            return
        self.catalog.apply(event, ns)
        if op == "drop":
            self.flush()
            self.db.drop_collection(name)
            self.made.pop(name, None)
        elif is_ddl(op):
            self._make(name, ns)  # options now; indexes are built by finish(), after the data
        elif op in ("insert", "replace", "update", "delete"):
            self._make(name, ns)
            doc_id = event["documentKey"]["_id"]
            full = event.get("fullDocument")
            if op == "delete":
                self._add(name, DeleteOne({"_id": doc_id}))
            elif full is not None:
                self._add(name, ReplaceOne({"_id": doc_id}, full, upsert=True))
            elif op == "update":
                desc = bson.decode(bytes(event["updateDescription"].raw), DOC)
                if _in_order(desc):
                    for update in _update_ops(desc):
                        self._add(name, UpdateOne({"_id": doc_id}, update))
                else:  # $set would append new fields in name order, not the source's: change the document here
                    self._rewrite(name, doc_id, desc)

    def _rewrite(self, name: str, doc_id: Any, desc: dict[str, Any]) -> None:
        """Apply an update description to the stored document in Python and replace it (exact field order)."""
        self.flush()
        doc = self.db.get_collection(name, codec_options=DOC).find_one({"_id": doc_id})
        if doc is None:
            return  # deleted later in the history (already in the snapshot): that delete is replayed too
        apply_update_description(doc, desc)
        self._add(name, ReplaceOne({"_id": doc_id}, doc))

    def _add(self, name: str, op: Any) -> None:
        self.pending.append((name, op))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Write what is pending, in order, one bulk_write per run of the same collection."""
        pending, self.pending = self.pending, []
        start = 0
        while start < len(pending):
            name = pending[start][0]
            end = start
            while end < len(pending) and pending[end][0] == name:
                end += 1
            ops = [op for _, op in pending[start:end]]
            while ops:
                try:
                    self.db[name].bulk_write(ops, ordered=True, bypass_document_validation=True)
                    break
                except pm.BulkWriteError as exc:
                    failed = exc.details["writeErrors"][0]["index"]
                    self.skipped += 1  # a path that no longer fits: a later change sets it
                    ops = ops[failed + 1 :]
            start = end

    def finish(self) -> list[str]:
        """Flush, bring each collection's options to the catalog's (collMod), build its
        indexes; the temporary collections made, by name."""
        self.flush()
        for name, created in self.made.items():
            ns = (self.source_db, name[len(self.prefix) :])
            meta = self.catalog.get(ns)
            changes = _collmod(created, meta.options)
            if changes:
                try:
                    self.db.command("collMod", name, **changes)
                except pm.OperationFailure as exc:
                    raise RestoreError(
                        f"the target refused collection {ns[1]!r}'s options ({', '.join(sorted(changes))}): {describe_error(exc) or exc}; "
                        "restore into a server that supports them (or --to-dump); nothing was left behind"
                    ) from None
            for spec in meta.indexes.values():
                if spec.get("name") == "_id_":
                    continue
                try:
                    self.db.command("createIndexes", name, indexes=[{k: v for k, v in spec.items() if k != "ns"}])
                except pm.OperationFailure as exc:
                    raise RestoreError(
                        f"the target refused index {spec.get('name')!r} of collection {ns[1]!r} ({json_util.dumps(spec.get('key'))}): "
                        f"{describe_error(exc) or exc}; restore into a server that supports it (or --to-dump); nothing was left behind"
                    ) from None
        return list(self.made)


#: Options collMod can change, and how it names them.
_MODIFIABLE = {
    "validator": ("validator", {}), "validationLevel": ("validationLevel", "strict"), "validationAction": ("validationAction", "error"),
    "changeStreamPreAndPostImages": ("changeStreamPreAndPostImages", {"enabled": False}), "expireAfterSeconds": ("expireAfterSeconds", "off"),
    "size": ("cappedSize", None), "max": ("cappedMax", None),
}


def _collmod(created: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """The collMod fields that take a collection created with ``created`` to ``final``."""
    changes: dict[str, Any] = {}
    for option, (field_name, unset) in _MODIFIABLE.items():
        if created.get(option) == final.get(option):
            continue
        if option in final:
            changes[field_name] = final[option]
        elif unset is not None:
            changes[field_name] = unset
    return changes


def _after(event: RawBSONDocument, settled: Any) -> bool:
    """Whether the event is later than everything the loaded snapshot can hold."""
    return settled is None or event["clusterTime"] > settled


def _in_order(desc: dict[str, Any]) -> bool:
    """Whether ``$set`` gives the source's field order: MongoDB 5.0+ adds new fields in name order,
    so an update whose paths are not in that order (a pipeline update's) is applied otherwise."""
    paths = [p.encode() for p in desc.get("updatedFields") or {}]
    return paths == sorted(paths) and not desc.get("disambiguatedPaths")


def _update_ops(desc: dict[str, Any]) -> list[dict[str, Any]]:
    """MongoDB updates doing what an updateDescription says (truncations first, as separate updates)."""
    ops: list[dict[str, Any]] = [{"$push": {t["field"]: {"$each": [], "$slice": int(t["newSize"])}}} for t in desc.get("truncatedArrays") or []]
    change: dict[str, Any] = {}
    if desc.get("removedFields"):
        change["$unset"] = {path: "" for path in desc["removedFields"]}
    if desc.get("updatedFields"):
        change["$set"] = dict(desc["updatedFields"])
    if change:
        ops.append(change)
    return ops

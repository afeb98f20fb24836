"""Collection metadata at an instant: options, indexes and UUID, as a restore must reproduce them.

A :class:`Catalog` starts from a snapshot's ``metadata.json`` files and
follows the WAL's events in order:

- ``create`` (MongoDB 6.0+ with ``showExpandedEvents``) sets the
  collection's options from ``operationDescription`` (``idIndex`` is not an
  option: it is dropped);
- ``createIndexes`` / ``dropIndexes`` add / remove index specs by name;
- ``modify`` (collMod) changes options (``validator``, ``validationLevel``,
  ``validationAction``, ``changeStreamPreAndPostImages``,
  ``expireAfterSeconds``, ``cappedSize``/``cappedMax``) or one index's
  ``expireAfterSeconds``/``hidden``/``prepareUnique``/``unique``;
- ``drop``, ``rename`` and ``dropDatabase`` move or forget whole entries;
- any other event on an unknown collection creates it implicitly, with no
  options and only the ``_id`` index, unless ``fallback`` knows better.

Every rule is idempotent, so replaying the events from a fuzzy snapshot's
start over its metadata gives the metadata at the cut.

Guaranteed: with expanded events in the WAL, options and indexes follow
every DDL change.  Not guaranteed: without them (a server before 6.0),
what changed after the snapshot is unknown; ``fallback`` (the restore gives
the nearest later snapshot holding the collection) is the best guess.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

__all__ = ["Catalog", "CollectionMeta", "DOC", "ID_INDEX", "clean_options", "is_ddl"]

#: Documents decoded for changing them: plain dicts, every BSON type kept (re-encodes to the same bytes).
DOC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
ID_INDEX: dict[str, Any] = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
Namespace = tuple[str, str]
#: collMod fields that are collection options, and the option each one sets.
_COLLMOD_OPTIONS = {
    "validator": "validator", "validationLevel": "validationLevel", "validationAction": "validationAction",
    "changeStreamPreAndPostImages": "changeStreamPreAndPostImages", "expireAfterSeconds": "expireAfterSeconds",
    "cappedSize": "size", "cappedMax": "max",
}
_INDEX_CHANGES = ("expireAfterSeconds", "hidden", "prepareUnique", "unique")
_DDL = ("create", "createIndexes", "dropIndexes", "modify")


def clean_options(options: Any) -> dict[str, Any]:
    """A collection's options as ``create`` takes them: a plain dict without ``idIndex``."""
    return {k: v for k, v in dict(options or {}).items() if k != "idIndex"}


def _index_spec(spec: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(spec).items() if k != "ns"}


@dataclass
class CollectionMeta:
    """One collection's metadata: options, index specs by name (``_id_`` included), UUID (hex)."""

    options: dict[str, Any] = field(default_factory=dict)
    indexes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"_id_": dict(ID_INDEX)})
    uuid: str = ""
    #: False when only implied by a write (no snapshot metadata, no create event).
    known: bool = True

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> CollectionMeta:
        """From a mongodump ``metadata.json`` (as decoded by ``bson.json_util``)."""
        indexes = {str(ix["name"]): _index_spec(ix) for ix in meta.get("indexes") or [] if isinstance(ix, dict) and "name" in ix}
        if not indexes:
            indexes = {"_id_": dict(ID_INDEX)}
        raw_uuid = meta.get("uuid") or ""
        return cls(clean_options(meta.get("options")), indexes, raw_uuid if isinstance(raw_uuid, str) else bytes(raw_uuid).hex())

    def as_metadata(self, name: str) -> dict[str, Any]:
        """mongodump's ``metadata.json`` for this collection (a UUID is made up when none is known)."""
        ordered = sorted(self.indexes.values(), key=lambda ix: ix.get("name") != "_id_")
        return {
            "indexes": ordered,
            "uuid": self.uuid or uuidlib.uuid4().hex,
            "collectionName": name,
            "type": "collection",
            "options": dict(self.options),
        }


class Catalog:
    """Metadata of every collection a replay touches, keyed by ``(db, coll)``."""

    def __init__(self, fallback: Callable[[Namespace], dict[str, Any] | None] | None = None) -> None:
        self.colls: dict[Namespace, CollectionMeta] = {}
        self.fallback = fallback
        #: How many DDL events (create/createIndexes/dropIndexes/modify) were applied.
        self.ddl_events = 0

    def load(self, ns: Namespace, metadata: dict[str, Any]) -> None:
        self.colls[ns] = CollectionMeta.from_metadata(metadata)

    def get(self, ns: Namespace) -> CollectionMeta:
        """The collection's metadata (made up, as an implicit creation, when unknown)."""
        meta = self.colls.get(ns)
        if meta is None:
            meta = self.colls[ns] = self._implicit(ns)
        return meta

    def _implicit(self, ns: Namespace) -> CollectionMeta:
        found = self.fallback(ns) if self.fallback is not None else None
        if found is not None:
            meta = CollectionMeta.from_metadata(found)
            meta.known = False
            return meta
        return CollectionMeta(known=False)

    def apply(self, event: Any, ns: Namespace | None) -> None:
        """Follow one change event (a RawBSONDocument or a dict)."""
        op = event["operationType"]
        if op == "dropDatabase" and ns is not None:
            for name in [n for n in self.colls if n[0] == ns[0]]:
                del self.colls[name]
            return
        if ns is None:
            return
        if op == "drop":
            self.colls.pop(ns, None)
            return
        if op == "rename":
            to = (event["to"]["db"], event["to"]["coll"])
            moved = self.colls.pop(ns, None)
            if moved is not None:
                self.colls[to] = moved
            else:
                self.colls.pop(to, None)  # from outside what is replayed: unknown, found again on use
            return
        desc = _decoded(event.get("operationDescription"))
        uuid = event.get("collectionUUID")
        if op == "create":
            self.ddl_events += 1
            meta = self.colls.get(ns)
            if meta is None or not meta.known:
                self.colls[ns] = meta = CollectionMeta()
            meta.options = clean_options(desc)
            meta.known = True
        else:
            meta = self.get(ns)
        if uuid is not None:
            meta.uuid = bytes(uuid).hex()
        if op == "createIndexes":
            self.ddl_events += 1
            for spec in desc.get("indexes") or []:
                meta.indexes[str(spec["name"])] = _index_spec(spec)
        elif op == "dropIndexes":
            self.ddl_events += 1
            for spec in desc.get("indexes") or []:
                if spec.get("name") != "_id_":
                    meta.indexes.pop(str(spec.get("name")), None)
        elif op == "modify":
            self.ddl_events += 1
            _modify(meta, desc)


def _decoded(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    raw = getattr(value, "raw", None)
    return bson.decode(bytes(raw), DOC) if raw is not None else dict(value)


def _modify(meta: CollectionMeta, desc: dict[str, Any]) -> None:
    for key, value in desc.items():
        if key == "index" and isinstance(value, dict):
            spec = _find_index(meta, value)
            if spec is not None:
                for change in _INDEX_CHANGES:
                    if change in value:
                        spec[change] = value[change]
                if spec.get("hidden") is False:
                    del spec["hidden"]  # MongoDB lists an unhidden index without the field
        elif key in _COLLMOD_OPTIONS:
            option = _COLLMOD_OPTIONS[key]
            if (key == "expireAfterSeconds" and value == "off") or (key == "changeStreamPreAndPostImages" and not dict(value or {}).get("enabled")):
                meta.options.pop(option, None)  # MongoDB lists neither once turned off
            else:
                meta.options[option] = value


def _find_index(meta: CollectionMeta, change: dict[str, Any]) -> dict[str, Any] | None:
    if "name" in change:
        return meta.indexes.get(str(change["name"]))
    pattern = change.get("keyPattern")
    for spec in meta.indexes.values():
        if pattern is not None and list(dict(spec.get("key") or {}).items()) == list(dict(pattern).items()):
            return spec
    return None


def is_ddl(op: str) -> bool:
    """Whether ``op`` changes metadata only (no documents): create, createIndexes, dropIndexes, modify."""
    return op in _DDL

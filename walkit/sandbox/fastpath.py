"""Fast paths for the commonest commands (writes by ``_id``, whole-collection reads), giving exactly what the general path gives.

The general path (:mod:`.updates` over mongomock-ng) handles every update;
these handle the common ones in a few dict operations and answer ``None``
(or ``False``) for anything else, so the caller falls back to it.  The
equivalence is checked byte for byte by ``tests/sandbox/test_fastpath*.py``.

:func:`apply_update` covers ``$set``, ``$unset``, ``$inc`` and ``$mul`` on
plain field paths of one existing document:

- each path is split on ``.``; within an operator the paths are applied in
  sorted order, operators in the order given (as :mod:`.updates` does), so
  new fields are appended in that order;
- a missing embedded document on the way is created (``$set``, ``$inc``,
  ``$mul``); a numeric component indexes an array when it is within it;
- ``$inc``/``$mul`` use :func:`.storage._arith` (MongoDB's numeric types,
  int32 overflow to int64) and a missing field starts at the operand (or 0);
- ``$unset`` of a missing field, or of one under a missing or scalar parent,
  changes nothing.

It does not cover (the general path then runs, with its errors): other
operators, ``arrayFilters``, positional or ``$``-prefixed or empty path
components, ``_id`` paths, the same or overlapping paths twice, paths through
a scalar or past an array's end or through an array by name, ``$unset`` of
an array element, arithmetic errors, values other than plain BSON types
(documents, arrays, strings, numbers, ObjectId, dates...), and collections
with a validator or a unique index.

:func:`insert` stores a copy of a new document (dates made as mongomock-ng
keeps them); it declines duplicates, top-level ``$`` names, validators and
unique indexes.  :func:`scan` answers ``find({})`` with the stored documents encoded once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import bson
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp
from mongomock_ng.helpers import patch_datetime_awareness_in_document

from walkit.sandbox import storage
from walkit.sandbox.wire import CODEC, RAW_CODEC

__all__ = ["apply_update", "insert", "scan"]


FAST_OPERATORS = frozenset({"$set", "$unset", "$inc", "$mul"})
#: Immutable values stored as they are (a Python int only within int64: see :func:`_copy`).
_KEPT = frozenset({str, float, bool, type(None), Int64, ObjectId, Decimal128, Binary, bytes, Regex, Code, MinKey, MaxKey, DatetimeMS})
_INT64 = (-(2**63), 2**63 - 1)


class _DeclinedError(Exception):
    """Not for the fast path: the caller runs the general one."""


def _copy(value: Any) -> Any:
    """``value`` as mongomock-ng stores it (new containers, dates at millisecond precision,
    naive UTC); raise :class:`_DeclinedError` for anything else than plain BSON values."""
    kind = type(value)
    if kind in _KEPT:
        return value
    if kind is int:
        if _INT64[0] <= value <= _INT64[1]:
            return value
        raise _DeclinedError
    if kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str or "\x00" in k:
                raise _DeclinedError
            out[k] = v if type(v) in _KEPT else _copy(v)
        return out
    if kind is list:
        return [v if type(v) in _KEPT else _copy(v) for v in value]
    if kind is datetime or (kind is Timestamp and (value.time or value.inc)):
        return patch_datetime_awareness_in_document(value)
    raise _DeclinedError


def _plain_collection(coll: Any) -> bool:
    """No validator and no unique index: nothing to check a document against."""
    store = coll._store
    return not store.options.get("validator") and not any(index.get("unique") for index in store.indexes.values())


def _index(part: str, array: list[Any]) -> int:
    """``part`` as an index within ``array`` (a canonical decimal), else :class:`_DeclinedError`."""
    if part.isascii() and part.isdigit() and (part == "0" or part[0] != "0"):
        i = int(part)
        if i < len(array):
            return i
    raise _DeclinedError


def _parent(doc: dict[str, Any], parts: list[str]) -> Any:
    """The container that holds ``parts[-1]``, creating missing embedded documents."""
    node: Any = doc
    for part in parts[:-1]:
        kind = type(node)
        if kind is dict:
            child = node.get(part, _MISSING)
            if child is _MISSING:
                child = node[part] = {}
            node = child
        elif kind is list:
            node = node[_index(part, node)]
        else:  # through a scalar: code 28
            raise _DeclinedError
    return node


_MISSING = object()


def _set(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    node = _parent(doc, parts)
    kind = type(node)
    if kind is dict:
        node[parts[-1]] = _copy(value)
    elif kind is list:
        node[_index(parts[-1], node)] = _copy(value)
    else:
        raise _DeclinedError


def _arith(doc: dict[str, Any], op: str, parts: list[str], operand: Any) -> None:
    node = _parent(doc, parts)
    last = parts[-1]
    kind = type(node)
    try:
        if kind is dict:
            current = node.get(last, _MISSING)
            if current is _MISSING:
                storage._arith(op, 0, operand)  # type-checks the operand
                node[last] = _copy(operand) if op == "$inc" else storage._zero_like(operand)
            else:
                node[last] = storage._arith(op, current, operand)
        elif kind is list:
            i = _index(last, node)
            node[i] = storage._arith(op, node[i], operand)
        else:
            raise _DeclinedError
    except _DeclinedError:
        raise
    except Exception:  # a type error, an overflow: the general path says it
        raise _DeclinedError from None


def _unset(doc: dict[str, Any], parts: list[str]) -> None:
    node: Any = doc
    for part in parts[:-1]:
        kind = type(node)
        if kind is dict:
            if part not in node:
                return
            node = node[part]
        elif kind is list:
            raise _DeclinedError
        else:
            return  # under a scalar: nothing to remove
    kind = type(node)
    if kind is dict:
        node.pop(parts[-1], None)
    elif kind is list:
        raise _DeclinedError


def _plan(update: Any) -> list[tuple[str, list[str], Any]] | None:
    """The (operator, path parts, operand) steps in the order they apply, or None."""
    if type(update) is not dict or not update:
        return None
    steps: list[tuple[str, list[str], Any]] = []
    paths: set[str] = set()
    dotted = False
    for op, fields in update.items():
        if op not in FAST_OPERATORS or type(fields) is not dict or not fields:
            return None
        for path in sorted(fields) if len(fields) > 1 else fields:
            if type(path) is not str or not path or path in paths or "\x00" in path:
                return None
            if "." in path:
                dotted = True
                parts = path.split(".")
                if not all(p and p[0] != "$" for p in parts):
                    return None
            else:
                if path[0] == "$":
                    return None
                parts = [path]
            if parts[0] == "_id":
                return None
            paths.add(path)
            steps.append((op, parts, fields[path]))
    if dotted:  # one path inside another: MongoDB's conflict (code 40)
        for _, parts, _ in steps:
            for i in range(1, len(parts)):
                if ".".join(parts[:i]) in paths:
                    return None
    return steps


def apply_update(coll: Any, key: Any, update: Any, array_filters: Any) -> tuple[dict[str, Any], dict[str, Any], set[str]] | None:
    """Apply an operator update to the stored document ``key`` as the general path would:
    (before, after, the top-level fields it touched); ``before`` is no longer stored (the
    caller's), ``after`` is.  None when this is not for the fast path (nothing changed)."""
    if array_filters:
        return None
    steps = _plan(update)
    if steps is None or not _plain_collection(coll):
        return None
    before = storage.stored(coll, key)
    if before is None:
        return None
    after = storage.clone(before)
    try:
        for op, parts, operand in steps:
            if op == "$set":
                _set(after, parts, operand)
            elif op == "$unset":
                _unset(after, parts)
            else:
                _arith(after, op, parts, operand)
    except _DeclinedError:
        return None
    storage.store_doc(coll, after)
    return before, after, {parts[0] for _, parts, _ in steps}


def scan(coll: Any) -> list[RawBSONDocument]:
    """Every document of ``coll`` in natural order, encoded once, as ``find({})`` (no projection,
    sort, skip or limit) returns them: its results are fixed when the first batch is taken."""
    store = coll._store
    store._remove_expired_documents()
    return [RawBSONDocument(bson.encode(doc, codec_options=CODEC), RAW_CODEC) for doc in store._documents.values()]


def insert(coll: Any, doc: dict[str, Any]) -> bool:
    """Store a copy of ``doc`` (its ``_id`` set) as ``coll.insert_one`` would; False
    (nothing stored) when this is not for the fast path."""
    if not _plain_collection(coll) or any(k.startswith("$") for k in doc):
        return False
    try:
        copy = _copy(doc)
    except _DeclinedError:
        return False
    store = coll._store
    store._remove_expired_documents()
    documents = store._documents
    if doc["_id"] in documents:  # the general path answers the duplicate key error
        return False
    documents[doc["_id"]] = copy
    return True

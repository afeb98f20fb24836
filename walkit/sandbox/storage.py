"""Corrections to mongomock-ng so the sandbox stores and updates as MongoDB does.

Importing this module patches mongomock-ng in this process (the sandbox is
its only user here):

- documents are keyed by ``_id`` as MongoDB compares it: ``1``, ``1.0`` and
  ``NumberDecimal("1")`` are one key, ``true`` and ``1`` two, and a
  Decimal128 or document ``_id`` works (mongomock-ng uses a plain dict);
- a filter that is just ``{_id: value}`` finds its document by key, not by
  scanning the collection (as MongoDB uses the ``_id`` index), so updates
  and deletes by ``_id`` cost the same whatever the collection's size;
  :func:`stored`, :func:`store_doc` and :func:`pop_doc` read, put and remove
  one document by ``_id`` straight on the store, without a cursor or a copy;
- ``$inc`` and ``$mul`` follow MongoDB's numeric types (int32 < int64 <
  double < decimal; int32 overflow widens to int64, int64 overflow is an
  error); mongomock-ng's ``$inc`` turns NumberLong into a plain int and it
  has no ``$mul``.
"""

from __future__ import annotations

import collections
import decimal
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import bson
import mongomock_ng
import mongomock_ng.collection
import mongomock_ng.store
from bson.decimal128 import Decimal128, create_decimal128_context
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex
from mongomock_ng.filtering import filter_applies

from walkit.sandbox.wire import CODEC

# -- documents keyed by _id equality -----------------------------------------------


class _IdKey(tuple):
    """A canonical, hashable form of an ``_id`` (equal exactly when MongoDB says so)."""


def id_key(value: Any) -> _IdKey:
    """The key under which the document with ``_id`` ``value`` is stored."""
    kind = type(value)
    if kind is int or kind is Int64:  # (equal to the Decimal key below: equal numbers hash alike)
        return _IdKey(("num", value))
    if kind is str:
        return _IdKey(("str", value))
    if kind is ObjectId:  # what the last line gives, without encoding
        return _IdKey(("bson", b"\x07v\x00" + value.binary + b"\x00"))
    if isinstance(value, _IdKey):
        return value
    if isinstance(value, bool):
        return _IdKey(("bool", value))
    if isinstance(value, (int, float, Decimal128)):
        number = value.to_decimal() if isinstance(value, Decimal128) else decimal.Decimal(value)
        return _IdKey(("num", "nan" if number.is_nan() else number))
    if isinstance(value, str):
        return _IdKey(("str", value))
    if isinstance(value, dict):
        return _IdKey(("doc", tuple((k, id_key(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return _IdKey(("array", tuple(id_key(v) for v in value)))
    return _IdKey(("bson", bson.encode({"v": value}, codec_options=CODEC)[4:]))


class _IdKeyed(collections.OrderedDict):
    """mongomock-ng's document table, keyed by :func:`id_key`."""

    def __contains__(self, key: object) -> bool:
        return super().__contains__(id_key(key))

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(id_key(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(id_key(key), value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(id_key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(id_key(key), default)

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(id_key(key), *default)


def _get_documents(store: Any) -> _IdKeyed:
    return store.__dict__["_walkit_documents"]


def _set_documents(store: Any, value: Any) -> None:
    store.__dict__["_walkit_documents"] = value if isinstance(value, _IdKeyed) else _IdKeyed(value)


mongomock_ng.store.CollectionStore._documents = property(_get_documents, _set_documents)

_scan_documents = mongomock_ng.collection.Collection._iter_documents


def _iter_documents(self: Any, filter: Any) -> Any:  # noqa: A002 - mongomock-ng's name
    """``{_id: value}`` (a plain value, not an operator, regex, document or array) by key."""
    if type(filter) is dict and len(filter) == 1 and "_id" in filter:
        value = filter["_id"]
        if not isinstance(value, (dict, list, tuple, re.Pattern, Regex)):
            store = self._store
            store._remove_expired_documents()
            with store._rwlock.reader():
                doc = store._documents.get(value)
            return iter(() if doc is None or not filter_applies(filter, doc) else (doc,))
    return _scan_documents(self, filter)


mongomock_ng.collection.Collection._iter_documents = _iter_documents  # type: ignore[method-assign]


# -- one document by _id, straight on the store ------------------------------------


#: Common types that are neither mappings nor lists (:func:`clone` shares them).
_ATOMS = frozenset({str, int, float, bool, type(None), Int64, ObjectId, Decimal128})


def clone(value: Any) -> Any:
    """A copy of a document's containers, as mongomock-ng's reads return them (every
    mapping a new dict, every list a new list); other values are immutable and shared."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _ATOMS else clone(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _ATOMS else clone(v) for v in value]
    if isinstance(value, Mapping):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def stored(coll: Any, key: Any) -> dict[str, Any] | None:
    """The stored document with ``_id`` ``key`` itself (not a copy: never change it).

    These three helpers skip mongomock-ng's reader/writer lock: every command
    runs under the engine's lock, the only way to the store.
    """
    store = coll._store
    store._remove_expired_documents()
    return store._documents.get(key)


def store_doc(coll: Any, doc: dict[str, Any]) -> None:
    """Store ``doc`` in place of the document with its ``_id`` (keeping its natural order)."""
    coll._store._documents[doc["_id"]] = doc


def pop_doc(coll: Any, key: Any) -> dict[str, Any] | None:
    """Remove the document with ``_id`` ``key`` and return it (it is no longer stored: the caller owns it)."""
    store = coll._store
    store._remove_expired_documents()
    return store._documents.pop(key, None)


# -- arithmetic update operators ---------------------------------------------------

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_RANKS = {"int": 0, "long": 1, "double": 2, "decimal": 3}


def _num_kind(value: Any) -> str | None:
    """MongoDB's numeric type of a value, or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if INT32[0] <= value <= INT32[1] else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal128):
        return "decimal"
    return None


def _arith(op: str, current: Any, operand: Any) -> Any:
    """``current <op> operand`` with MongoDB's type promotion (op is $inc or $mul)."""
    name = op[1:]
    right = _num_kind(operand)
    if right is None:
        raise mongomock_ng.WriteError(f"Cannot {'increment' if op == '$inc' else 'multiply'} with non-numeric argument: {{{name}: {operand!r}}}", code=14)
    left = _num_kind(current)
    if left is None:
        raise mongomock_ng.WriteError(f"Cannot apply {op} to a value of non-numeric type. {{_id: ...}} has the field of non-numeric type {type(current).__name__}", code=14)
    kind = max(left, right, key=_RANKS.__getitem__)
    if kind == "decimal":
        ctx = create_decimal128_context()
        a, b = (v.to_decimal() if isinstance(v, Decimal128) else decimal.Decimal(v) for v in (current, operand))
        with decimal.localcontext(ctx) as c:
            return Decimal128(c.add(a, b) if op == "$inc" else c.multiply(a, b))
    if kind == "double":
        return float(current) + float(operand) if op == "$inc" else float(current) * float(operand)
    result = int(current) + int(operand) if op == "$inc" else int(current) * int(operand)
    if kind == "int" and INT32[0] <= result <= INT32[1]:
        return result
    if not INT64[0] <= result <= INT64[1]:
        raise mongomock_ng.WriteError(f"Failed to apply {op} operations to current value ({current!r}) for document", code=2)
    return Int64(result)


def _zero_like(operand: Any) -> Any:
    kind = _num_kind(operand)
    return {"int": 0, "long": Int64(0), "double": 0.0, "decimal": Decimal128("0")}.get(kind or "int", 0)


def _arith_updater(op: str) -> Callable[..., None]:
    """A mongomock-ng updater for ``$inc`` or ``$mul`` (a missing field starts at 0)."""

    def update(doc: Any, field_name: str, value: Any, codec_options: Any = None) -> None:
        if isinstance(doc, MutableMapping):
            if field_name in doc:
                doc[field_name] = _arith(op, doc[field_name], value)
            else:
                _arith(op, 0, value)  # type-check the operand
                doc[field_name] = value if op == "$inc" else _zero_like(value)
        elif isinstance(doc, list):
            index = int(field_name)
            if index < 0:
                raise mongomock_ng.WriteError("Negative index provided", code=2)
            if index < len(doc):
                doc[index] = _arith(op, doc[index], value)
            else:
                _arith(op, 0, value)
                doc.extend([None] * (index + 1 - len(doc)))
                doc[index] = value if op == "$inc" else _zero_like(value)

    return update


mongomock_ng.collection._updaters["$inc"] = _arith_updater("$inc")
mongomock_ng.collection._updaters["$mul"] = _arith_updater("$mul")

"""Derive a change event's ``updateDescription`` from before/after images.

MongoDB (5.0+) logs an update as a delta between the old and new document and
builds ``updateDescription`` from it: ``updatedFields`` maps dotted paths to
their new absolute values, ``removedFields`` lists dotted paths that are gone,
and ``truncatedArrays`` lists arrays that were shortened with their new size.
Applying the three to the old document gives the new one; that is the only
guarantee, and the property tests check it.  Values are compared as BSON bytes,
so ``1`` and ``1.0`` differ, as they do to MongoDB.

Setting a missing field appends it, so a delta keeps field order only when
the fields both images share are in the same order and every new field comes
after them.  When no unambiguous dotted-path delta exists (top-level fields
reordered or a new one inserted before an old one, or a changed path runs
through a key holding ``.``, starting with ``$``, empty, or made only of
digits, which MongoDB would flag with ``disambiguatedPaths``),
:func:`update_description` returns ``None`` and the caller logs a full
replacement instead; below the top level such a sub-document is set whole.
"""

from __future__ import annotations

import struct
from typing import Any

import bson
from bson.int64 import Int64
from bson.objectid import ObjectId

from walkit.sandbox.wire import CODEC

#: Types whose values are equal exactly when their BSON encodings are (a float is not: -0.0 == 0.0).
_PLAIN = frozenset({str, int, bool, type(None), Int64, ObjectId})
_DOUBLE = struct.Struct("<d")


def _same(a: Any, b: Any) -> bool:
    kind = type(a)
    if kind is not type(b):
        return False
    if kind in _PLAIN:
        return bool(a == b)
    if kind is float:
        return _DOUBLE.pack(a) == _DOUBLE.pack(b)
    return bson.encode({"v": a}, codec_options=CODEC) == bson.encode({"v": b}, codec_options=CODEC)


class _AmbiguousError(Exception):
    pass


def update_description(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """The ``updateDescription`` that turns ``before`` into ``after`` (or None)."""
    updated: dict[str, Any] = {}
    removed: list[str] = []
    truncated: list[dict[str, Any]] = []
    if not _order_kept(before, after):
        return None
    try:
        _diff_doc("", before, after, updated, removed, truncated)
    except _AmbiguousError:
        return None
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated}


def _order_kept(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """True when removing and appending fields turns ``before``'s order into ``after``'s."""
    if [k for k in before if k in after] != [k for k in after if k in before]:
        return False
    added = False
    for key in after:
        if key not in before:
            added = True
        elif added:
            return False
    return True


def _check_key(key: str, in_subdoc: bool) -> None:
    if not key or "." in key or key.startswith("$") or (in_subdoc and key.isdigit()):
        raise _AmbiguousError(key)


def _diff_doc(
    prefix: str,
    before: dict[str, Any],
    after: dict[str, Any],
    updated: dict[str, Any],
    removed: list[str],
    truncated: list[dict[str, Any]],
) -> None:
    if prefix and not _order_kept(before, after):
        # Field order changed: only a whole-value set reproduces it.
        updated[prefix[:-1]] = after
        return
    for key in before:
        if key not in after:
            _check_key(key, bool(prefix))
            removed.append(prefix + key)
    for key, new in after.items():
        path = prefix + key
        if key not in before:
            _check_key(key, bool(prefix))
            updated[path] = new
        elif not _same(before[key], new):
            _check_key(key, bool(prefix))
            _diff_value(path, before[key], new, updated, removed, truncated)


def _diff_value(
    path: str,
    old: Any,
    new: Any,
    updated: dict[str, Any],
    removed: list[str],
    truncated: list[dict[str, Any]],
) -> None:
    if isinstance(old, dict) and isinstance(new, dict) and type(old) is type(new):
        if _same(old, new):
            return
        if not old or not new:
            updated[path] = new
            return
        _diff_doc(path + ".", old, new, updated, removed, truncated)
    elif isinstance(old, list) and isinstance(new, list):
        if _same(old, new):
            return
        if len(new) < len(old):
            truncated.append({"field": path, "newSize": len(new)})
        for i, item in enumerate(new):
            item_path = f"{path}.{i}"
            if i >= len(old):
                updated[item_path] = item
            else:
                _diff_value(item_path, old[i], item, updated, removed, truncated)
    elif not _same(old, new):
        updated[path] = new

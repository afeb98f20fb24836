"""Operator updates made plain for mongomock-ng, checked as MongoDB checks them.

:func:`update_by_id` applies one operator (or pipeline) update to one
document: each positional ``$`` becomes the index the query matched, new
fields are appended in name order (MongoDB 5.0+), ``$unset`` of an array
element sets it to null, ``$set`` past an array's end pads with nulls, and a
path through a scalar (or through an array by name) is refused with code 28.
What mongomock-ng still cannot apply leaves the document unchanged and
answers code 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import mongomock_ng

from walkit.sandbox import storage
from walkit.sandbox.errors import CommandError


def _array_at(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


def _element_tests(query: dict[str, Any], array: str) -> list[Callable[[Any], bool]]:
    """Predicates on one element of ``array`` drawn from the query's conditions on it."""
    from mongomock_ng.filtering import filter_applies

    tests: list[Callable[[Any], bool]] = []
    for key, cond in query.items():
        if key == "$and" and isinstance(cond, list):
            for clause in cond:
                tests += _element_tests(clause, array) if isinstance(clause, dict) else []
        elif key == array:
            inner = cond.get("$elemMatch") if isinstance(cond, dict) else None
            if isinstance(inner, dict) and inner and not all(k.startswith("$") for k in inner):
                tests.append(lambda e, q=inner: isinstance(e, dict) and filter_applies(q, e))  # type: ignore[misc]
            else:
                target = inner if isinstance(inner, dict) else cond
                tests.append(lambda e, q=target: filter_applies({"v": q}, {"v": e}))  # type: ignore[misc]
        elif key.startswith(array + "."):
            rest = key[len(array) + 1 :]
            tests.append(lambda e, q={rest: cond}: isinstance(e, dict) and filter_applies(q, e))  # type: ignore[misc]
    return tests


UPDATE_OPERATORS = {
    "$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$setOnInsert", "$currentDate",
    "$push", "$pull", "$pullAll", "$addToSet", "$pop", "$bit",
}
#: Operators that create the field they name when it is missing.
CREATING = {"$set", "$setOnInsert", "$inc", "$mul", "$min", "$max", "$currentDate", "$push", "$addToSet"}


def _check_path(op: str, path: str, doc: dict[str, Any]) -> None:
    """Refuse (code 28) a path that runs through a scalar, or through an array by name."""
    parent: Any = doc
    parts = path.split(".")
    for depth, part in enumerate(parts[:-1]):
        if isinstance(parent, dict):
            if part not in parent:
                return
            child = parent[part]
        elif isinstance(parent, list) and part.isdigit():
            if int(part) >= len(parent):
                return
            child = parent[int(part)]
        else:
            where = ".".join(parts[:depth]) or "the document"
            raise CommandError(28, f"Cannot create field '{part}' in element {{{where}: {parent!r}}} ({op} {path})")
        parent = child
    if not isinstance(parent, (dict, list)) or (isinstance(parent, list) and not parts[-1].isdigit()):
        raise CommandError(28, f"Cannot create field '{parts[-1]}' in element {{{'.'.join(parts[:-1])}: {parent!r}}} ({op} {path})")


def _set_past_array_end(path: str, value: Any, doc: dict[str, Any]) -> tuple[str, Any]:
    """``l.5.x: v`` on a shorter array ``l`` becomes ``l.5: {x: v}`` (MongoDB pads with null)."""
    parts = path.split(".")
    parent: Any = doc
    for depth, part in enumerate(parts[:-1]):
        if isinstance(parent, list) and part.isdigit() and int(part) >= len(parent):
            for name in reversed(parts[depth + 1 :]):
                value = {name: value}
            return ".".join(parts[: depth + 1]), value
        if isinstance(parent, dict) and part in parent:
            parent = parent[part]
        elif isinstance(parent, list) and part.isdigit():
            parent = parent[int(part)]
        else:
            break
    return path, value


def _resolve_positional(update: Any, query: dict[str, Any], doc: dict[str, Any]) -> Any:
    """The update made plain for mongomock-ng, checked against ``doc``.

    Each positional ``$`` becomes the index the query matched; fields are
    applied in lexicographic order (new fields are appended in that order,
    as MongoDB 5.0+ does); ``$unset`` of an array element sets it to null;
    a path through a scalar is refused with code 28.
    """
    if not isinstance(update, dict):
        return update
    out: dict[str, Any] = {}
    for op, fields in update.items():
        if op not in UPDATE_OPERATORS:
            raise CommandError(9, f"Unknown modifier: {op}. Expected a valid update modifier or pipeline-style update specified as an array")
        if not isinstance(fields, dict):
            raise CommandError(9, f"Modifiers operate on fields but we found type {type(fields).__name__} instead.")
        resolved: dict[str, Any] = {}
        for path, value in sorted(fields.items()):
            parts = path.split(".")
            if "$" in parts:
                at = parts.index("$")
                array = ".".join(parts[:at])
                items = _array_at(doc, array)
                tests = _element_tests(query, array)
                found = [i for i, e in enumerate(items) if all(t(e) for t in tests)] if isinstance(items, list) and tests else []
                if not found:
                    raise CommandError(2, "The positional operator did not find the match needed from the query.")
                parts[at] = str(found[0])
            path = ".".join(parts)
            if op in CREATING and not any(p.startswith("$[") for p in parts):
                _check_path(op, path, doc)
            if op == "$unset" and parts[-1].isdigit() and isinstance(_array_at(doc, ".".join(parts[:-1])), list):
                out.setdefault("$set", {})[path] = None
                continue
            if op in ("$set", "$setOnInsert"):
                path, value = _set_past_array_end(path, value, doc)
            resolved[path] = value
        out.setdefault(op, {}).update(resolved)
    return {op: fields for op, fields in out.items() if fields}


def _apply_to_copy(coll: Any, before: dict[str, Any], update: dict[str, Any], array_filters: Any) -> dict[str, Any]:
    """mongomock-ng's ``update_one({_id: ...}, update)`` of the stored document ``before``, for a
    plain operator update, run on a copy that then takes its place (the store is untouched on
    error); returns the copy, now stored."""
    from mongomock_ng import helpers
    from mongomock_ng.collection import validate_against_validator, validate_ok_for_update

    validate_ok_for_update(update)
    spec = helpers.patch_datetime_awareness_in_document({"_id": before["_id"]})
    document = helpers.patch_datetime_awareness_in_document(update)
    after = storage.clone(before)
    coll._current_array_filters = array_filters or []
    try:
        coll._apply_update_document(after, spec, document, False)
    finally:
        coll._current_array_filters = None
    if after != before:  # mongomock-ng's own checks, in its order
        if before.get("_id") != after.get("_id"):
            raise mongomock_ng.WriteError(
                f"After applying the update, the (immutable) field '_id' was found to have been altered to _id: {after.get('_id')}"
            )
        options = coll.options()
        validate = True
        if options.get("validationLevel", "strict") == "moderate":
            try:
                validate_against_validator(before, options)
            except mongomock_ng.WriteError:
                validate = False
        if validate:
            validate_against_validator(after, options)
        coll._ensure_uniques(after)
    storage.store_doc(coll, after)
    return after


def update_by_id(coll: Any, key: Any, query: dict[str, Any], pre: dict[str, Any], update: Any, array_filters: Any) -> None:
    """Apply an operator (or pipeline) update to the one document ``key``."""
    try:
        coll.update_one({"_id": key}, _resolve_positional(update, query, pre), array_filters=array_filters)
    except mongomock_ng.OperationFailure as exc:
        coll.replace_one({"_id": key}, pre)  # a failed update changes nothing
        _raise_as_command_error(exc)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        coll.replace_one({"_id": key}, pre)  # mongomock-ng could not apply it: leave the document as it was
        _raise_as_command_error(exc)


def apply_by_id(coll: Any, key: Any, query: dict[str, Any], update: dict[str, Any], array_filters: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """:func:`update_by_id` for an operator update (not a pipeline), without mongomock-ng's
    cursors: (before, after), the document as it was (no longer stored, so the caller owns
    it) and as it is now (stored: copy it before keeping it); None when there is none."""
    before = storage.stored(coll, key)
    if before is None:
        return None
    try:
        return before, _apply_to_copy(coll, before, _resolve_positional(update, query, before), array_filters)
    except (mongomock_ng.OperationFailure, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        _raise_as_command_error(exc)


def _raise_as_command_error(exc: Exception) -> NoReturn:
    """Re-raise what mongomock-ng raised for an update as MongoDB says it."""
    if isinstance(exc, mongomock_ng.OperationFailure):
        if "(immutable) field '_id'" in str(exc):
            raise CommandError(66, str(exc)) from None
        raise exc
    if str(exc).startswith("Invalid modifier specified"):
        raise CommandError(9, f"Unknown modifier: {str(exc).rsplit(' ', 1)[-1]}") from None
    raise CommandError(2, f"the walkit sandbox cannot apply this update ({type(exc).__name__}: {exc}); MongoDB may accept it") from None

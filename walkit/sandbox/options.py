"""Collection options and index specs as MongoDB 7.0 validates, normalizes and reports them.

:func:`collection_options` turns a ``create`` command into the options
``listCollections`` reports (and a ``create`` change event carries), in
MongoDB's order: ``capped``, ``size`` (rounded up to a multiple of 256, as
MongoDB does), ``max``, ``autoIndexId``, ``temp``,
``changeStreamPreAndPostImages`` (only when enabled), ``storageEngine``,
``indexOptionDefaults``, ``validator`` (only when not empty),
``validationLevel``, ``validationAction``, ``collation`` (none for
``{locale: "simple"}``), ``clusteredIndex`` (completed to ``{v, key, name,
unique}``), ``expireAfterSeconds`` (a long; only on a clustered collection).
Unknown fields fail with 40415, as MongoDB's strict command parser does;
``capped`` without ``size`` with 72.  Views (``viewOn``/``pipeline``),
time-series collections (``timeseries``) and ``encryptedFields`` are refused
with 115: the sandbox has none.  A collation is kept as given (MongoDB would
complete it with the locale's defaults), and nothing of what is stored is
enforced except what mongomock-ng enforces itself (validators are not).

:func:`index_spec` turns one ``createIndexes`` spec into the spec
``listIndexes`` reports: ``v`` (2 unless given), ``key``, ``name``, then the
other fields as given; a text index gets MongoDB's form (``_fts``/``_ftsx``
key, ``weights``, ``default_language``, ``language_override``,
``textIndexVersion``) and a 2dsphere index its ``2dsphereIndexVersion``.
Unknown fields fail with 197, as in MongoDB.
"""

from __future__ import annotations

from typing import Any

from bson.int64 import Int64

from walkit.sandbox.errors import CommandError

ID_INDEX: dict[str, Any] = {"v": 2, "key": {"_id": 1}, "name": "_id_"}

#: Fields any command may carry (MongoDB's generic arguments), never options.
GENERIC_ARGS = frozenset({
    "lsid", "txnNumber", "autocommit", "startTransaction", "writeConcern", "readConcern", "comment", "apiVersion",
    "apiStrict", "apiDeprecationErrors", "maxTimeMS", "readPreference", "clientOperationKey", "mayBypassWriteBlocking",
})
#: The order MongoDB's ``CollectionOptions::toBSON`` writes options in.
OPTION_ORDER = (
    "capped", "size", "max", "autoIndexId", "temp", "changeStreamPreAndPostImages", "storageEngine", "indexOptionDefaults",
    "validator", "validationLevel", "validationAction", "collation", "clusteredIndex", "expireAfterSeconds",
)
CREATE_FIELDS = frozenset(OPTION_ORDER) | {"idIndex", "flags"}
UNSUPPORTED = {"viewOn": "views", "pipeline": "views", "timeseries": "time-series collections", "encryptedFields": "queryable encryption"}
VALIDATION_LEVELS = ("off", "strict", "moderate")
VALIDATION_ACTIONS = ("error", "warn")
INDEX_FIELDS = frozenset({
    "v", "key", "name", "ns", "background", "unique", "sparse", "partialFilterExpression", "expireAfterSeconds", "hidden",
    "collation", "weights", "default_language", "language_override", "textIndexVersion", "2dsphereIndexVersion", "bits",
    "min", "max", "bucketSize", "wildcardProjection", "storageEngine", "prepareUnique", "coarsestIndexedLevel",
    "finestIndexedLevel", "clustered",
})
NUMBER = (int, float, Int64)


def is_generic(field: str) -> bool:
    return field.startswith("$") or field in GENERIC_ARGS


def number(value: int) -> int | Int64:
    """A count as MongoDB's ``appendNumber`` writes it: an int when small, else a long."""
    return int(value) if -(1 << 30) < value < (1 << 30) else Int64(value)


def ordered(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` in MongoDB's order (unknown keys last, as they were)."""
    out = {k: options[k] for k in OPTION_ORDER if k in options}
    out.update((k, v) for k, v in options.items() if k not in out)
    return out


def _bad_type(cmd: str, field: str, value: Any, expected: str) -> CommandError:
    return CommandError(14, f"BSON field '{cmd}.{field}' is the wrong type '{type(value).__name__}', expected type '{expected}'")


def _enum(cmd: str, field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise _bad_type(cmd, field, value, "string")
    if value not in allowed:
        raise CommandError(2, f"Enumeration value '{value}' for field '{cmd}.{field}' is not a valid value.")
    return value


def _document(cmd: str, field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad_type(cmd, field, value, "object")
    return value


def capped_size(value: Any) -> int | Int64:
    """A capped collection's size as ``create`` stores it (rounded up to a multiple of 256)."""
    if not isinstance(value, NUMBER) or isinstance(value, bool):
        raise _bad_type("create", "size", value, "long")
    size = int(value)
    if size < 0:
        raise CommandError(2, "size has to be >= 0")
    if size > 1 << 50:
        raise CommandError(2, "size cannot exceed 1 PB")
    return number((size + 0xFF) & ~0xFF)


def capped_max(value: Any) -> int | Int64:
    if not isinstance(value, NUMBER) or isinstance(value, bool):
        raise _bad_type("create", "max", value, "long")
    docs = int(value)
    if docs >= 1 << 31:
        raise CommandError(2, "max in a capped collection has to be < 2^31 or not set")
    return number(0x7FFFFFFF if docs <= 0 else docs)


def pre_and_post_images(cmd: str, value: Any) -> dict[str, Any] | None:
    """The option as stored: ``{enabled: true}``, or None when disabled."""
    spec = _document(cmd, "changeStreamPreAndPostImages", value)
    unknown = set(spec) - {"enabled"}
    if unknown:
        raise CommandError(40415, f"BSON field '{cmd}.changeStreamPreAndPostImages.{sorted(unknown)[0]}' is an unknown field.")
    if "enabled" not in spec:
        raise CommandError(40414, f"BSON field '{cmd}.changeStreamPreAndPostImages.enabled' is missing but a required field")
    if not isinstance(spec["enabled"], bool):
        raise _bad_type(f"{cmd}.changeStreamPreAndPostImages", "enabled", spec["enabled"], "bool")
    return {"enabled": True} if spec["enabled"] else None


def expire_after(cmd: str, value: Any) -> Int64:
    if not isinstance(value, NUMBER) or isinstance(value, bool):
        raise _bad_type(cmd, "expireAfterSeconds", value, "long")
    if value < 0:
        raise CommandError(72, "TTL index 'expireAfterSeconds' option cannot be less than 0")
    return Int64(int(value))


def _clustered_index(value: Any) -> dict[str, Any]:
    if value is True:  # the legacy form
        value = {"key": {"_id": 1}, "unique": True}
    spec = _document("create", "clusteredIndex", value)
    unknown = set(spec) - {"key", "unique", "name", "v"}
    if unknown:
        raise CommandError(40415, f"BSON field 'create.clusteredIndex.{sorted(unknown)[0]}' is an unknown field.")
    if dict(spec.get("key") or {}) != {"_id": 1}:
        raise CommandError(2, "The clusteredIndex option is only supported for key: {_id: 1}")
    if spec.get("unique") is not True:
        raise CommandError(2, "The clusteredIndex option requires 'unique: true'")
    return {"v": spec.get("v", 2), "key": {"_id": 1}, "name": spec.get("name", "_id_"), "unique": True}


def collection_options(body: dict[str, Any], cmd: str) -> dict[str, Any]:
    """The options a ``create`` command body gives its collection (see the module docstring)."""
    out: dict[str, Any] = {}
    fields = {k: v for k, v in body.items() if k != cmd and not is_generic(k)}
    for name in fields:
        if name in UNSUPPORTED:
            raise CommandError(115, f"not supported by the walkit sandbox: {UNSUPPORTED[name]} ({name!r})")
        if name not in CREATE_FIELDS:
            raise CommandError(40415, f"BSON field 'create.{name}' is an unknown field.")
    capped = fields.get("capped", False)
    if not isinstance(capped, bool):
        raise _bad_type("create", "capped", capped, "bool")
    if capped:
        size = capped_size(fields["size"]) if "size" in fields else 0
        if not size:
            raise CommandError(72, "the 'size' field is required when 'capped' is true")
        out.update(capped=True, size=size)
        if "max" in fields:
            out["max"] = capped_max(fields["max"])
    for name in ("autoIndexId", "temp"):
        if name in fields:
            if not isinstance(fields[name], bool):
                raise _bad_type("create", name, fields[name], "bool")
            if name == "autoIndexId" or fields[name]:
                out[name] = fields[name]
    if "changeStreamPreAndPostImages" in fields:
        images = pre_and_post_images("create", fields["changeStreamPreAndPostImages"])
        if images is not None:
            out["changeStreamPreAndPostImages"] = images
    for name in ("storageEngine", "indexOptionDefaults"):
        if name in fields:
            out[name] = _document("create", name, fields[name])
    if "validator" in fields and _document("create", "validator", fields["validator"]):
        out["validator"] = fields["validator"]
    if "validationLevel" in fields:
        out["validationLevel"] = _enum("create", "validationLevel", fields["validationLevel"], VALIDATION_LEVELS)
    if "validationAction" in fields:
        out["validationAction"] = _enum("create", "validationAction", fields["validationAction"], VALIDATION_ACTIONS)
    if "collation" in fields:
        collation = _document("create", "collation", fields["collation"])
        if not isinstance(collation.get("locale"), str):
            raise CommandError(40414, "BSON field 'locale' is missing but a required field")
        if collation["locale"] != "simple":
            out["collation"] = collation
    if "clusteredIndex" in fields:
        out["clusteredIndex"] = _clustered_index(fields["clusteredIndex"])
        if capped:
            raise CommandError(72, "Clustered collections cannot be capped")
    if "expireAfterSeconds" in fields:
        if "clusteredIndex" not in out:
            raise CommandError(72, "'expireAfterSeconds' requires clustering to be enabled")
        out["expireAfterSeconds"] = expire_after("create", fields["expireAfterSeconds"])
    if "idIndex" in fields:
        spec = _document("create", "idIndex", fields["idIndex"])
        if dict(spec.get("key") or {}) != {"_id": 1}:
            raise CommandError(2, "The field 'key' for an _id index must be {_id: 1}")
    return out


def id_index(options: dict[str, Any]) -> dict[str, Any] | None:
    """The collection's ``idIndex`` (None for a clustered collection, which has none)."""
    return None if "clusteredIndex" in options else dict(ID_INDEX)


def first_index(options: dict[str, Any]) -> dict[str, Any]:
    """What ``listIndexes`` lists first: the ``_id`` index, or the clustered index."""
    clustered = options.get("clusteredIndex")
    return {**clustered, "clustered": True} if clustered else dict(ID_INDEX)


# -- index specs ---------------------------------------------------------------------------------


def index_spec(spec: Any) -> dict[str, Any]:
    """One ``createIndexes`` spec as MongoDB stores and lists it (see the module docstring)."""
    if not isinstance(spec, dict):
        raise CommandError(14, f"each index spec must be a document, got {spec!r}")
    key = spec.get("key")
    if not isinstance(key, dict) or not key:
        raise CommandError(9, f"The 'key' field is a required property of an index specification: {spec!r}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise CommandError(9, f"The 'name' field is a required property of an index specification: {spec!r}")
    for field in spec:
        if field not in INDEX_FIELDS:
            raise CommandError(197, f"The field '{field}' is not valid for an index specification. Specification: {spec!r}")
    for field in ("unique", "sparse", "hidden"):
        if field in spec and not isinstance(spec[field], bool | int | float):
            raise _bad_type("createIndexes.indexes", field, spec[field], "bool")
    if "expireAfterSeconds" in spec:
        value = spec["expireAfterSeconds"]
        if not isinstance(value, NUMBER) or isinstance(value, bool) or value < 0:
            raise CommandError(67, f"TTL index 'expireAfterSeconds' option must be a non-negative number, got {value!r}")
    if spec.get("hidden") and name == "_id_":
        raise CommandError(67, "can't hide _id index")
    out: dict[str, Any] = {"v": spec.get("v", 2), "key": key, "name": name}
    out.update((k, v) for k, v in spec.items() if k not in ("v", "key", "name", "ns"))
    if "text" in key.values():
        out = _text_spec(out)
    elif "2dsphere" in key.values() and "2dsphereIndexVersion" not in out:
        out["2dsphereIndexVersion"] = 3
    return out


def _text_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A text index in MongoDB's stored form: its text fields become ``_fts``/``_ftsx`` and ``weights``."""
    key: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    for field, kind in spec["key"].items():
        if field in ("_fts", "_ftsx"):  # already in the stored form (a restore gives it back so)
            key.update(_fts="text", _ftsx=1)
        elif kind == "text":
            if "_fts" not in key:
                key.update(_fts="text", _ftsx=1)
            weights[field] = 1
        else:
            key[field] = kind
    weights.update(spec.get("weights") or {})
    out = {k: v for k, v in spec.items() if k not in ("weights", "default_language", "language_override", "textIndexVersion")}
    out["key"] = key
    out["weights"] = weights
    out["default_language"] = spec.get("default_language", "english")
    out["language_override"] = spec.get("language_override", "language")
    out["textIndexVersion"] = spec.get("textIndexVersion", 3)
    return out


def same_key(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two key patterns are one (same fields, same order, same kinds)."""
    return list(dict(a).items()) == list(dict(b).items())

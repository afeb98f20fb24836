"""Namespace commands of the sandbox: databases, collections and indexes.

Every change of a collection or of its metadata is logged to the oplog as
MongoDB logs it, so change streams see it:

- ``create`` (explicit, or implicit: a first insert or upsert, a
  createIndexes) as one ``create`` entry whose operationDescription holds the
  options ``listCollections`` reports (see :mod:`.options`) and the
  ``idIndex`` (none on a clustered collection);
- ``createIndexes`` as one entry per index built on an empty collection and
  one entry listing every index built on a non-empty one (MongoDB's
  ``createIndexes`` and ``commitIndexBuild`` oplog entries), each spec as
  ``listIndexes`` reports it; none when every index already existed;
- ``dropIndexes`` as one entry per dropped index, with its full spec;
- ``collMod`` as one ``modify`` entry: what changed (an index as ``{name,
  expireAfterSeconds | hidden | prepareUnique | unique}``) and
  ``stateBeforeChange`` (``collectionOptions`` with the ``uuid``, and
  ``indexOptions`` when an index changed);
- ``drop``, ``renameCollection`` (operationDescription ``{to, dropTarget}``,
  ``dropTarget`` being the replaced collection's UUID) and ``dropDatabase``
  (one ``drop`` per collection, then ``dropDatabase``, as MongoDB does).

Only streams opened with ``showExpandedEvents`` show the first four kinds
(:data:`.oplog.EXPANDED_OPS`).  ``create``, and ``createIndexes`` on a
collection the same transaction creates, run inside a transaction (their
entries commit with it, an abort undoes them); other DDL there fails with
263.

collMod changes ``validator``, ``validationLevel``, ``validationAction``,
``changeStreamPreAndPostImages``, ``expireAfterSeconds`` (a clustered
collection's; ``"off"`` removes it), ``cappedSize``/``cappedMax`` (stored as
``size``/``max``) and one index's ``expireAfterSeconds``, ``hidden``,
``prepareUnique`` or ``unique``; an unknown field fails with 40415, as
MongoDB's strict parser does, and a misplaced one with 72.

Not reproduced: index specs are stored and listed as given (normalized by
:mod:`.options`), but mongomock-ng builds the physical index with ``unique``,
``sparse``, ``expireAfterSeconds`` and ``partialFilterExpression`` only (so
only those are enforced, and a hidden index is still used); an index it
cannot build at all is stored and listed without being built.  A
cross-database rename copies the documents and indexes into a collection
with a new UUID and is one ``rename`` event, without MongoDB's temporary
collection (its create, inserts and rename) and the source's ``drop``.
"""

from __future__ import annotations

from typing import Any

import mongomock_ng
from bson.int64 import Int64

from walkit.sandbox.crud import cursor_reply
from walkit.sandbox.engine import SYSTEM_DBS, CollInfo, Ctx, Engine, command
from walkit.sandbox.errors import CommandError
from walkit.sandbox.options import (
    VALIDATION_ACTIONS,
    VALIDATION_LEVELS,
    collection_options,
    expire_after,
    first_index,
    id_index,
    index_spec,
    is_generic,
    number,
    ordered,
    pre_and_post_images,
    same_key,
)

#: The index options mongomock-ng builds (and so enforces).
BUILT_OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")


def _check_name(name: str) -> None:
    if not name or "$" in name or "\x00" in name or name.startswith("system."):
        raise CommandError(73, f"Invalid collection name: {name!r}")


def _require(eng: Engine, db: str, name: str) -> Any:
    if not eng.exists(db, name):
        raise CommandError(26, f"ns does not exist: {db}.{name}")
    return eng.coll(db, name)


def _fields(ctx: Ctx) -> dict[str, Any]:
    """The command's own fields (not its name, nor the generic arguments every command may carry)."""
    return {k: v for k, v in ctx.body.items() if k != ctx.name and not is_generic(k)}


# -- collections --------------------------------------------------------------------------


@command("create")
def _create(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    _check_name(name)
    options = collection_options(ctx.body, ctx.name)
    if eng.exists(ctx.db, name):
        raise CommandError(48, f"Collection {ctx.db}.{name} already exists.")
    eng.create_collection(ctx, ctx.db, name, options)
    return {}


@command("drop")
def _drop(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    if not eng.exists(ctx.db, name):
        return {"ns": f"{ctx.db}.{name}", "nIndexesWas": 0}
    return _drop_collection(eng, ctx, name)


def _drop_collection(eng: Engine, ctx: Ctx, name: str) -> dict[str, Any]:
    coll = eng.coll(ctx.db, name)
    n_indexes = 1 + len(eng.info(ctx.db, name).indexes)
    entry = eng.new_entry("drop", ctx.db, name)
    coll.drop()
    eng.colls.pop((ctx.db, name), None)
    eng.record(ctx, entry)
    return {"ns": f"{ctx.db}.{name}", "nIndexesWas": n_indexes}


@command("dropDatabase")
def _drop_database(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    names = eng.client[ctx.db].list_collection_names()
    if not names:
        return {}
    for name in names:
        _drop_collection(eng, ctx, name)
    eng.client.drop_database(ctx.db)
    eng.record(ctx, eng.new_entry("dropDatabase", ctx.db))
    return {"dropped": ctx.db}


def _split_ns(ns: Any, field: str) -> tuple[str, str]:
    if not isinstance(ns, str) or "." not in ns:
        raise CommandError(73, f"{field} must be a full namespace 'db.collection', got {ns!r}")
    db, _, coll = ns.partition(".")
    _check_name(coll)
    return db, coll


@command("renameCollection")
def _rename(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    if ctx.db != "admin":
        raise CommandError(13, "renameCollection may only be run against the admin database.")
    src_db, src = _split_ns(ctx.body["renameCollection"], "renameCollection")
    dst_db, dst = _split_ns(ctx.arg("to"), "to")
    source = _require(eng, src_db, src)
    if (src_db, src) == (dst_db, dst):
        raise CommandError(20, "Can't rename a collection to itself")
    desc: dict[str, Any] = {"to": {"db": dst_db, "coll": dst}}
    if eng.exists(dst_db, dst):
        if not ctx.arg("dropTarget"):
            raise CommandError(48, f"target namespace exists: {dst_db}.{dst}")
        desc["dropTarget"] = eng.info(dst_db, dst).uuid
        eng.coll(dst_db, dst).drop()
        eng.colls.pop((dst_db, dst), None)
    entry = eng.new_entry("rename", src_db, src, to=(dst_db, dst), desc=desc)
    info = eng.colls.pop((src_db, src), None) or CollInfo()
    if src_db == dst_db:
        eng.client[src_db].rename_collection(src, dst)
    else:
        target = eng.coll(dst_db, dst)
        eng.client[dst_db].create_collection(dst)
        for doc in source.find():
            target.insert_one(doc)
        for spec in info.indexes.values():
            _build(target, spec)
        source.drop()
        info = CollInfo(options=info.options, indexes=info.indexes)  # a copy: a new UUID
    eng.colls[(dst_db, dst)] = info
    eng.record(ctx, entry)
    return {}


# -- indexes ------------------------------------------------------------------------------


def _build(coll: Any, spec: dict[str, Any], key: dict[str, Any] | None = None) -> bool:
    """Build ``spec``'s physical index in mongomock-ng (on ``key``, the key as given, when
    ``spec`` holds MongoDB's stored form of it); False when it cannot (the spec is then only
    stored).  A unique index over duplicates raises DuplicateKeyError, as MongoDB fails with 11000."""
    key = key or spec["key"]
    try:
        coll.create_index(list(key.items()), name=spec["name"], **{k: spec[k] for k in BUILT_OPTIONS if k in spec})
    except mongomock_ng.DuplicateKeyError:
        raise
    except Exception:  # an index kind or option mongomock-ng does not know
        return False
    return True


def _existing(info: CollInfo, spec: dict[str, Any]) -> bool:
    """True when ``spec`` already exists (nothing to build); raise when it conflicts with an index."""
    name, key = spec["name"], spec["key"]
    first = first_index(info.options)
    current = {first["name"]: first, **info.indexes}
    found = current.get(name)
    if found is not None:
        if not same_key(found["key"], key):
            raise CommandError(86, f"An existing index has the same name as the requested index. Requested index: {spec}, existing index: {found}")
        if _options(found) != _options(spec) and name != first["name"]:
            raise CommandError(85, f"An existing index has the same name as the requested index but different options. Requested index: {spec}, existing index: {found}")
        return True
    for other in current.values():
        if same_key(other["key"], key) and all(other.get(k) == spec.get(k) for k in ("collation", "partialFilterExpression")):
            raise CommandError(85, f"Index already exists with a different name: {other['name']}")
    return False


def _options(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in ("v", "key", "name", "background")}


@command("createIndexes")
def _create_indexes(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    _check_name(name)
    requested = ctx.arg("indexes")
    if not isinstance(requested, list) or not requested:
        raise CommandError(2, "createIndexes needs a non-empty 'indexes' array")
    specs = [index_spec(spec) for spec in requested]
    created = not eng.exists(ctx.db, name)
    if ctx.txn is not None and not created and (ctx.db, name) not in ctx.txn.created:
        raise CommandError(263, f"Cannot create new indexes on existing collection {ctx.db}.{name} in a multi-document transaction.")
    info = eng.create_collection(ctx, ctx.db, name) if created else eng.info(ctx.db, name)
    coll = eng.coll(ctx.db, name)
    before = 1 + len(info.indexes)
    new: list[dict[str, Any]] = []
    for spec in specs:
        if not _existing(info, spec) and all(s["name"] != spec["name"] for s in new):
            new.append(spec)
    built: list[str] = []
    try:  # all or nothing, as MongoDB builds one command's indexes
        for raw, spec in zip(requested, specs, strict=True):
            if spec in new and _build(coll, spec, raw["key"]):
                built.append(spec["name"])
    except mongomock_ng.DuplicateKeyError as exc:
        for index_name in built:
            coll.drop_index(index_name)
        raise CommandError(11000, f"Index build failed: {exc}") from None
    empty = coll.estimated_document_count() == 0
    for spec in new:
        info.indexes[spec["name"]] = spec
    if new:
        batches = [[spec] for spec in new] if empty else [new]
        for batch in batches:
            eng.record(ctx, eng.new_entry("createIndexes", ctx.db, name, desc={"indexes": [dict(s) for s in batch]}))
    reply: dict[str, Any] = {"numIndexesBefore": before, "numIndexesAfter": before + len(new), "createdCollectionAutomatically": created}
    if not new:
        reply["note"] = "all indexes already exist"
    return reply


@command("dropIndexes", "deleteIndexes")
def _drop_indexes(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    coll = _require(eng, ctx.db, name)
    info = eng.info(ctx.db, name)
    before = 1 + len(info.indexes)
    first = first_index(info.options)["name"]
    which = ctx.arg("index")
    if which == "*":
        names = list(info.indexes)
    elif isinstance(which, str):
        names = [which]
    elif isinstance(which, list):
        names = [str(n) for n in which]
    elif isinstance(which, dict):
        if same_key(which, {"_id": 1}):
            names = [first]
        else:
            names = [n for n, spec in info.indexes.items() if same_key(spec["key"], which)]
        if not names:
            raise CommandError(27, f"can't find index with key: {which}")
    else:
        raise CommandError(14, "dropIndexes 'index' must be a name, '*', a key pattern or a list of names")
    for index_name in names:  # all checked before any is dropped
        if index_name == first:
            raise CommandError(72, "cannot drop _id index")
        if index_name not in info.indexes:
            raise CommandError(27, f"index not found with name [{index_name}]")
    for index_name in names:
        spec = info.indexes.pop(index_name)
        if index_name in coll.index_information():
            coll.drop_index(index_name)
        eng.record(ctx, eng.new_entry("dropIndexes", ctx.db, name, desc={"indexes": [dict(spec)]}))
    reply: dict[str, Any] = {"nIndexesWas": before}
    if which == "*":
        reply["msg"] = "non-_id indexes dropped for collection"
    return reply


@command("listIndexes")
def _list_indexes(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    _require(eng, ctx.db, name)
    info = eng.info(ctx.db, name)
    specs = [first_index(info.options)] + [dict(s) for s in info.indexes.values()]
    batch = (ctx.arg("cursor") or {}).get("batchSize")
    return cursor_reply(eng, f"{ctx.db}.$cmd.listIndexes.{name}", iter(specs), batch)


# -- collMod --------------------------------------------------------------------------------

COLLMOD_FIELDS = frozenset({
    "validator", "validationLevel", "validationAction", "changeStreamPreAndPostImages", "expireAfterSeconds", "index",
    "cappedSize", "cappedMax", "dryRun", "viewOn", "pipeline", "timeseries",
})
INDEX_MOD_FIELDS = ("name", "keyPattern", "expireAfterSeconds", "hidden", "prepareUnique", "unique")


@command("collMod")
def _coll_mod(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    fields = _fields(ctx)
    for field in fields:
        if field not in COLLMOD_FIELDS:
            raise CommandError(40415, f"BSON field 'collMod.{field}' is an unknown field.")
    coll = _require(eng, ctx.db, name)
    info = eng.info(ctx.db, name)
    options = dict(info.options)
    desc: dict[str, Any] = {}
    reply: dict[str, Any] = {}
    index_change: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None = None
    for field, value in fields.items():
        if field == "dryRun":
            continue
        desc[field] = value
        if field in ("viewOn", "pipeline"):
            raise CommandError(72, f"'{field}' is only valid for a view: {ctx.db}.{name} is a collection")
        if field == "timeseries":
            raise CommandError(72, f"'timeseries' is only valid for a time-series collection: {ctx.db}.{name} is a collection")
        if field == "validator":
            if not isinstance(value, dict):
                raise CommandError(14, "BSON field 'collMod.validator' is the wrong type, expected type 'object'")
            _set(options, "validator", value or None)
        elif field == "validationLevel":
            _set(options, field, _enum(field, value, VALIDATION_LEVELS))
        elif field == "validationAction":
            _set(options, field, _enum(field, value, VALIDATION_ACTIONS))
        elif field == "changeStreamPreAndPostImages":
            _set(options, field, pre_and_post_images("collMod", value))
        elif field == "expireAfterSeconds":
            if "clusteredIndex" not in options:
                raise CommandError(72, "'expireAfterSeconds' option is only supported on clustered collections and time-series collections")
            _set(options, field, None if value == "off" else expire_after("collMod", value))
        elif field in ("cappedSize", "cappedMax"):
            if not options.get("capped"):
                raise CommandError(72, f"Collection '{ctx.db}.{name}' is not capped")
            _set(options, *_capped_change(field, value))
        else:  # index
            index_change = _index_change(info, value)
            desc[field] = index_change[1]
    if fields.get("dryRun"):
        return reply
    if index_change is not None:
        spec, change, old = index_change
        for key in INDEX_MOD_FIELDS[2:]:
            if key not in change:
                continue
            if key in old or key in ("hidden", "prepareUnique", "unique"):
                reply[f"{key}_old"] = old.get(key, False)
            reply[f"{key}_new"] = change[key]
            if change[key] is False and key != "expireAfterSeconds":
                spec.pop(key, None)  # MongoDB lists a visible index without 'hidden'
            else:
                spec[key] = change[key]
        store = coll._store.indexes.get(spec["name"])  # mongomock-ng's TTL index (see _build)
        if store is not None and "expireAfterSeconds" in change:
            store["expireAfterSeconds"] = change["expireAfterSeconds"]
    state: dict[str, Any] = {"collectionOptions": {"uuid": info.uuid, **info.options}}
    if index_change is not None:
        state["indexOptions"] = index_change[2]
    info.options = ordered(options)
    eng.record(ctx, eng.new_entry("modify", ctx.db, name, desc=desc, state_before=state))
    return {k: v for k, v in reply.items() if k in ("expireAfterSeconds_old", "expireAfterSeconds_new", "hidden_old", "hidden_new", "unique_new")}


def _capped_change(field: str, value: Any) -> tuple[str, Any]:
    """collMod's ``cappedSize``/``cappedMax`` as the option it sets (MongoDB stores the new size
    as given, unlike create's, and a max of 0 or less as none)."""
    if not isinstance(value, int | float | Int64) or isinstance(value, bool):
        raise CommandError(14, f"BSON field 'collMod.{field}' is the wrong type '{type(value).__name__}', expected type 'long'")
    if field == "cappedSize":
        if not 0 < value <= 1 << 50:
            raise CommandError(72, "cappedSize must be greater than 0 and at most 1 PB")
        return "size", number(int(value))
    if value >= 1 << 31:
        raise CommandError(72, "cappedMax must be less than 2^31")
    return "max", number(int(value)) if value > 0 else None


def _set(options: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        options.pop(key, None)
    else:
        options[key] = value


def _enum(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise CommandError(2, f"Enumeration value '{value}' for field 'collMod.{field}' is not a valid value.")
    return value


def _index_change(info: CollInfo, value: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """collMod's ``index``: (the stored spec it changes, the change as MongoDB logs it, the old values)."""
    if not isinstance(value, dict):
        raise CommandError(14, "BSON field 'collMod.index' is the wrong type, expected type 'object'")
    for field in value:
        if field not in INDEX_MOD_FIELDS:
            raise CommandError(40415, f"BSON field 'collMod.index.{field}' is an unknown field.")
    if "name" in value and "keyPattern" in value:
        raise CommandError(72, "Cannot specify both key pattern and name.")
    if not any(k in value for k in INDEX_MOD_FIELDS[2:]):
        raise CommandError(72, "no expireAfterSeconds, hidden, prepareUnique or unique field")
    if "name" in value:
        spec = info.indexes.get(value["name"])
        if spec is None and value["name"] == first_index(info.options)["name"]:
            raise CommandError(72, "cannot modify the _id index")
        what = value["name"]
    elif isinstance(value.get("keyPattern"), dict):
        matches = [s for s in info.indexes.values() if same_key(s["key"], value["keyPattern"])]
        if len(matches) > 1:
            raise CommandError(72, f"index keyPattern {value['keyPattern']} matches {len(matches)} indexes, must use index name")
        spec = matches[0] if matches else None
        what = value["keyPattern"]
    else:
        raise CommandError(72, "Must specify either index name or key pattern.")
    if spec is None:
        raise CommandError(27, f"cannot find index {what}")
    change: dict[str, Any] = {"name": spec["name"]}
    old: dict[str, Any] = {}
    if "expireAfterSeconds" in value:
        change["expireAfterSeconds"] = expire_after("collMod.index", value["expireAfterSeconds"])
        if "expireAfterSeconds" in spec:
            old["expireAfterSeconds"] = spec["expireAfterSeconds"]
    for flag in ("hidden", "prepareUnique", "unique"):
        if flag in value:
            if not isinstance(value[flag], bool):
                raise CommandError(14, f"BSON field 'collMod.index.{flag}' is the wrong type, expected type 'bool'")
            old[flag] = bool(spec.get(flag, False))
            change[flag] = value[flag]
    if change.get("unique") is False:
        raise CommandError(72, "collMod cannot make an index non-unique")
    if change.get("unique") and not (spec.get("prepareUnique") or change.get("prepareUnique")):
        raise CommandError(72, "Cannot make index unique with 'prepareUnique' set to false")
    return spec, change, old


# -- listing --------------------------------------------------------------------------------


@command("listCollections")
def _list_collections(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    from mongomock_ng.filtering import filter_applies

    query = ctx.arg("filter") or {}
    out = []
    for name in sorted(eng.client[ctx.db].list_collection_names()):
        info = eng.info(ctx.db, name)
        doc: dict[str, Any] = {
            "name": name,
            "type": "collection",
            "options": dict(info.options),
            "info": {"readOnly": False, "uuid": info.uuid},
        }
        index = id_index(info.options)
        if index is not None:
            doc["idIndex"] = index
        if not filter_applies(query, doc):
            continue
        out.append({"name": name, "type": "collection"} if ctx.arg("nameOnly") else doc)
    batch = (ctx.arg("cursor") or {}).get("batchSize")
    return cursor_reply(eng, f"{ctx.db}.$cmd.listCollections", iter(out), batch)


@command("listDatabases")
def _list_databases(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    from mongomock_ng.filtering import filter_applies

    if ctx.db != "admin":
        raise CommandError(13, "listDatabases may only be run against the admin database.")
    query = ctx.arg("filter") or {}
    dbs = []
    for name in sorted(set(eng.database_names()) | set(SYSTEM_DBS)):
        size = sum(eng.coll(name, c).estimated_document_count() for c in eng.client[name].list_collection_names())
        # admin, config and local always exist on a replica set member.
        size = max(size, 1) if name in SYSTEM_DBS else size
        doc = {"name": name, "sizeOnDisk": Int64(size * 4096), "empty": size == 0}
        if filter_applies(query, doc):
            dbs.append({"name": name} if ctx.arg("nameOnly") else doc)
    total = sum(int(d.get("sizeOnDisk", 0)) for d in dbs)
    return {"databases": dbs, "totalSize": Int64(total), "totalSizeMb": Int64(total >> 20)}


@command("dbStats")
def _db_stats(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    names = eng.client[ctx.db].list_collection_names()
    objects = sum(eng.coll(ctx.db, n).estimated_document_count() for n in names)
    return {"db": ctx.db, "collections": len(names), "objects": objects}

"""Namespace commands of the sandbox: databases, collections and indexes.

``drop``, ``renameCollection`` and ``dropDatabase`` are logged to the oplog
(a dropDatabase as one ``drop`` per collection followed by ``dropDatabase``,
as MongoDB does), so change streams see them and invalidate as documented.
Index builds are not logged (MongoDB shows them only with
``showExpandedEvents``).
"""

from __future__ import annotations

from typing import Any

from bson.int64 import Int64

from .crud import cursor_reply
from .engine import SYSTEM_DBS, CollInfo, Ctx, Engine, command
from .errors import CommandError

ID_INDEX = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
INDEX_OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")


def _check_name(name: str) -> None:
    if not name or "$" in name or "\x00" in name or name.startswith("system."):
        raise CommandError(73, f"Invalid collection name: {name!r}")


def _require(eng: Engine, db: str, name: str) -> Any:
    if not eng.exists(db, name):
        raise CommandError(26, f"ns does not exist: {db}.{name}")
    return eng.coll(db, name)


@command("create")
def _create(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    _check_name(name)
    if eng.exists(ctx.db, name):
        raise CommandError(48, f"Collection {ctx.db}.{name} already exists.")
    options = {k: v for k, v in ctx.body.items() if k != ctx.name and not k.startswith("$") and k not in ("lsid", "txnNumber", "autocommit", "startTransaction", "writeConcern", "readConcern", "comment", "apiVersion")}
    eng.client[ctx.db].create_collection(name)
    eng.colls[(ctx.db, name)] = CollInfo(options=options)
    return {}


@command("collMod")
def _coll_mod(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    _require(eng, ctx.db, name)
    info = eng.info(ctx.db, name)
    for key in ("changeStreamPreAndPostImages", "validator", "validationLevel", "validationAction"):
        if key in ctx.body:
            info.options[key] = ctx.body[key]
    return {}


@command("drop")
def _drop(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    if not eng.exists(ctx.db, name):
        return {"ns": f"{ctx.db}.{name}", "nIndexesWas": 0}
    return _drop_collection(eng, ctx, name)


def _drop_collection(eng: Engine, ctx: Ctx, name: str) -> dict[str, Any]:
    coll = eng.coll(ctx.db, name)
    n_indexes = len(coll.index_information())
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
    if eng.exists(dst_db, dst):
        if not ctx.arg("dropTarget"):
            raise CommandError(48, f"target namespace exists: {dst_db}.{dst}")
        eng.coll(dst_db, dst).drop()
        eng.colls.pop((dst_db, dst), None)
    entry = eng.new_entry("rename", src_db, src, to=(dst_db, dst))
    info = eng.colls.pop((src_db, src), None) or CollInfo()
    if src_db == dst_db:
        eng.client[src_db].rename_collection(src, dst)
    else:
        target = eng.coll(dst_db, dst)
        eng.client[dst_db].create_collection(dst)
        for doc in source.find():
            target.insert_one(doc)
        for spec in info.indexes.values():
            target.create_index(list(spec["key"].items()), name=spec["name"], **{k: spec[k] for k in INDEX_OPTIONS if k in spec})
        source.drop()
        info = CollInfo(options=info.options, indexes=info.indexes)
    eng.colls[(dst_db, dst)] = info
    eng.record(ctx, entry)
    return {}


@command("createIndexes")
def _create_indexes(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    _check_name(name)
    created = not eng.exists(ctx.db, name)
    if created:
        eng.client[ctx.db].create_collection(name)
    coll = eng.coll(ctx.db, name)
    info = eng.info(ctx.db, name)
    before = len(coll.index_information())
    specs = ctx.arg("indexes")
    if not isinstance(specs, list) or not specs:
        raise CommandError(2, "createIndexes needs a non-empty 'indexes' array")
    for spec in specs:
        key = spec.get("key") if isinstance(spec, dict) else None
        if not isinstance(key, dict) or not key or not spec.get("name"):
            raise CommandError(9, f"each index needs a 'key' document and a 'name': {spec!r}")
        existing = info.indexes.get(spec["name"])
        if existing is not None:
            if dict(existing["key"]) != dict(key):
                raise CommandError(85, f"An index named {spec['name']!r} already exists with a different key")
            continue
        coll.create_index(list(key.items()), name=spec["name"], **{k: spec[k] for k in INDEX_OPTIONS if k in spec})
        info.indexes[spec["name"]] = {"v": 2, **spec}
    return {
        "numIndexesBefore": before,
        "numIndexesAfter": len(coll.index_information()),
        "createdCollectionAutomatically": created,
    }


@command("dropIndexes", "deleteIndexes")
def _drop_indexes(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    coll = _require(eng, ctx.db, name)
    info = eng.info(ctx.db, name)
    before = len(coll.index_information())
    which = ctx.arg("index")
    if which == "*":
        names = list(info.indexes)
    elif isinstance(which, str):
        names = [which]
    elif isinstance(which, list):
        names = [str(n) for n in which]
    elif isinstance(which, dict):
        names = [n for n, spec in info.indexes.items() if dict(spec["key"]) == dict(which)]
        if not names:
            raise CommandError(27, f"can't find index with key: {which}")
    else:
        raise CommandError(14, "dropIndexes 'index' must be a name, '*', a key pattern or a list of names")
    for index_name in names:
        if index_name == "_id_":
            raise CommandError(72, "cannot drop _id index")
        if index_name not in info.indexes:
            raise CommandError(27, f"index not found with name [{index_name}]")
        coll.drop_index(index_name)
        del info.indexes[index_name]
    return {"nIndexesWas": before}


@command("listIndexes")
def _list_indexes(eng: Engine, ctx: Ctx) -> dict[str, Any]:
    name = ctx.target
    _require(eng, ctx.db, name)
    specs = [dict(ID_INDEX)] + [dict(s) for s in eng.info(ctx.db, name).indexes.values()]
    batch = (ctx.arg("cursor") or {}).get("batchSize")
    return cursor_reply(eng, f"{ctx.db}.$cmd.listIndexes.{name}", iter(specs), batch)


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
            "idIndex": dict(ID_INDEX),
        }
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

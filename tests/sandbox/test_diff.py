"""walkit.sandbox.diff: an updateDescription, applied to the pre-image, gives
the post-image exactly (compared as BSON bytes), for random documents and
for random updates run through the sandbox.
"""

from __future__ import annotations

import copy
from typing import Any

import bson
import pymongo
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walkit.sandbox.diff import update_description

CODEC: CodecOptions = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def enc(doc: dict[str, Any]) -> bytes:
    return bson.encode(doc, codec_options=CODEC)


# -- applying an updateDescription --------------------------------------------------


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target = _walk(doc, parents)
    if isinstance(target, list):
        index = int(last)
        target.extend([None] * (index + 1 - len(target)))  # MongoDB pads with null
        target[index] = value
    else:
        target[last] = value


def apply(before: dict[str, Any], desc: dict[str, Any]) -> dict[str, Any]:
    """``before`` changed as the updateDescription says (a copy)."""
    doc = copy.deepcopy(before)
    for trunc in desc["truncatedArrays"]:
        array = _walk(doc, trunc["field"].split("."))
        assert isinstance(array, list) and trunc["newSize"] < len(array)
        del array[trunc["newSize"] :]
    for path in desc["removedFields"]:
        *parents, last = path.split(".")
        del _walk(doc, parents)[last]
    for path, value in desc["updatedFields"].items():
        _set(doc, path, copy.deepcopy(value))
    return doc


def test_apply_handles_each_part() -> None:
    before = {"_id": 1, "a": {"b": [1, 2, 3, {"c": 1}, 9, 9]}, "gone": 1}
    desc = {
        "updatedFields": {"a.b.1": "two", "a.b.3.c": 5, "new": [1]},
        "removedFields": ["gone"],
        "truncatedArrays": [{"field": "a.b", "newSize": 4}],
    }
    assert apply(before, desc) == {"_id": 1, "a": {"b": [1, "two", 3, {"c": 5}]}, "new": [1]}


# -- random documents -----------------------------------------------------------------

# Small alphabets make shared keys (and so nested diffs) likely; digits and
# dots exercise the ambiguous paths, which must fall back to a replacement.
keys = st.sampled_from(["a", "b", "c", "d", "0", "1", "x.y", "", "é", "$k", "_id"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(-3, 3).map(Int64),
    st.sampled_from([0.0, -0.0, 1.0, float("nan"), float("inf"), 2.5]),
    st.sampled_from([Decimal128("1"), Decimal128("1.0"), Decimal128("-0"), Decimal128("NaN")]),
    st.sampled_from(["", "s", "t"]),
    st.sampled_from([ObjectId("65f0a1b2c3d4e5f60718293a")]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=15,
)
documents = st.dictionaries(keys.filter(lambda k: k != "_id"), values, max_size=5).map(lambda d: {"_id": 1, **d})


@st.composite
def before_after(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two documents, the second often a small edit of the first."""
    before = draw(documents)
    if draw(st.booleans()):
        return before, draw(documents)
    after = copy.deepcopy(before)
    for _ in range(draw(st.integers(1, 4))):
        _mutate(draw, after)
    return before, after


def _mutate(draw: st.DrawFn, doc: Any) -> None:
    """One random in-place edit somewhere inside ``doc``."""
    while True:
        children = [k for k, v in (doc.items() if isinstance(doc, dict) else enumerate(doc)) if isinstance(v, (dict, list)) and k != "_id"]
        if not children or draw(st.booleans()):
            break
        doc = doc[draw(st.sampled_from(children))]
    if isinstance(doc, dict):
        action = draw(st.sampled_from(["set", "remove", "add"]))
        existing = [k for k in doc if k != "_id"]
        if action == "remove" and existing:
            del doc[draw(st.sampled_from(existing))]
        elif action == "set" and existing:
            doc[draw(st.sampled_from(existing))] = draw(values)
        else:
            key = draw(keys)
            if key != "_id":
                doc[key] = draw(values)
    else:
        action = draw(st.sampled_from(["set", "append", "truncate"]))
        if action == "set" and doc:
            doc[draw(st.integers(0, len(doc) - 1))] = draw(values)
        elif action == "truncate" and doc:
            del doc[draw(st.integers(0, len(doc) - 1)) :]
        else:
            doc.append(draw(values))


@settings(max_examples=400, deadline=None)
@given(pair=before_after())
def test_update_description_applied_to_before_gives_after(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    before, after = pair
    before_bytes = enc(before)
    desc = update_description(before, after)
    assert enc(before) == before_bytes  # the images are not modified
    if desc is None:
        return
    assert set(desc) == {"updatedFields", "removedFields", "truncatedArrays"}
    assert enc(apply(before, desc)) == enc(after)
    if enc(before) == enc(after):
        assert desc == {"updatedFields": {}, "removedFields": [], "truncatedArrays": []}


def test_small_edits_give_small_descriptions() -> None:
    before = {"_id": 1, "a": {"b": [1, 2, 3], "c": "x"}, "n": 1, "z": None}
    after = {"_id": 1, "a": {"b": [1, 5], "c": "x"}, "n": Int64(1)}
    assert update_description(before, after) == {
        "updatedFields": {"a.b.1": 5, "n": Int64(1)},
        "removedFields": ["z"],
        "truncatedArrays": [{"field": "a.b", "newSize": 2}],
    }


def test_ambiguous_or_reordered_changes_fall_back_to_replacement() -> None:
    assert update_description({"_id": 1, "a": 1, "b": 2}, {"_id": 1, "b": 2, "a": 1}) is None
    assert update_description({"_id": 1, "a": 1}, {"_id": 1, "x.y": 1, "a": 1}) is None
    assert update_description({"_id": 1, "a": {"0": 1}}, {"_id": 1, "a": {"0": 2}}) is None
    assert update_description({"_id": 1, "a": 1, "b": 2}, {"_id": 1, "a": 1, "c": 3, "b": 2}) is None


# -- random updates through the sandbox ------------------------------------------------

paths = st.sampled_from(["a", "b", "a.b", "a.c", "l", "l.0", "l.2", "l.1.x", "n", "s.t.u"])
operand = st.one_of(st.integers(-2, 2), st.sampled_from([1.5, "v", None, True, [], {}, [1, 2], {"k": [0]}, Int64(9)]))
updates = st.one_of(
    st.dictionaries(paths, operand, min_size=1, max_size=3).map(lambda d: {"$set": d}),
    st.dictionaries(paths, st.just(""), min_size=1, max_size=2).map(lambda d: {"$unset": d}),
    st.dictionaries(st.sampled_from(["n", "m", "a.n"]), st.sampled_from([1, -1, Int64(2), 0.5]), min_size=1).map(lambda d: {"$inc": d}),
    st.builds(lambda v: {"$push": {"l": v}}, operand),
    st.builds(lambda v: {"$push": {"l": {"$each": [v, v], "$slice": 3}}}, operand),
    st.sampled_from([{"$pop": {"l": 1}}, {"$pop": {"l": -1}}, {"$pull": {"l": 1}}, {"$addToSet": {"l": 7}}]),
    st.sampled_from([{"$rename": {"a": "z"}}, {"$rename": {"n": "a"}}, {"$set": {"l.5": "far"}}]),
)
initial = st.fixed_dictionaries(
    {"a": st.one_of(st.integers(0, 2), st.fixed_dictionaries({"b": st.integers(0, 2)}, optional={"c": st.lists(st.integers(0, 2), max_size=2)})),
     "l": st.lists(st.one_of(st.integers(0, 2), st.fixed_dictionaries({"x": st.integers(0, 2)})), max_size=4)},
    optional={"n": st.integers(0, 3), "s": st.just({"t": {"u": 1, "w": 2}})},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=initial, ops=st.lists(updates, min_size=1, max_size=3))
def test_sandbox_update_events_reproduce_the_post_image(sandbox_uri: str, start: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    client: pymongo.MongoClient = pymongo.MongoClient(sandbox_uri, datetime_conversion="DATETIME_AUTO")
    try:
        coll = client.d.get_collection("c", codec_options=CODEC)
        coll.delete_many({})
        coll.insert_one({"_id": 1, **start})
        with coll.watch() as stream:
            applied = []
            for op in ops:
                pre = coll.find_one({"_id": 1})
                try:
                    res = coll.update_one({"_id": 1}, op)
                except pymongo.errors.WriteError:
                    assert enc(coll.find_one({"_id": 1})) == enc(pre)  # a failed update changes nothing
                    continue
                post = coll.find_one({"_id": 1})
                assert res.modified_count == (enc(pre) != enc(post))
                if res.modified_count:
                    applied.append((pre, post))
            coll.insert_one({"_id": "end"})
            events = []
            while (ev := stream.next())["operationType"] != "insert":
                events.append(ev)
        assert len(events) == len(applied)
        for ev, (pre, post) in zip(events, applied, strict=True):
            if ev["operationType"] == "update":
                assert enc(apply(pre, ev["updateDescription"])) == enc(post)
            else:
                assert ev["operationType"] == "replace"
                assert enc(ev["fullDocument"]) == enc(post)
    finally:
        client.close()

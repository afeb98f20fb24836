"""Damaged, truncated, foreign and malicious bundles are refused, and nothing is written.

Every case: :func:`unpack_bundle` and :func:`verify_bundle` raise BundleError whose
message names the file and what is wrong; the destination holds no file afterwards,
nothing appears outside it, nothing is left beside the bundle, and the bundle file
itself is unchanged (same SHA-256).  Malicious archives are crafted with Python's
tarfile from a real bundle (a crafted copy with no change verifies: the crafting is
not what they fail on).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.bundle.conftest import (
    AgeKey,
    Entry,
    Scenario,
    copy_bundle,
    craft,
    everything_under,
    files_under,
    link,
    regular,
    sha256_file,
    tar_members,
    write_age_key,
)
from walkit.errors import BundleError
from walkit.offsite.bundle import AGE_MAGIC, Bundle, load_identities, unpack_bundle, verify_bundle

WAL_MEMBER = "wal/seg-00000001.wal.zst"


class Place:
    """A test's folders: ``src`` holds the bundle, ``out/dest`` is where it is unpacked."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.src = tmp_path / "src"
        self.out = tmp_path / "out"
        self.dest = self.out / "dest"
        self.src.mkdir()
        self.out.mkdir()


@pytest.fixture
def place(tmp_path: Path) -> Place:
    return Place(tmp_path)


def refused(place: Place, path: Path, *words: str, identities: list[Any] | None = None) -> str:
    """Both unpack and verify refuse ``path`` with BundleError naming it and one of ``words``;
    nothing is written to the destination, beside the bundle, or anywhere else under the test's folder."""
    before = sha256_file(path) if path.is_file() else None
    src_listing = sorted(os.listdir(place.src))
    messages = []
    with pytest.raises(BundleError) as info:
        unpack_bundle(path, place.dest, identities)
    messages.append(str(info.value))
    assert files_under(place.dest) == [], "files were left in the destination"
    with pytest.raises(BundleError) as info:
        verify_bundle(path, identities)
    messages.append(str(info.value))
    for message in messages:
        assert path.name in message, message
        assert any(w.lower() in message.lower() for w in words), (words, message)
        assert "\n" not in message
    if before is not None:
        assert sha256_file(path) == before, "the bundle file was changed"
    assert sorted(os.listdir(place.src)) == src_listing, "something was left beside the bundle"
    assert sorted(os.listdir(place.out)) in ([], ["dest"]), "something was written next to the destination"
    assert sorted(os.listdir(place.root)) == ["out", "src"], "something was written outside the destination"
    return messages[0]


def flipped(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def member_info(path: Path, name: str) -> tarfile.TarInfo:
    return next(i for i in tar_members(path) if i.name == name)


# -- truncated ----------------------------------------------------------------------------

CUTS: dict[str, Callable[[Path], int]] = {
    "1 byte": lambda p: 1,
    "inside the first header": lambda p: 300,
    "inside the WAL member": lambda p: member_info(p, WAL_MEMBER).offset_data + member_info(p, WAL_MEMBER).size // 2,
    "at the end of the WAL member's data": lambda p: member_info(p, WAL_MEMBER).offset_data + member_info(p, WAL_MEMBER).size - 1,
    "inside a snapshot member's header": lambda p: member_info(p, "snapshot/manifest.json.zst").offset + 100,
    "inside a snapshot member": lambda p: member_info(p, "snapshot/manifest.json.zst").offset_data + 10,
    "just before MANIFEST.json": lambda p: member_info(p, "MANIFEST.json").offset,
    "inside MANIFEST.json's header": lambda p: member_info(p, "MANIFEST.json").offset + 200,
    "inside MANIFEST.json": lambda p: member_info(p, "MANIFEST.json").offset_data + member_info(p, "MANIFEST.json").size // 2,
    "one byte short of MANIFEST.json's end": lambda p: member_info(p, "MANIFEST.json").offset_data + member_info(p, "MANIFEST.json").size - 1,
}


@pytest.mark.parametrize("where", list(CUTS))
def test_a_truncated_bundle_is_refused(scenario: Scenario, place: Place, where: str) -> None:
    data = scenario.b1.path.read_bytes()
    cut = CUTS[where](scenario.b1.path)
    assert 0 < cut < len(data)
    path = place.src / "cut.tar"
    path.write_bytes(data[:cut])
    refused(place, path, "cut short", "truncated", "no MANIFEST.json", "damaged")


# -- one altered byte ------------------------------------------------------------------------


def data_carrying_offsets(path: Path) -> list[tuple[int, str]]:
    """Every byte of the file that tar gives meaning to: headers (but the checksum field's
    terminating space, which tar readers skip) and member data, the manifest's included.
    Left out: the zero padding after each member's data and the end-of-archive blocks,
    which every tar reader ignores (a change there alters no extracted byte)."""
    out = []
    for info in tar_members(path):
        out += [(o, f"header of {info.name} +{o - info.offset}") for o in range(info.offset, info.offset_data) if o - info.offset != 155]
        out += [(o, f"data of {info.name} +{o - info.offset_data}") for o in range(info.offset_data, info.offset_data + info.size)]
    return out


def detection(path: Path, dest: Path, identities: list[Any] | None = None) -> str:
    """How the altered bundle fared: 'refused' when unpack AND verify each raise a BundleError naming
    the file, unpack leaves no file in ``dest`` and the bundle file is unchanged; else what happened."""
    before = sha256_file(path)
    for step in ("unpack", "verify"):
        try:
            if step == "unpack":
                unpack_bundle(path, dest, identities)
            else:
                verify_bundle(path, identities)
        except BundleError as exc:
            if path.name not in str(exc):
                return f"{step}: BundleError not naming the file: {exc}"
            if sha256_file(path) != before:
                return f"{step}: refused, but the bundle file changed"
            if step == "unpack" and files_under(dest):
                return f"unpack: refused, but left {files_under(dest)}"
            continue
        except Exception as exc:
            return f"{step}: {type(exc).__name__}: {exc}"
        return f"{step}: accepted" + (f", wrote {files_under(dest)}" if step == "unpack" else "")
    return "refused"


def test_one_altered_byte_anywhere_in_a_bundle_is_detected(scenario: Scenario, place: Place) -> None:
    base = copy_bundle(scenario.b1, place.src, "base.tar")
    data = base.read_bytes()
    candidates = data_carrying_offsets(base)
    picked = [candidates[i * (len(candidates) - 1) // 29] for i in range(30)]  # 30 offsets spread evenly
    regions = {where.split(" +")[0] for _, where in picked}
    assert any(r.startswith("header") for r in regions) and "data of MANIFEST.json" in regions and f"data of {WAL_MEMBER}" in regions
    outcomes = {}
    for number, (offset, where) in enumerate(picked):
        path = place.src / f"altered-{offset}.tar"
        path.write_bytes(flipped(data, offset))
        outcomes[f"{offset} ({where})"] = detection(path, place.out / f"d{number}")
    missed = {k: v for k, v in outcomes.items() if v != "refused"}
    assert not missed, f"{len(missed)} of 30 single-bit changes were not refused: {missed}"


def _value_offset(text: bytes, path: tuple[str, ...]) -> int:
    """The offset (in MANIFEST.json's text) of the last digit of the value at ``path``."""
    at = 0
    for depth, key in enumerate(path, start=1):
        at = text.index(b"\n" + b" " * depth + json.dumps(key).encode() + b": ", at)
    end = min(i for i in (text.find(b",\n", at), text.find(b"\n", at + 1)) if i > 0)
    value = text[at:end]
    last_digit = max(i for i, c in enumerate(value) if chr(c).isdigit())
    return at + last_digit


MANIFEST_FIELDS = [
    ("index",),
    ("id",),
    ("created",),
    ("keep_from",),
    ("wal", "first_seq"),
    ("wal", "last_seq"),
    ("wal", "seal"),
    ("wal", "events"),
    ("wal", "records"),
    ("wal", "first_ct", "t"),
    ("wal", "last_ct", "i"),
    ("wal", "first_wall"),
    ("wal", "last_wall"),
    ("snapshot", "id"),
    ("snapshot", "end_wall"),
    ("snapshot", "start", "i"),
    ("snapshot", "wal_seq_before"),
    ("members", WAL_MEMBER, "raw_size"),
]


def test_a_changed_digit_in_any_manifest_field_is_detected(scenario: Scenario, place: Place) -> None:
    """The manifest says what the bundle covers (the provider's metadata, the restore plan and
    chain-aware pruning are taken from it): one bit flipped in any of its values must not pass."""
    base = copy_bundle(scenario.b1, place.src, "base.tar")
    data = base.read_bytes()
    info = member_info(base, "MANIFEST.json")
    text = data[info.offset_data : info.offset_data + info.size]
    outcomes = {}
    for number, field in enumerate(MANIFEST_FIELDS):
        offset = info.offset_data + _value_offset(text, field)
        path = place.src / f"field-{number}.tar"
        path.write_bytes(flipped(data, offset))
        altered = json.loads(path.read_bytes()[info.offset_data : info.offset_data + info.size])
        assert altered != json.loads(text)  # still valid JSON, one value changed
        outcomes[".".join(field)] = detection(path, place.out / f"d{number}")
    missed = {k: v for k, v in outcomes.items() if v != "refused"}
    assert not missed, f"manifest fields whose alteration is not refused: {missed}"


# -- malicious and malformed archives ------------------------------------------------------


def test_a_crafted_copy_without_changes_verifies(scenario: Scenario, place: Place) -> None:
    path = craft(scenario.b1.path, place.src / "copy.tar")
    assert verify_bundle(path).manifest == scenario.b1.manifest
    unpack_bundle(path, place.dest)
    assert WAL_MEMBER in files_under(place.dest)


def _add(*extra: Entry, before_wal: bool = False) -> Callable[[list[Entry]], list[Entry]]:
    return lambda entries: [*extra, *entries] if before_wal else [*entries, *extra]


def _replace(name: str, new: Callable[[Entry], Entry]) -> Callable[[list[Entry]], list[Entry]]:
    return lambda entries: [new(e) if e[0].name == name else e for e in entries]


def _drop(name: str) -> Callable[[list[Entry]], list[Entry]]:
    return lambda entries: [e for e in entries if e[0].name != name]


def _list_member(name: str, data: bytes) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "raw_sha256": "0" * 64, "raw_size": 1}

    return edit


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _delete(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        node = manifest
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


EVIL = b"evil contents"

# name -> (craft keywords, words the message must contain one of)
CRAFTED: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "'../evil' member": ({"entries": _add(regular("../evil", EVIL), before_wal=True)}, ("unsafe",)),
    "'../../evil' member listed in the manifest": (
        {"entries": _add(regular("snapshot/../../evil.zst", EVIL)), "edit_manifest": _list_member("snapshot/../../evil.zst", EVIL)},
        ("not allowed", "unsafe"),
    ),
    "absolute-path member": ({"entries": _add(regular("ABSOLUTE", EVIL), before_wal=True)}, ("unsafe",)),
    "symlink member": ({"entries": _add(link("snapshot/link.zst", "../../evil"))}, ("link",)),
    "symlink in place of a listed member": ({"entries": _replace("snapshot/manifest.json.zst", lambda e: link(e[0].name, "/etc/passwd"))}, ("link",)),
    "hardlink member": ({"entries": _replace(WAL_MEMBER, lambda e: link(e[0].name, "ABSOLUTE", hard=True))}, ("link",)),
    "member not listed in the manifest": ({"entries": _add(regular("snapshot/extra.bson.zst", zstandard.compress(b"x")))}, ("not listed",)),
    "member larger than the manifest says": ({"entries": _replace(WAL_MEMBER, lambda e: regular(e[0].name, e[1] + b"\0" * 100))}, ("the manifest says",)),
    "member missing": ({"entries": _drop("snapshot/manifest.json.zst")}, ("missing",)),
    "member twice": ({"entries": lambda entries: [*entries, entries[-1]]}, ("twice",)),
    "member decompressing to more than its raw_size": (
        {"edit_manifest": lambda m: m["members"][WAL_MEMBER].update(raw_size=m["members"][WAL_MEMBER]["raw_size"] - 100)},
        ("decompresses to more than",),
    ),
    "MANIFEST.json that is not JSON": ({"manifest_bytes": b'{"format": "walkit-bundle", "version": 1, '}, ("MANIFEST.json is damaged",)),
    "MANIFEST.json of another format": ({"edit_manifest": _set(("format",), "tarball")}, ("MANIFEST.json is damaged", "not a walkit")),
    "manifest with an unknown version": ({"edit_manifest": _set(("version",), 2)}, ("version 2",)),
    "manifest member name outside the bundle's layout": ({"edit_manifest": lambda m: m["members"].update({"/etc/x.zst": {}})}, ("not allowed",)),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_bundle_is_refused_and_nothing_escapes(scenario: Scenario, place: Place, case: str) -> None:
    options, words = CRAFTED[case]
    absolute = place.root / "abs-evil"
    if "entries" in options:
        fill = options["entries"]
        options = dict(options, entries=lambda es: [(_absolute(e, absolute)) for e in fill(es)])
    path = craft(scenario.b1.path, place.src / "crafted.tar", **options)
    message = refused(place, path, *words)
    assert not absolute.exists() and not (place.out / "evil").exists() and not (place.root / "evil").exists()
    assert not any(p.is_symlink() for p in place.root.rglob("*")), "a link was created"
    assert "Traceback" not in message


def _absolute(entry: Entry, absolute: Path) -> Entry:
    info, data = entry
    if info.name == "ABSOLUTE":
        info.name = str(absolute)
    if info.linkname == "ABSOLUTE":
        info.linkname = str(absolute)
    return info, data


def test_a_member_that_inflates_beyond_its_raw_size_is_stopped(scenario: Scenario, place: Place) -> None:
    """A zstd bomb under a listed name (its compressed size and hash listed): refused once it passes raw_size."""
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))  # a small frame of 64 MiB of zeros
    name = "snapshot/manifest.json.zst"

    def edit(manifest: dict[str, Any]) -> None:
        manifest["members"][name].update(sha256=hashlib.sha256(bomb).hexdigest(), size=len(bomb))

    path = craft(scenario.b1.path, place.src / "bomb.tar", entries=_replace(name, lambda e: regular(name, bomb)), edit_manifest=edit)
    assert os.path.getsize(path) < 1 << 20
    refused(place, path, "decompresses to more than")


MANIFEST_DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "wal.member names a file the bundle does not have": _set(("wal", "member"), "wal/seg-00000009.wal.zst"),
    "wal.member points outside the destination": _set(("wal", "member"), "../../../../etc/hostname"),
    "wal has no first_seq": _delete(("wal", "first_seq")),
    "wal has no seal": _delete(("wal", "seal")),
    "snapshot has no id": _delete(("snapshot", "id")),
    "wal is not an object": _set(("wal",), "wal"),
    "members is a list": _set(("members",), []),
    "index is not a number": _set(("index",), "one"),
}


@pytest.mark.parametrize("case", list(MANIFEST_DAMAGE))
def test_a_manifest_with_wrong_or_missing_fields_is_a_bundle_error(scenario: Scenario, place: Place, case: str) -> None:
    """Valid JSON, the members intact and as listed: the manifest's own fields are wrong.
    The result must be a BundleError (the CLI's one clean line), never a KeyError or the like."""
    path = craft(scenario.b1.path, place.src / "crafted.tar", edit_manifest=MANIFEST_DAMAGE[case])
    outcome = detection(path, place.dest)
    assert outcome == "refused", outcome


# -- not bundles at all -------------------------------------------------------------------


NOT_BUNDLES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "a file that is not a tar": (lambda d: _write(d / "random.tar", os.urandom(4096)), ("not a readable bundle",)),
    "a text file": (lambda d: _write(d / "notes.tar", b"just some notes\n" * 40), ("not a readable bundle", "damaged")),
    "an empty file": (lambda d: _write(d / "empty.tar", b""), ("not a readable bundle",)),
    "a missing file": (lambda d: d / "missing.tar", ("no such bundle file",)),
    "a directory": (lambda d: _mkdir(d / "folder.tar"), ("a folder",)),
    "a tar without MANIFEST.json": (lambda d: _plain_tar(d / "plain.tar"), ("no MANIFEST.json",)),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _plain_tar(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return path


@pytest.mark.parametrize("case", list(NOT_BUNDLES))
def test_something_that_is_not_a_bundle_is_refused(place: Place, case: str) -> None:
    make, words = NOT_BUNDLES[case]
    path = make(place.src)
    refused(place, path, *words)


def test_a_bundle_in_a_missing_folder_is_a_bundle_error(place: Place) -> None:
    path = place.src / "no-such-folder" / "bundle.tar"
    for attempt in (lambda: verify_bundle(path), lambda: unpack_bundle(path, place.dest)):
        with pytest.raises(BundleError, match="no such bundle file"):
            attempt()


def _damage_last_member(bundle: Bundle, folder: Path) -> Path:
    """A copy of ``bundle`` whose last member (a snapshot file in a <db> folder) has one bit changed."""
    path = copy_bundle(bundle, folder, "late.tar")
    last = [i for i in tar_members(path) if i.name != "MANIFEST.json"][-1]
    assert last.name.startswith("snapshot/") and "/" in last.name[len("snapshot/") :]
    path.write_bytes(flipped(path.read_bytes(), last.offset_data + last.size // 2))
    return path


def test_a_failed_unpack_leaves_no_folders_behind(scenario: Scenario, place: Place) -> None:
    """The last member is damaged: the members unpacked before it go again, and so do the
    folders made for them; what was in the destination before stays."""
    path = _damage_last_member(scenario.b1, place.src)
    place.dest.mkdir()
    (place.dest / "kept.txt").write_text("mine")
    with pytest.raises(BundleError, match="altered|damaged"):
        unpack_bundle(path, place.dest)
    assert everything_under(place.dest) == ["kept.txt"]


def test_a_failed_unpack_does_not_destroy_files_already_in_the_destination(scenario: Scenario, place: Place) -> None:
    """The same bundle was unpacked there before (intact); unpacking a damaged copy of it
    must fail without removing or changing what the first unpack wrote."""
    unpack_bundle(scenario.b1.path, place.dest)
    before = {rel: (place.dest / rel).read_bytes() for rel in files_under(place.dest)}
    assert WAL_MEMBER in before and len(before) == len(scenario.b1.manifest["members"])
    path = _damage_last_member(scenario.b1, place.src)
    with pytest.raises(BundleError, match="altered|damaged"):
        unpack_bundle(path, place.dest)
    after = {rel: (place.dest / rel).read_bytes() for rel in files_under(place.dest)}
    assert sorted(after) == sorted(before), f"removed by the failed unpack: {sorted(set(before) - set(after))}"
    assert after == before


# -- encrypted ------------------------------------------------------------------------------


@pytest.fixture
def encrypted_copy(encrypted: Bundle, place: Place) -> Path:
    return copy_bundle(encrypted, place.src)


def test_a_truncated_encrypted_bundle_is_refused(encrypted_copy: Path, age_key: AgeKey, place: Place) -> None:
    data = encrypted_copy.read_bytes()
    keys = load_identities(age_key.keyfile)
    header_end = data.index(b"\n---") + 1
    for cut in (10, 40, header_end - 5, header_end + 60, len(data) // 2, len(data) - 17, len(data) - 1):
        path = place.src / f"cut-{cut}.tar.age"
        path.write_bytes(data[:cut])
        refused(place, path, "truncated", "incomplete", "cut short", "altered", identities=keys)
        path.unlink()


def test_one_altered_byte_in_an_encrypted_bundle_is_detected(encrypted_copy: Path, age_key: AgeKey, place: Place) -> None:
    data = encrypted_copy.read_bytes()
    keys = load_identities(age_key.keyfile)
    header_end = data.index(b"\n---") + 1
    in_header = [len(AGE_MAGIC) + 5, len(AGE_MAGIC) + 60, header_end + 10, header_end + 60]  # a stanza, the MAC, the nonce
    offsets = sorted({*in_header, *(i * (len(data) - 1) // 29 for i in range(30))})
    outcomes = {}
    for offset in offsets:
        path = place.src / f"altered-{offset}.tar.age"
        path.write_bytes(flipped(data, offset))
        outcomes[offset] = detection(path, place.out / f"d{offset}", keys)
        path.unlink()
    missed = {k: v for k, v in outcomes.items() if v != "refused"}
    assert not missed, missed
    assert all(files_under(place.out / f"d{o}") == [] for o in offsets)


def test_a_wrong_age_key_is_refused_naming_the_variable(encrypted_copy: Path, place: Place) -> None:
    wrong = write_age_key(place.src / "wrong-key.txt")
    message = refused(place, encrypted_copy, "WALKIT_AGE_IDENTITY", identities=load_identities(wrong.keyfile))
    assert "decrypt" in message

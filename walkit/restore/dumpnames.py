"""File names of collections in a mongodump directory, exactly as mongo-tools writes and reads them.

A dump holds ``<db>/<stem>.bson`` and ``<db>/<stem>.metadata.json``; the metadata's
``collectionName`` is the real name.  mongodump builds ``<stem>`` with
``util.EscapeCollectionName`` (Go's ``url.PathEscape``) and, when that is longer than
238 bytes, cuts it and appends a hash of the real name; mongorestore reverses the
escape with ``url.PathUnescape``.

Guaranteed: ``escape_collection_name`` and ``dump_stem`` return byte for byte what
mongodump (mongo-tools >= 100.2.1) names the files for any name that encodes as UTF-8,
and ``unescape_collection_name`` accepts and rejects exactly what ``url.PathUnescape``
does, then additionally requires the bytes to be valid UTF-8.  ``is_truncated`` never
mistakes the stem of a name that was not cut for a cut one.
Not guaranteed: a truncated stem cannot be turned back into the name (the real name is
only in metadata.json); a stem written by older walkit as the raw name is told apart
from an escaped one only with the help of metadata.json, so without it a raw stem that
happens to contain ``%XX`` is read as an escaped one.
"""

from __future__ import annotations

import base64
import hashlib
import re

__all__ = [
    "MAX_STEM_BYTES",
    "collection_from_stem",
    "dump_stem",
    "escape_collection_name",
    "is_truncated",
    "unescape_collection_name",
]

# mongodump/prepare.go: "First 208 bytes of col name + 3 bytes delimiter + 27 bytes base64 hash = 238 bytes max."
# (255 bytes minus the longest suffix, ".metadata.json.gz").
MAX_STEM_BYTES = 238
_PREFIX_BYTES = 208
_DELIMITER = "%24"  # an escaped "$"
_HASH_CHARS = 27  # unpadded base64 of a 20-byte SHA-1

# Go's url.shouldEscape(c, encodePathSegment) returns False for exactly these bytes:
#   * RFC 3986 §2.3 unreserved: ALPHA, DIGIT and the marks "-" "_" "." "~";
#   * of the §2.2 reserved set "$&+,/:;=?@", those a path segment may hold: "$" "&" "+" ":" "=" "@"
#     ("/" ";" "," "?" are kept for giving meaning to segments, so they ARE escaped).
# Every other byte of the UTF-8 encoding -- space, "%", "!", "*", "'", "(", ")", '"', "#", "[", "]",
# "<", ">", "\\", "^", "`", "{", "|", "}", control bytes and every byte >= 0x80 -- becomes "%XX" with
# upper-case hex (Go's upperhex).  Escaping works on bytes, so "é" (C3 A9) becomes "%C3%A9".
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~$&+:=@")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")  # Go's ishex: unescaping accepts either case

# What a cut stem looks like: 208 bytes of PathEscape output (possibly cut inside a "%XX"), then "%24",
# then the canonical unpadded base64url of 20 bytes (the last character carries 4 bits + 2 zero bits).
# PathEscape never outputs "%24" ("$" is not escaped, and every "%" it writes starts an escape), so a
# stem that was not cut never has "%24" at byte 208 and is never taken for a cut one.
_ESCAPED_PREFIX = re.compile(r"(?:[A-Za-z0-9\-_.~$&+:=@]|%(?!24)[0-9A-F]{2})*(?:%[0-9A-F]?)?")
_HASH_TAIL = re.compile(r"[A-Za-z0-9_-]{26}[AEIMQUYcgkosw048]")


def _name_bytes(name: str) -> bytes:
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"collection name {name!r} cannot be encoded as UTF-8: {exc.reason}") from None


def escape_collection_name(name: str) -> str:
    """``url.PathEscape(name)``: mongo-tools' ``util.EscapeCollectionName``."""
    return "".join(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in _name_bytes(name))


def unescape_collection_name(stem: str) -> str:
    """``url.PathUnescape(stem)`` decoded as UTF-8 (mongo-tools' ``util.UnescapeCollectionName``).

    ``%XX`` (either case of hex) becomes the byte XX, every other character is kept as its UTF-8
    bytes ("+" stays "+").  Raises ValueError for a "%" not followed by two hex digits (naming the
    escape as Go's EscapeError does and its character offset) or when the bytes are not UTF-8.
    """
    out = bytearray()
    i = 0
    n = len(stem)
    while i < n:
        c = stem[i]
        if c == "%":
            if i + 2 >= n or stem[i + 1] not in _HEX_DIGITS or stem[i + 2] not in _HEX_DIGITS:
                raise ValueError(f"invalid URL escape {stem[i : i + 3]!r} at offset {i} in {stem!r}")
            out.append(int(stem[i + 1 : i + 3], 16))
            i += 3
        else:
            out += _name_bytes(c)
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{stem!r} unescapes to bytes that are not UTF-8 (byte {exc.start}: {exc.reason})") from None


def _name_hash(name: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha1(_name_bytes(name)).digest()).rstrip(b"=").decode("ascii")


def dump_stem(name: str) -> str:
    """The file stem mongodump uses for collection ``name`` (mongodump/prepare.go ``outputPath``).

    The escaped name, or when that exceeds 238 bytes its first 208 bytes (possibly cutting an
    escape in two, as Go's ``escapedColName[:208]`` does) + ``%24`` + unpadded base64url SHA-1 of
    the original name's UTF-8 bytes.
    """
    escaped = escape_collection_name(name)  # ASCII only, so characters == bytes
    if len(escaped) > MAX_STEM_BYTES:
        return escaped[:_PREFIX_BYTES] + _DELIMITER + _name_hash(name)
    return escaped


def is_truncated(stem: str) -> bool:
    """Whether ``stem`` has the shape of mongodump's cut-and-hashed form for a name too long to escape."""
    if len(stem) != MAX_STEM_BYTES or not stem.isascii():
        return False
    prefix, delimiter, tail = stem[:_PREFIX_BYTES], stem[_PREFIX_BYTES : _PREFIX_BYTES + 3], stem[_PREFIX_BYTES + 3 :]
    return (
        delimiter == _DELIMITER
        and len(tail) == _HASH_CHARS
        and _HASH_TAIL.fullmatch(tail) is not None
        and _ESCAPED_PREFIX.fullmatch(prefix) is not None
    )


def collection_from_stem(stem: str, metadata_name: str | None) -> str:
    """The real collection name for dump files named ``stem`` (``.bson`` / ``.metadata.json`` removed).

    ``metadata_name`` is metadata.json's ``collectionName``; when given it is the answer, after
    checking that it belongs to ``stem``: a cut stem must be exactly ``dump_stem(metadata_name)``;
    any other stem must unescape to it, or equal it (older walkit dumps used the raw name).
    Without metadata the stem is unescaped; a cut stem then raises ValueError.
    """
    if metadata_name is not None:
        if stem == metadata_name:  # legacy walkit dump: raw name as file name
            return metadata_name
        if is_truncated(stem):
            if dump_stem(metadata_name) != stem:
                raise ValueError(
                    f"dump file {stem!r} is not mongodump's name for collection {metadata_name!r} (from metadata.json); "
                    f"expected {dump_stem(metadata_name)!r}"
                )
            return metadata_name
        try:
            unescaped = unescape_collection_name(stem)
        except ValueError as exc:
            raise ValueError(
                f"dump file {stem!r} is neither the escaped nor the raw name of collection {metadata_name!r} "
                f"(from metadata.json): {exc}"
            ) from None
        if unescaped != metadata_name:
            raise ValueError(f"dump file {stem!r} names collection {unescaped!r} but its metadata.json says {metadata_name!r}")
        return metadata_name
    if is_truncated(stem):
        raise ValueError(
            f"dump file {stem!r} has a shortened name (prefix + %24 + SHA-1): the real collection name is only "
            "in its metadata.json (collectionName), which is missing"
        )
    return unescape_collection_name(stem)

"""walkit.restore.dumpnames names dump files exactly as mongodump (Go's url.PathEscape + the 238-byte rule) does.

Expected values are derived by hand from Go's shouldEscape(c, encodePathSegment) and from
mongodump/prepare.go, or computed in the test with hashlib/base64/urllib, never by the module.
"""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walkit.restore import dumpnames
from walkit.restore.dumpnames import (
    collection_from_stem,
    dump_stem,
    escape_collection_name,
    is_truncated,
    unescape_collection_name,
)

# Bytes Go's PathEscape leaves alone in a path segment (written out independently of the module).
GO_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~$&+:=@"
ESCAPED_RE = re.compile(r"(?:[A-Za-z0-9\-_.~$&+:=@]|%[0-9A-F]{2})*")


def sha1_b64url(name: str) -> str:
    """Unpadded RFC 4648 §5 base64 of SHA-1(name), built from standard base64 by hand."""
    std = base64.b64encode(hashlib.sha1(name.encode("utf-8")).digest()).decode("ascii")
    return std.replace("+", "-").replace("/", "_").rstrip("=")


def quote_oracle(name: str) -> str:
    # urllib.parse.quote always keeps A-Z a-z 0-9 _ . - ~, escapes UTF-8 bytes with upper-case hex.
    return urllib.parse.quote(name, safe="$&+:=@")


# --- escape ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("50%off", "50%25off"),
        ("a b", "a%20b"),
        ("a?b,c;d/e", "a%3Fb%2Cc%3Bd%2Fe"),
        ("$&+:=@", "$&+:=@"),
        ("é", "%C3%A9"),
        ("~-_.", "~-_."),
        ("!*'()", "%21%2A%27%28%29"),
        ('"#[]<>\\^`{|}', "%22%23%5B%5D%3C%3E%5C%5E%60%7B%7C%7D"),
        ("\x00\t\n\x1f\x7f", "%00%09%0A%1F%7F"),
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("😀", "%F0%9F%98%80"),
        ("\u00a0", "%C2%A0"),
        ("system.profile", "system.profile"),
        ("Az09", "Az09"),
        ("", ""),
    ],
)
def test_escape_known_vectors(name: str, escaped: str) -> None:
    assert escape_collection_name(name) == escaped


def test_escape_every_ascii_byte() -> None:
    for code in range(128):
        ch = chr(code)
        expected = ch if ch in GO_SAFE else "%" + format(code, "02X")
        assert escape_collection_name(ch) == expected, repr(ch)


def test_escape_rejects_unencodable_name() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        escape_collection_name("a\ud800b")


@given(st.text())
def test_escape_matches_urllib_oracle(name: str) -> None:
    assert escape_collection_name(name) == quote_oracle(name)


@given(st.text())
def test_escaped_output_only_uses_allowed_characters(name: str) -> None:
    escaped = escape_collection_name(name)
    assert ESCAPED_RE.fullmatch(escaped), escaped
    assert "%24" not in escaped  # "$" is never escaped: the long-name delimiter cannot occur


@given(st.text())
def test_round_trip(name: str) -> None:
    assert unescape_collection_name(escape_collection_name(name)) == name


# --- unescape --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "name"),
    [
        ("a%20b", "a b"),
        ("a%2Fb", "a/b"),
        ("a%2fb", "a/b"),  # Go's ishex accepts lower case
        ("a+b", "a+b"),  # PathUnescape: "+" stays "+"
        ("%C3%A9", "é"),
        ("%c3%a9", "é"),
        ("é", "é"),  # unescaped non-ASCII passes through
        ("a b", "a b"),
        ("50%25off", "50%off"),
        ("%2524", "%24"),
        ("", ""),
    ],
)
def test_unescape_known_vectors(stem: str, name: str) -> None:
    assert unescape_collection_name(stem) == name


@pytest.mark.parametrize(
    ("stem", "bad", "offset"),
    [
        ("%", "%", 0),
        ("%2", "%2", 0),
        ("%zz", "%zz", 0),
        ("ab%2", "%2", 2),
        ("a%g1", "%g1", 1),
        ("%%41", "%%4", 0),
        ("50%off", "%of", 2),
        ("ok%41%4", "%4", 5),
    ],
)
def test_unescape_malformed(stem: str, bad: str, offset: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{bad!r} at offset {offset}")):
        unescape_collection_name(stem)


@pytest.mark.parametrize("stem", ["%FF", "%C3", "a%C3%28", "%ED%A0%80"])
def test_unescape_rejects_non_utf8(stem: str) -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        unescape_collection_name(stem)


@given(st.text())
def test_unescape_accepts_lower_case_hex(name: str) -> None:
    lowered = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote_oracle(name))
    assert unescape_collection_name(lowered) == name


# --- long names ------------------------------------------------------------------------------------------


def test_300_char_name_is_cut_and_hashed() -> None:
    name = "c" * 300
    stem = dump_stem(name)
    assert len(stem.encode("ascii")) == 238
    assert stem[:208] == "c" * 208
    assert stem[208:211] == "%24"
    assert stem[211:] == sha1_b64url(name)
    assert len(sha1_b64url(name)) == 27
    assert is_truncated(stem)


def test_escaped_length_238_is_kept_239_is_cut() -> None:
    assert dump_stem("a" * 238) == "a" * 238
    assert not is_truncated("a" * 238)
    assert dump_stem("a" * 239) == "a" * 208 + "%24" + sha1_b64url("a" * 239)
    assert is_truncated(dump_stem("a" * 239))
    # The limit applies to the escaped form: 235 + len("%20") == 238, 236 + 3 == 239.
    assert dump_stem("a" * 235 + " ") == "a" * 235 + "%20"
    assert not is_truncated(dump_stem("a" * 235 + " "))
    assert dump_stem("a" * 236 + " ") == "a" * 208 + "%24" + sha1_b64url("a" * 236 + " ")


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("a" * 205 + "é" * 20, "a" * 205 + "%C3"),  # cut after a whole escape
        ("a" * 206 + "é" * 20, "a" * 206 + "%C"),  # cut inside an escape, as Go's escapedColName[:208]
        ("a" * 207 + "é" * 20, "a" * 207 + "%"),
        ("a" * 208 + "é" * 20, "a" * 208),
        ("a" * 200 + "😀" * 20, "a" * 200 + "%F0%9F%9"),
        ("a" * 204 + "é" * 20, "a" * 204 + "%C3%"),
    ],
)
def test_cut_falls_on_bytes_of_the_escaped_name(name: str, prefix: str) -> None:
    assert len(prefix) == 208
    stem = dump_stem(name)
    assert stem == prefix + "%24" + sha1_b64url(name)
    assert is_truncated(stem)
    assert collection_from_stem(stem, name) == name


def test_cut_mid_escape_stem_does_not_unescape() -> None:
    stem = dump_stem("a" * 206 + "é" * 20)
    with pytest.raises(ValueError, match=re.escape("'%C%' at offset 206")):
        unescape_collection_name(stem)


def test_hash_is_of_the_original_name_not_the_escaped_one() -> None:
    name = " " * 100
    stem = dump_stem(name)
    assert stem == "%20" * 69 + "%" + "%24" + sha1_b64url(name)
    assert stem[211:] != sha1_b64url(escape_collection_name(name))


@pytest.mark.parametrize(
    "stem",
    [
        "a" * 238,
        "a" * 208 + "%25" + sha1_b64url("x"),
        "a" * 208 + "%24" + sha1_b64url("x")[:-1] + "B",  # non-canonical final base64 character
        "a" * 208 + "%24" + sha1_b64url("x")[:-1] + "=",
        "a" * 208 + "%24" + "+" * 26 + "A",
        "a" * 207 + "%24" + sha1_b64url("x") + "a",
        "a" * 209 + "%24" + sha1_b64url("x")[:-1],
        "a" * 208 + "%24" + sha1_b64url("x") + "a",
        "a" * 207 + " " + "%24" + sha1_b64url("x"),  # raw space: not PathEscape output
        "a" * 205 + "%c3" + "%24" + sha1_b64url("x"),  # Go writes upper-case hex
        "a" * 205 + "%24" + "%24" + sha1_b64url("x"),  # PathEscape never writes %24
        "é" * 208 + "%24" + sha1_b64url("x"),
    ],
)
def test_is_truncated_rejects_look_alikes(stem: str) -> None:
    assert not is_truncated(stem)


def test_is_truncated_accepts_the_shape() -> None:
    assert is_truncated("a" * 208 + "%24" + sha1_b64url("x"))
    assert is_truncated("a" * 205 + "%C3" + "%24" + sha1_b64url("x"))


near_limit = st.builds(
    lambda n, tail: "n" * n + tail,
    st.integers(min_value=190, max_value=245),
    st.text(max_size=12),
)


@settings(max_examples=300)
@given(st.one_of(near_limit, st.text(max_size=120)))
def test_dump_stem_matches_mongodump_rule(name: str) -> None:
    escaped = quote_oracle(name)
    expected = escaped if len(escaped) <= 238 else escaped[:208] + "%24" + sha1_b64url(name)
    stem = dump_stem(name)
    assert stem == expected
    assert len(stem) <= 238
    assert is_truncated(stem) == (len(escaped) > 238)
    assert collection_from_stem(stem, name) == name
    if len(escaped) <= 238:
        assert collection_from_stem(stem, None) == name


# --- collection_from_stem --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "metadata_name", "name"),
    [
        ("a%20b", "a b", "a b"),
        ("a b", "a b", "a b"),  # legacy walkit: raw name as file name
        ("50%off", "50%off", "50%off"),  # legacy raw name that is not a valid escape
        ("a%20b", "a%20b", "a%20b"),  # legacy raw name that looks escaped: metadata wins
        ("a%2Fb", "a/b", "a/b"),
        ("a%20b", None, "a b"),
        ("system.profile", None, "system.profile"),
        ("%C3%A9", None, "é"),
    ],
)
def test_collection_from_stem(stem: str, metadata_name: str | None, name: str) -> None:
    assert collection_from_stem(stem, metadata_name) == name


@pytest.mark.parametrize(
    ("stem", "metadata_name", "message"),
    [
        ("a%20b", "other", "metadata.json says 'other'"),
        ("a%20b", "a%2520b", "metadata.json says"),
        ("50%off", "50off", "neither the escaped nor the raw name"),
        ("50%off", None, "invalid URL escape"),
        ("%FF", None, "not UTF-8"),
    ],
)
def test_collection_from_stem_mismatch(stem: str, metadata_name: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        collection_from_stem(stem, metadata_name)


def test_truncated_stem_needs_metadata() -> None:
    name = "x" * 300
    stem = "x" * 208 + "%24" + sha1_b64url(name)
    assert collection_from_stem(stem, name) == name
    with pytest.raises(ValueError, match="only in its metadata.json"):
        collection_from_stem(stem, None)


def test_truncated_stem_with_other_metadata_name_is_rejected() -> None:
    stem = "x" * 208 + "%24" + sha1_b64url("x" * 300)
    with pytest.raises(ValueError, match="is not mongodump's name"):
        collection_from_stem(stem, "x" * 301)  # same 208-byte prefix, different hash


def test_all_exports_exist() -> None:
    assert set(dumpnames.__all__) >= {
        "escape_collection_name",
        "unescape_collection_name",
        "dump_stem",
        "is_truncated",
        "collection_from_stem",
    }
    for export in dumpnames.__all__:
        assert hasattr(dumpnames, export), export

"""The sandbox survives whatever bytes a client sends.

Messages are built by hand (``struct`` + ``bson``) and sent over raw
sockets.  Each test checks two things: what happens to the offending
connection (an error reply when the message was framed correctly, a closed
connection when it was not), and that the server still serves everyone else
(a pymongo ping, insert and find on a separate client).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walkit.sandbox import Sandbox

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013
MORE_TO_COME = 1 << 1
IO_TIMEOUT = 5.0

# -- building and reading messages by hand -----------------------------------------


def frame(op_code: int, payload: bytes, request_id: int = 1) -> bytes:
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, op_code) + payload


def msg_payload(body: bytes, flags: int = 0, sequences: list[tuple[str, list[bytes]]] | None = None) -> bytes:
    out = struct.pack("<I", flags)
    for ident, docs in sequences or []:
        section = ident.encode() + b"\x00" + b"".join(docs)
        out += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    return out + b"\x00" + body


def op_msg(body: dict[str, Any], request_id: int = 1, flags: int = 0, sequences: list[tuple[str, list[bytes]]] | None = None) -> bytes:
    return frame(OP_MSG, msg_payload(bson.encode(body), flags, sequences), request_id)


def op_query(full_name: str, query: dict[str, Any], request_id: int = 1) -> bytes:
    payload = struct.pack("<i", 0) + full_name.encode() + b"\x00" + struct.pack("<ii", 0, -1) + bson.encode(query)
    return frame(OP_QUERY, payload, request_id)


def connect(box: Sandbox) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", box.port), timeout=IO_TIMEOUT)
    sock.settimeout(IO_TIMEOUT)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_reply(sock: socket.socket) -> tuple[int, int, dict[str, Any]]:
    """One reply: (opCode, responseTo, document)."""
    length, _rid, response_to, op_code = struct.unpack("<iiii", recv_exact(sock, 16))
    payload = recv_exact(sock, length - 16)
    if op_code == OP_MSG:
        assert payload[4] == 0, "a reply's first section is its body"
        doc = bson.decode(payload[5:])
    else:
        assert op_code == OP_REPLY
        _flags, _cursor, _start, returned = struct.unpack_from("<iqii", payload)
        assert returned == 1
        doc = bson.decode(payload[20:])
    return op_code, response_to, doc


def ask(sock: socket.socket, body: dict[str, Any], request_id: int = 7) -> dict[str, Any]:
    sock.sendall(op_msg(body, request_id))
    op_code, response_to, doc = read_reply(sock)
    assert (op_code, response_to) == (OP_MSG, request_id)
    return doc


def assert_closed(sock: socket.socket) -> None:
    """The server closed this connection (and did not answer first)."""
    try:
        data = sock.recv(1 << 16)
    except ConnectionResetError:
        data = b""
    except TimeoutError:
        pytest.fail(f"the server neither answered nor closed the connection within {IO_TIMEOUT} s")
    assert data == b"", f"expected the connection to be closed, got {data[:40]!r}"


def assert_usable(sock: socket.socket) -> None:
    """The same connection still answers a ping."""
    assert ask(sock, {"ping": 1, "$db": "admin"}, request_id=4242)["ok"] == 1.0


def assert_serves(box: Sandbox) -> None:
    """A separate pymongo client can ping, insert and find."""
    with pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=10_000) as client:
        assert client.admin.command("ping")["ok"] == 1.0
        key = uuid.uuid4().hex
        client.alive.c.insert_one({"_id": key, "v": 1})
        assert client.alive.c.find_one({"_id": key}) == {"_id": key, "v": 1}


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sock(box: Sandbox) -> Iterator[socket.socket]:
    s = connect(box)
    yield s
    s.close()


def assert_error(doc: dict[str, Any], code: int) -> None:
    assert doc["ok"] == 0.0, doc
    assert doc["code"] == code, doc
    assert isinstance(doc["errmsg"], str) and doc["errmsg"]


# -- broken framing: the connection is closed, nobody else notices ------------------


@pytest.mark.parametrize("length", [0, 15, -1, -(2**31), 48_000_001, 2**31 - 1])
def test_a_length_outside_16_to_48mb_closes_the_connection(box: Sandbox, sock: socket.socket, length: int) -> None:
    sock.sendall(struct.pack("<iiii", length, 1, 0, OP_MSG))
    assert_closed(sock)
    assert_serves(box)


@pytest.mark.parametrize("sent", [b"\x20\x00", struct.pack("<iiii", 200, 1, 0, OP_MSG) + b"\x00" * 30])
def test_a_truncated_message_then_close_costs_nothing(box: Sandbox, sent: bytes) -> None:
    before = box._server.connection_count()
    s = connect(box)
    s.sendall(sent)
    s.close()
    deadline = time.monotonic() + IO_TIMEOUT
    while box._server.connection_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert box._server.connection_count() == before, "the handler of a vanished client is still running"
    assert_serves(box)


@pytest.mark.parametrize("op_code", [OP_COMPRESSED, 2001, 2005, 0, 99])
def test_an_unknown_opcode_closes_the_connection(box: Sandbox, sock: socket.socket, op_code: int) -> None:
    # An OP_COMPRESSED wrapping a ping: compression was never offered.
    inner = msg_payload(bson.encode({"ping": 1, "$db": "admin"}))
    payload = struct.pack("<iiB", OP_MSG, len(inner), 0) + inner
    sock.sendall(frame(op_code, payload))
    assert_closed(sock)
    assert_serves(box)


# -- framed but bad: an error reply, and the connection stays usable ----------------


def test_an_unknown_section_kind_gets_error_40432(box: Sandbox, sock: socket.socket) -> None:
    body = bson.encode({"ping": 1, "$db": "admin"})
    sock.sendall(frame(OP_MSG, struct.pack("<I", 0) + b"\x00" + body + b"\x02" + body, request_id=11))
    op_code, response_to, doc = read_reply(sock)
    assert (op_code, response_to) == (OP_MSG, 11)
    assert_error(doc, 40432)
    assert "section kind 2" in doc["errmsg"]
    assert_usable(sock)
    assert_serves(box)


def _doc_with_bad_type() -> bytes:
    good = bytearray(bson.encode({"ping": 1, "$db": "admin"}))
    good[4] = 0x20  # the first element's type byte: 0x20 is no BSON type
    return bytes(good)


def _doc_length_too_small() -> bytes:
    good = bytearray(bson.encode({"ping": 1, "$db": "admin"}))
    struct.pack_into("<i", good, 0, 9)  # claims 9 bytes: the document ends mid-element
    return bytes(good)


def _doc_length_too_big() -> bytes:
    good = bytearray(bson.encode({"ping": 1, "$db": "admin"}))
    struct.pack_into("<i", good, 0, len(good) + 100)  # claims more bytes than the message holds
    return bytes(good)


def _string_length_wrong() -> bytes:
    good = bytearray(bson.encode({"ping": 1, "$db": "admin"}))
    at = good.index(b"$db\x00") + 4
    struct.pack_into("<i", good, at, 1000)  # the string's own length overruns the document
    return bytes(good)


def _bad_utf8_key() -> bytes:
    return bytes(bson.encode({"ping": 1, "$db": "admin"})).replace(b"ping", b"p\xffng")


def _no_terminator() -> bytes:
    good = bytes(bson.encode({"ping": 1, "$db": "admin"}))
    return good[:-1] + b"\x01"


@pytest.mark.parametrize(
    "body",
    [_doc_with_bad_type(), _doc_length_too_small(), _doc_length_too_big(), _string_length_wrong(), _bad_utf8_key(), _no_terminator(), b"\x05\x00"],
    ids=["bad-type-byte", "length-too-small", "length-overruns", "string-length", "bad-utf8-key", "no-terminator", "short"],
)
def test_a_body_with_invalid_bson_gets_error_22(box: Sandbox, sock: socket.socket, body: bytes) -> None:
    sock.sendall(frame(OP_MSG, msg_payload(body), request_id=12))
    op_code, response_to, doc = read_reply(sock)
    assert (op_code, response_to) == (OP_MSG, 12)
    assert_error(doc, 22)
    assert doc["codeName"] == "InvalidBSON"
    assert_usable(sock)
    assert_serves(box)


def test_invalid_bson_in_a_document_sequence_gets_error_22_and_inserts_nothing(box: Sandbox, sock: socket.socket) -> None:
    docs = [bson.encode({"_id": 1}), _doc_with_bad_type()]
    sock.sendall(op_msg({"insert": "c", "$db": "bad"}, request_id=13, sequences=[("documents", docs)]))
    op_code, response_to, doc = read_reply(sock)
    assert response_to == 13
    assert_error(doc, 22)
    assert ask(sock, {"count": "c", "$db": "bad"})["n"] == 0
    assert_serves(box)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (msg_payload(bson.encode({"ping": 1, "$db": "admin"}), flags=1 << 3), 223),  # an unknown required flag bit
        (struct.pack("<I", 0), 40587),  # no body section
        (msg_payload(bson.encode({"ping": 1})) + b"\x00" + bson.encode({"ping": 1}), 40430),  # two bodies
        (msg_payload(bson.encode({"insert": "c", "$db": "x"}), sequences=[("documents", []), ("documents", [])]), 40431),
        (b"\x00\x00", 22),  # shorter than the flags
    ],
    ids=["illegal-flag", "no-body", "two-bodies", "duplicate-sequence", "no-flags"],
)
def test_a_malformed_op_msg_gets_mongods_error_code(box: Sandbox, sock: socket.socket, payload: bytes, code: int) -> None:
    sock.sendall(frame(OP_MSG, payload, request_id=14))
    op_code, response_to, doc = read_reply(sock)
    assert (op_code, response_to) == (OP_MSG, 14)
    assert_error(doc, code)
    assert_usable(sock)
    assert_serves(box)


def test_optional_flag_bits_are_ignored(sock: socket.socket) -> None:
    # Bits 16..31 are optional (exhaustAllowed is bit 16): a server must not refuse them.
    sock.sendall(frame(OP_MSG, msg_payload(bson.encode({"ping": 1, "$db": "admin"}), flags=1 << 20), request_id=15))
    assert read_reply(sock)[2]["ok"] == 1.0


def test_an_unknown_command_gets_59_and_the_connection_stays_usable(box: Sandbox, sock: socket.socket) -> None:
    doc = ask(sock, {"frobnicate": 1, "$db": "admin"})
    assert_error(doc, 59)
    assert doc["codeName"] == "CommandNotFound"
    assert "no such command" in doc["errmsg"]
    assert_usable(sock)
    assert_serves(box)


def test_an_empty_command_document_gets_an_error(sock: socket.socket) -> None:
    assert ask(sock, {})["ok"] == 0.0
    assert_usable(sock)


def test_a_document_over_16mib_is_refused_without_a_crash(box: Sandbox) -> None:
    big = bson.encode({"_id": "big", "blob": b"x" * (16 * 1024 * 1024 + 10)})
    assert len(big) > 16 * 1024 * 1024
    s = connect(box)
    try:
        s.sendall(op_msg({"insert": "c", "$db": "big", "ordered": True}, request_id=16, sequences=[("documents", [big])]))
        try:
            _op, response_to, doc = read_reply(s)
        except (EOFError, ConnectionResetError):
            doc = None  # closing the connection is allowed too
        if doc is not None:
            assert response_to == 16
            codes = [doc.get("code")] + [e["code"] for e in doc.get("writeErrors", [])]
            assert 10334 in codes, doc
            assert doc.get("n", 0) == 0
            assert_usable(s)
    finally:
        s.close()
    assert_serves(box)
    with pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=5000) as client:
        assert client.big.c.count_documents({}) == 0


def test_a_client_gone_during_an_awaiting_getmore_costs_only_its_thread(box: Sandbox) -> None:
    with pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=5000) as client:
        client.admin.command("ping")
        watcher = client.gone.c.watch(max_await_time_ms=200)
        before = box._server.connection_count()
        s = connect(box)
        opened = ask(s, {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}, "$db": "gone"})
        cursor_id = opened["cursor"]["id"]
        assert opened["ok"] == 1.0 and cursor_id != 0
        s.sendall(op_msg({"getMore": cursor_id, "collection": "c", "maxTimeMS": 60_000, "$db": "gone"}, request_id=8))
        time.sleep(0.2)  # the getMore is now waiting inside the server
        assert box._server.connection_count() == before + 1
        s.close()
        client.gone.c.insert_one({"_id": 1})  # wakes the orphaned getMore, whose reply has nowhere to go
        deadline = time.monotonic() + IO_TIMEOUT
        while box._server.connection_count() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert box._server.connection_count() == before, "the orphaned getMore still holds its thread"
        event = None
        for _ in range(25):
            event = watcher.try_next()
            if event is not None:
                break
        assert event is not None and event["documentKey"] == {"_id": 1}
        watcher.close()
    assert_serves(box)


# -- legacy hello and fire-and-forget -----------------------------------------------


@pytest.mark.parametrize("command", ["isMaster", "ismaster"])
def test_legacy_op_query_hello_gets_an_op_reply(sock: socket.socket, command: str) -> None:
    sock.sendall(op_query("admin.$cmd", {command: 1, "helloOk": True}, request_id=21))
    op_code, response_to, doc = read_reply(sock)
    assert (op_code, response_to) == (OP_REPLY, 21)
    assert doc["ok"] == 1.0
    assert doc["ismaster"] is True
    assert doc["setName"] == "rs0"
    assert doc["maxWireVersion"] >= 17
    assert_usable(sock)  # and the connection goes on with OP_MSG


def test_legacy_op_query_wrapped_in_dollar_query(sock: socket.socket) -> None:
    sock.sendall(op_query("admin.$cmd", {"$query": {"isMaster": 1}, "$readPreference": {"mode": "primary"}}, request_id=22))
    op_code, _, doc = read_reply(sock)
    assert op_code == OP_REPLY and doc["ismaster"] is True


def test_legacy_op_query_on_a_collection_gets_an_error_op_reply(box: Sandbox, sock: socket.socket) -> None:
    sock.sendall(op_query("db.coll", {"x": 1}, request_id=23))
    op_code, response_to, doc = read_reply(sock)
    assert (op_code, response_to) == (OP_REPLY, 23)
    assert doc["ok"] == 0.0 and doc["code"] == 5739101
    assert_usable(sock)
    assert_serves(box)


def test_a_more_to_come_insert_gets_no_reply_but_is_applied(box: Sandbox, sock: socket.socket) -> None:
    sock.sendall(op_msg({"insert": "c", "documents": [{"_id": "w0"}], "writeConcern": {"w": 0}, "$db": "fire"}, request_id=31, flags=MORE_TO_COME))
    # The next reply on the wire must answer the ping, not the insert.
    assert_usable(sock)
    assert ask(sock, {"find": "c", "filter": {}, "$db": "fire"})["cursor"]["firstBatch"] == [{"_id": "w0"}]
    with pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=5000) as client:
        assert client.fire.c.find_one() == {"_id": "w0"}


def test_a_bad_more_to_come_message_gets_no_reply_either(sock: socket.socket) -> None:
    sock.sendall(frame(OP_MSG, msg_payload(_doc_with_bad_type(), flags=MORE_TO_COME), request_id=32))
    sock.sendall(op_msg({"frobnicate": 1, "$db": "admin"}, request_id=33, flags=MORE_TO_COME))
    assert_usable(sock)


# -- random bytes -------------------------------------------------------------------

_FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_box() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@_FUZZ
@given(garbage=st.binary(min_size=0, max_size=512))
def test_random_bytes_never_hurt_the_server(fuzz_box: Sandbox, garbage: bytes) -> None:
    s = connect(fuzz_box)
    try:
        try:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server may already have hung up on the first bytes
            pass
        # Whatever it makes of them, the server answers or closes; it never hangs.
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if not s.recv(1 << 16):
                    break
            except ConnectionResetError:
                break
        else:
            pytest.fail("the server kept a half-closed connection open")
    finally:
        s.close()
    with pymongo.MongoClient(fuzz_box.uri, serverSelectionTimeoutMS=5000) as client:
        assert client.admin.command("ping")["ok"] == 1.0


@_FUZZ
@given(op_code=st.sampled_from([OP_MSG, OP_QUERY]), flags=st.integers(0, 2**32 - 1), rest=st.binary(min_size=0, max_size=512))
def test_random_well_framed_messages_are_answered_and_the_connection_survives(fuzz_box: Sandbox, op_code: int, flags: int, rest: bytes) -> None:
    s = connect(fuzz_box)
    try:
        s.sendall(frame(op_code, struct.pack("<I", flags) + rest, request_id=41))
        s.sendall(op_msg({"ping": 1, "$db": "admin"}, request_id=42))
        if op_code == OP_QUERY or not flags & MORE_TO_COME:
            reply_op, response_to, _doc = read_reply(s)
            assert (reply_op, response_to) == (OP_REPLY if op_code == OP_QUERY else OP_MSG, 41)
        reply_op, response_to, doc = read_reply(s)
        assert (reply_op, response_to, doc["ok"]) == (OP_MSG, 42, 1.0)
    finally:
        s.close()

"""MongoDB wire protocol framing: read requests, write replies.

Speaks OP_MSG (2013) and the legacy OP_QUERY (2004) that drivers still use
for the first ``hello``; replies with OP_MSG or OP_REPLY (1) to match.
Compression is never advertised, so OP_COMPRESSED is refused.

Guaranteed: a message whose framing is broken (a length outside
16..48 000 000, or an opCode other than OP_MSG and OP_QUERY) raises
:class:`ProtocolError` (the server then closes that one connection).  A
message that was read whole but whose contents are bad (invalid BSON, an
unknown OP_MSG section kind or required flag bit, a missing body) raises
:class:`BadMessageError` with MongoDB's error code, so the server can answer
with an error document and keep the connection.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

MAX_MESSAGE_SIZE = 48_000_000
MAX_BSON_SIZE = 16 * 1024 * 1024

FLAG_CHECKSUM = 1
FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16

#: How the sandbox decodes documents: dates outside Python's range stay
#: ``DatetimeMS``; every other type maps to the bson class that re-encodes it
#: to the same bytes.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
#: The same, decoding into RawBSONDocument (bytes kept as they are).
RAW_CODEC = CODEC.with_options(document_class=RawBSONDocument)

_HEADER = struct.Struct("<iiii")


class ProtocolError(Exception):
    """The byte stream is not a MongoDB message; close the connection."""


#: Names of the codes :class:`BadMessageError` uses (as mongod names them).
class BadMessageError(Exception):
    """A well-framed message whose contents are invalid; answer with an error.

    ``code`` is the error code mongod uses for the same fault (22 InvalidBSON
    for bad BSON); ``more_to_come`` is true when the client asked for no reply.
    """

    def __init__(self, request_id: int, op_code: int, message: str, code: int = 22, more_to_come: bool = False) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.op_code = op_code
        self.code = code
        self.more_to_come = more_to_come


class _BadContentError(ValueError):
    """A message's contents are malformed; ``code`` is mongod's code for it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Request:
    """One decoded request: the command body plus document sequences."""

    request_id: int
    op_code: int
    body: dict[str, Any]
    sequences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    more_to_come: bool = False
    #: For OP_QUERY: the database from ``db.$cmd``.
    legacy_db: str | None = None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError("client closed the connection")
        chunks += chunk
    return bytes(chunks)


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode("utf-8"), end + 1


def _decode_docs(data: bytes) -> list[dict[str, Any]]:
    return bson.decode_all(data, CODEC)


def read_request(sock: socket.socket) -> Request:
    """Read one message; raise EOFError when the client has gone."""
    header = _recv_exact(sock, 16)
    length, request_id, _response_to, op_code = _HEADER.unpack(header)
    if length < 16 or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message length {length} is outside 16..{MAX_MESSAGE_SIZE}")
    payload = _recv_exact(sock, length - 16)
    if op_code not in (OP_MSG, OP_QUERY):
        raise ProtocolError(f"unsupported opCode {op_code}")
    # The whole message has been read, so the stream is still in step: from
    # here on every fault is answered, never a reason to drop the connection.
    more_to_come = op_code == OP_MSG and len(payload) >= 4 and bool(struct.unpack_from("<I", payload)[0] & FLAG_MORE_TO_COME)
    try:
        req = _parse_msg(request_id, payload) if op_code == OP_MSG else _parse_query(request_id, payload)
    except _BadContentError as exc:
        raise BadMessageError(request_id, op_code, str(exc), exc.code, more_to_come) from exc
    except (bson.errors.InvalidBSON, bson.errors.InvalidDocument, UnicodeDecodeError) as exc:
        raise BadMessageError(request_id, op_code, f"invalid BSON in request: {exc}", 22, more_to_come) from exc
    except Exception as exc:  # ValueError, struct.error, IndexError, or a decoder surprise
        raise BadMessageError(request_id, op_code, f"malformed message: {type(exc).__name__}: {exc}", 22, more_to_come) from exc
    return req


def _parse_msg(request_id: int, data: bytes) -> Request:
    (flags,) = struct.unpack_from("<I", data, 0)
    if flags & 0xFFFF & ~(FLAG_CHECKSUM | FLAG_MORE_TO_COME):
        raise _BadContentError(223, f"Message contains illegal flags value: 0b{flags:032b}")
    end = len(data) - (4 if flags & FLAG_CHECKSUM else 0)
    pos = 4
    body: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    while pos < end:
        kind = data[pos]
        pos += 1
        if kind == 0:
            if body is not None:
                raise _BadContentError(40430, "Multiple body sections in message")
            (size,) = struct.unpack_from("<i", data, pos)
            if size < 5 or pos + size > end:
                raise _BadContentError(22, f"invalid BSON in request: body size {size} overruns the message")
            body = bson.decode(data[pos : pos + size], CODEC)
            pos += size
        elif kind == 1:
            (size,) = struct.unpack_from("<i", data, pos)
            if size < 5 or pos + size > end:
                raise _BadContentError(22, f"invalid BSON in request: document sequence size {size} overruns the message")
            ident, docs_at = _cstring(data, pos + 4)
            if docs_at > pos + size:
                raise _BadContentError(22, "invalid BSON in request: document sequence identifier overruns its section")
            if ident in sequences:
                raise _BadContentError(40431, f"Duplicate document sequence: {ident}")
            sequences[ident] = _decode_docs(data[docs_at : pos + size])
            pos += size
        else:
            raise _BadContentError(40432, f"Unknown section kind {kind}")
    if body is None:
        raise _BadContentError(40587, "OP_MSG messages must have a body")
    return Request(
        request_id, OP_MSG, body, sequences, more_to_come=bool(flags & FLAG_MORE_TO_COME)
    )


def _parse_query(request_id: int, data: bytes) -> Request:
    pos = 4  # flags
    full_name, pos = _cstring(data, pos)
    pos += 8  # numberToSkip, numberToReturn
    docs = _decode_docs(data[pos:])
    if not docs:
        raise ValueError("OP_QUERY without a query document")
    query = docs[0]
    if "$query" in query:
        query = query["$query"]
    db, _, coll = full_name.partition(".")
    if coll != "$cmd":
        raise _BadContentError(5739101, f"OP_QUERY is no longer supported; legacy OP_QUERY is only accepted for commands, not {full_name[:200]!r}")
    return Request(request_id, OP_QUERY, dict(query), legacy_db=db)


def encode_reply(request: Request, reply: dict[str, Any], reply_id: int) -> bytes:
    """Frame ``reply`` as the answer to ``request``."""
    doc = bson.encode(reply, codec_options=CODEC)
    if request.op_code == OP_QUERY:
        payload = struct.pack("<iqii", 0, 0, 0, 1) + doc
        op = OP_REPLY
    else:
        payload = struct.pack("<I", 0) + b"\x00" + doc
        op = OP_MSG
    return _HEADER.pack(16 + len(payload), reply_id, request.request_id, op) + payload

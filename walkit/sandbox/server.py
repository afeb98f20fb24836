"""The sandbox's TCP server: one thread per connection, loopback only.

Guaranteed: a connection that sends something that is not a MongoDB message
(bad framing, unknown opcode, more than 48 MB) is closed without affecting
any other connection; a well-framed message with bad contents (invalid BSON,
an unknown section kind...) gets an error reply and the connection stays
usable; an unknown command gets ``no such command`` (59).  A request sent
with ``moreToCome`` (``w: 0``) never gets a reply, not even an error.  A
client that disconnects while its ``getMore`` waits costs nothing but that
thread, until the next write or the ``maxTimeMS`` ends the wait; stopping
the server ends every waiting ``getMore`` at once.
"""

from __future__ import annotations

import itertools
import logging
import socket
import socketserver
import threading
from typing import Any

from walkit.sandbox.engine import Engine
from walkit.sandbox.errors import CommandError
from walkit.sandbox.wire import BadMessageError, ProtocolError, Request, encode_reply, read_request

log = logging.getLogger("walkit.sandbox")


class _Handler(socketserver.BaseRequestHandler):
    server: SandboxTCPServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine = self.server.engine
        conn_id = engine.new_connection()
        self.server.track(sock, True)
        try:
            while not self.server.stopping.is_set():
                try:
                    req = read_request(sock)
                except BadMessageError as exc:
                    log.info("bad message on connection %d: %s", conn_id, exc)
                    if exc.more_to_come:
                        continue
                    req = Request(exc.request_id, exc.op_code, {})
                    reply: dict[str, Any] = engine.finish(CommandError(exc.code, str(exc)).reply())
                else:
                    reply = engine.run(req, conn_id)
                    if req.more_to_come:
                        continue
                try:
                    data = encode_reply(req, reply, self.server.next_id())
                except Exception as exc:  # an unencodable reply is a sandbox bug: say so, keep serving
                    log.exception("cannot encode the reply to %r", next(iter(req.body), "?"))
                    data = encode_reply(req, engine.finish(CommandError(1, f"walkit sandbox could not encode its reply: {exc}").reply()), self.server.next_id())
                sock.sendall(data)
        except (EOFError, ConnectionError, OSError):
            pass
        except ProtocolError as exc:
            log.warning("closing connection %d: %s", conn_id, exc)
        finally:
            self.server.track(sock, False)


class SandboxTCPServer(socketserver.ThreadingTCPServer):
    """A threading TCP server bound to one Engine."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        self.engine = engine
        self.stopping = threading.Event()
        self._ids = itertools.count(1)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def next_id(self) -> int:
        return next(self._ids) & 0x7FFFFFFF

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._open_lock:
            (self._open.add if add else self._open.discard)(sock)

    def connection_count(self) -> int:
        """How many client connections have a live handler thread right now."""
        with self._open_lock:
            return len(self._open)

    def close_connections(self) -> None:
        """Drop every client connection and end every waiting ``getMore`` (used on stop)."""
        self.stopping.set()
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # Close every change stream, then wake the getMores waiting on them:
        # a closed stream stops waiting at once instead of sitting out its
        # maxTimeMS on a server that is gone.
        with self.engine.oplog.changed:
            for cursor in self.engine.cursors.values():
                if getattr(cursor, "kind", None) == "changestream":
                    cursor.closed = True
            self.engine.oplog.changed.notify_all()

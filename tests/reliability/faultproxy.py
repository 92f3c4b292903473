"""A small TCP proxy on 127.0.0.1 that injects network faults between a client and Redis.

>>> with FaultProxy(("127.0.0.1", 1)) as proxy:
...     proxy.url.startswith("redis://127.0.0.1:")
True

Faults, switchable at any time from the test thread:

- ``delay_s``: every chunk sent to the client waits this long (a slow link);
- ``refuse``: new connections are closed at once (an unreachable server);
- :meth:`reset_all`: every open connection is reset (``RST``);
- :meth:`lose_reply_after`: the next request containing a marker reaches the
  server, which executes it, but the reply never reaches the client: its
  connection is reset instead (a write whose acknowledgement was lost).

One thread accepts; one thread per connection pumps both directions with
``select``. Nothing is buffered beyond one ``recv``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["FaultProxy"]

_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close with ``SO_LINGER`` 0: the peer sees a connection reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``upstream`` (a ``(host, port)`` or a unix socket path)."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.delay_s = 0.0
        self.refuse = False
        self.connections = 0
        self.resets = 0
        self.lost_replies = 0
        self._marker: bytes | None = None
        self._lose_left = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)  # accept() wakes up to notice close()
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        """A Redis URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset_all()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------------------
    def reset_all(self) -> int:
        """Reset every open connection; returns how many."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            _reset(client)
            _reset(server)
        self.resets += len(pairs)
        return len(pairs)

    def lose_reply_after(self, marker: bytes, times: int = 1) -> None:
        """Drop the reply to the next ``times`` requests that contain ``marker``."""
        with self._lock:
            self._marker = marker
            self._lose_left = times

    # -- plumbing ----------------------------------------------------------------------------
    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.upstream)
        else:
            sock = socket.create_connection(self.upstream, timeout=2.0)
            sock.settimeout(None)
        return sock

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refuse:
                _reset(client)
                continue
            try:
                server = self._connect_upstream()
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, server))
            self.connections += 1
            threading.Thread(
                target=self._pump, args=(client, server), name="faultproxy-conn", daemon=True
            ).start()

    def _take_marker(self, data: bytes) -> bool:
        with self._lock:
            if self._marker is not None and self._lose_left > 0 and self._marker in data:
                self._lose_left -= 1
                return True
        return False

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        lose_next_reply = False
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    if sock is client:
                        lose_next_reply = lose_next_reply or self._take_marker(data)
                        server.sendall(data)
                    elif lose_next_reply:
                        self.lost_replies += 1
                        return  # the server executed the request; the client never hears
                    else:
                        if self.delay_s:
                            time.sleep(self.delay_s)
                        client.sendall(data)
        except (OSError, ValueError):  # reset from another thread meanwhile
            return
        finally:
            with self._lock:
                if (client, server) in self._pairs:
                    self._pairs.remove((client, server))
            _reset(client)
            _reset(server)

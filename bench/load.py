"""Open-loop load for the benchmark: signed requests posted at a steady rate from sender threads.

Request i is due at start + i/rate whatever happened to the ones before it (open loop), so a
server that falls behind shows it in latency and lag instead of slowing the sender down.

The sender shares the machine with what it measures, so it is kept light: every request's bytes
are built before the clock starts, and a sender thread writes them on a keep-alive socket and
reads back only the status line and ``Content-Length`` (http.client parses every header of every
response with the email package and costs several times more CPU per request).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

PATH = "/webhooks/clerk"


def request_bytes(host: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 POST of ``body`` to the webhook path, whole."""
    lines = [
        f"POST {PATH} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """A keep-alive connection that sends whole requests and reads each response's status."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._sock: socket.socket | None = None
        self._pending = b""

    def exchange(self, request: bytes) -> int:
        """Send ``request``, read its response; its status, or 0 if the connection failed."""
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self._address, timeout=10)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.sendall(request)
            return self._response()
        except (OSError, ValueError):
            self.close()
            return 0

    def _response(self) -> int:
        assert self._sock is not None
        while b"\r\n\r\n" not in self._pending:
            self._pending += self._recv()
        head, _, rest = self._pending.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, close = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value == b"chunked"
            elif name == b"connection":
                close = value == b"close"
        if chunked:  # no server of ours sends one, but another might: read to the last chunk
            while b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
                rest += self._recv()
            length = (b"\r\n" + rest).index(b"\r\n0\r\n\r\n") + 5
        while len(rest) < length:
            rest += self._recv()
        self._pending = rest[length:]
        if close:
            self.close()
        return status

    def _recv(self) -> bytes:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._pending = None, b""


def send_steady(url: str, signed: list[tuple[Any, dict[str, str]]], rate: float, senders: int) -> list[tuple]:
    """Open-loop load: request i is due at start + i/rate; returns (send wall time, latency s, status) per i."""
    host, port = url.removeprefix("http://").split(":")
    requests = [request_bytes(f"{host}:{port}", event.body.encode(), headers) for event, headers in signed]
    results: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(signed)
    start = time.monotonic() + 0.5

    def sender(k: int) -> None:
        connection = Connection(host, int(port))
        for i in range(k, len(requests), senders):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.time()
            begun = time.perf_counter()
            status = connection.exchange(requests[i])
            results[i] = (sent, time.perf_counter() - begun, status)
        connection.close()

    # Daemons: a benchmark stopped mid-step (SIGTERM, Ctrl-C) does not wait for them to run out.
    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def achieved_rate(results: list[tuple]) -> float:
    """Requests per second the senders kept, from the first send to the last."""
    sends = [sent for sent, _, _ in results]
    span = max(sends, default=0.0) - min(sends, default=0.0)
    return (len(sends) - 1) / span if span > 0 else float("inf")

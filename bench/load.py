"""Open-loop load for the benchmark: signed requests posted at a steady rate from sender threads.

Request i is due at start + i/rate whatever happened to the ones before it (open loop), so a
server that falls behind shows it in latency and lag instead of slowing the sender down.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any


def send_steady(url: str, signed: list[tuple[Any, dict[str, str]]], rate: float, senders: int) -> list[tuple]:
    """Open-loop load: request i is due at start + i/rate; returns (send wall time, latency s, status) per i."""
    host, port = url.removeprefix("http://").split(":")
    results: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(signed)
    start = time.monotonic() + 0.5

    def sender(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for i in range(k, len(signed), senders):
            event, headers = signed[i]
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.time()
            begun = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    "/webhooks/clerk",
                    body=event.body.encode(),
                    headers={**headers, "Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                status = 0
            results[i] = (sent, time.perf_counter() - begun, status)
        conn.close()

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results

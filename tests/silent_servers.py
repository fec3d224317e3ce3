"""Servers that accept and never answer: a DNS server (UDP) and a broker (TCP).

Each runs in a thread of the test, on a free port, and is closed on exit.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def silent_udp_server() -> Iterator[tuple[int, list[bytes]]]:
    """A 'DNS server' that receives queries and never answers; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    received = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                received.append(sock.recv(4096))
            except OSError:
                continue

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield sock.getsockname()[1], received
    finally:
        stop.set()
        reader.join(timeout=2)
        sock.close()


@contextmanager
def silent_tcp_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A 'broker' that accepts connections and never says a word; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        acceptor.join(timeout=2)
        for connection in accepted:
            connection.close()
        listener.close()

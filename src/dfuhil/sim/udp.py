"""A virtual board's network port: one UDP socket on loopback, as a board's IP stack would have.

The board binds 127.0.0.1 on a free port at creation (the farm publishes it as ``smp_udp`` in
its state file and the debug port's ``device`` answer), so a host reaches the board's UDP
services (SMP over UDP, port 1337 on a real Zephyr device) with an ordinary socket. Datagrams
that arrive while no firmware listens wait in the socket buffer; a reset drops them, as a
rebooting device loses its network buffers.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from dfuhil.sim.clock import ResetSignal, VirtualClock

MAX_DATAGRAM = 65535
_POLL_WALL_S = 0.05  # how often a blocked reader looks at its cancel flag


class UdpPort:
    def __init__(self, clock: VirtualClock, name: str = "udp", host: str = "127.0.0.1") -> None:
        self.clock = clock
        self.name = name
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.setblocking(False)
        self.host, self.port = self._sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._closed = False

    @property
    def address(self) -> str:
        """``host:port`` as the farm publishes it."""
        return f"{self.host}:{self.port}"

    def receive(
        self, timeout_s: float | None, cancel: threading.Event
    ) -> tuple[bytes, tuple[str, int]] | None:
        """The next datagram and its sender within ``timeout_s`` device seconds, else None.

        Raises ResetSignal when ``cancel`` is set: the CPU that was listening got reset.
        """
        deadline = None if timeout_s is None else self.clock.now() + timeout_s
        while True:
            if cancel.is_set() or self._closed:
                raise ResetSignal
            wait = _POLL_WALL_S
            if deadline is not None:
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    return None
                wait = min(wait, self.clock.wall(remaining))
            try:
                ready, _, _ = select.select([self._sock], [], [], wait)
            except (OSError, ValueError):  # closed under us at shutdown
                raise ResetSignal from None
            if not ready:
                continue
            if cancel.is_set():  # leave the datagram to the firmware of the next boot
                raise ResetSignal
            try:
                data, addr = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                raise ResetSignal from None
            return data, (str(addr[0]), int(addr[1]))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # an unreachable peer is the peer's problem
            self._sock.sendto(data, addr)

    def flush(self) -> None:
        """Drop every datagram not yet read (a reset loses the network buffers)."""
        with self._lock:
            while True:
                try:
                    self._sock.recvfrom(MAX_DATAGRAM)
                except OSError:
                    return

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()

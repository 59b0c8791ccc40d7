"""The MCUmgr netbuf pool of a Zephyr SMP server: one pool for every SMP transport.

Why it matters: a host that keeps more requests in flight than the pool holds loses one, with
no answer, on a real board. Zephyr allocates MCUmgr netbufs with ``smp_packet_alloc``
(``CONFIG_MCUMGR_TRANSPORT_NETBUF_COUNT`` of them, K_NO_WAIT) for a request as it arrives (the
UART transport at a frame's first line, the Bluetooth transport at a packet's first write, the
UDP transport per datagram) and the SMP work queue takes one more for the answer it builds; a
request's buffer goes back once it is answered. The model keeps the answer's buffer aside:
``count - 1`` requests may wait, the next finds none and is dropped (the transport logs it).
Stock count: 4, or 2 when the build has the UDP transport (subsys/mgmt/mcumgr/transport/Kconfig).
"""

from __future__ import annotations

import threading


class NetbufPool:
    def __init__(self, count: int) -> None:
        self.count = count
        self.for_requests = max(1, count - 1)  # one is the work queue's answer
        self._held = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """A request arrives: False when no netbuf is free (the transport drops it)."""
        with self._lock:
            if self._held >= self.for_requests:
                return False
            self._held += 1
            return True

    def release(self) -> None:
        """A request was answered (or dropped half-way): its netbuf goes back to the pool."""
        with self._lock:
            self._held = max(0, self._held - 1)

    def refusal(self) -> str:
        """The log line of a request dropped for want of a netbuf."""
        return f"no free netbuf ({self.for_requests} busy)"

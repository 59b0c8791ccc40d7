"""A virtual board's UART: a real pseudo-terminal, paced at the configured baud rate.

The host side opens the pty's slave path with pyserial exactly as it would open a J-Link VCOM.
The board keeps its own slave descriptor open so the master never sees EIO while no host is
attached, and sets it raw so no line discipline rewrites protocol bytes. Both directions are
paced at 10 bits per byte (8N1) on the farm's virtual clock, so transfer benches are honest.

``delivery`` says what carries the bytes to the firmware. ``"paced"`` is a hardware UART (a
J-Link VCOM, an FTDI cable): bytes trickle in at the baud rate and the receive interrupt sees a
few at a time. ``"burst"`` is USB CDC-ACM on the chip itself (or a USB-serial bridge that
forwards whole USB packets): what the host wrote arrives at USB speed in one piece, and firmware
that asks (``bursts``) handles it in one run of its receive callback (dfuhil.sim.smp.uart_lines).

``faults`` (dfuhil.sim.uart_faults) is the line between the pty and the UART pins: bits flipped,
bytes dropped, duplicated or added, stalls, in both directions; and the port vanishing
(:meth:`PtyUart.vanish`, USB re-enumeration): the pty closes, so the host's open port fails,
and a new pty with a new path appears a moment later (``on_reenumerate`` tells the farm).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
import tty
from collections import deque
from collections.abc import Callable

from dfuhil.formats.smp_uart import DELIVERIES, Delivery
from dfuhil.sim.clock import ResetSignal, VirtualClock
from dfuhil.sim.uart_faults import Mangled, UartFaults

BITS_PER_BYTE = 10  # start + 8 data + stop
USB_BYTE_S = 1e-6  # USB full-speed bulk moves about 1 MB/s


class PtyUart:
    def __init__(
        self,
        clock: VirtualClock,
        baud: int = 115200,
        name: str = "uart",
        delivery: Delivery = "paced",
    ) -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"UART delivery must be one of {DELIVERIES}, not {delivery!r}")
        self.clock = clock
        self.baud = baud
        self.name = name
        self.delivery = delivery
        self.faults = UartFaults()
        self.on_reenumerate: Callable[[str], None] | None = None
        self.vanishes = 0
        self._port_lock = threading.Lock()
        self._master, self._slave, self.path = self._open_pty()
        self._rx: deque[int] = deque()
        self._rx_cond = threading.Condition()
        self._tx: deque[bytes] = deque()
        self._tx_busy = False
        self._tx_cond = threading.Condition()
        self._stop = threading.Event()
        self.dropped_tx = 0
        self._threads = [
            threading.Thread(target=self._rx_loop, name=f"{name}-rx", daemon=True),
            threading.Thread(target=self._tx_loop, name=f"{name}-tx", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _open_pty() -> tuple[int, int, str]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        return master, slave, os.ttyname(slave)

    @property
    def present(self) -> bool:
        """False while the port is gone (between a vanish and the new port)."""
        return self._master >= 0

    def vanish(self, down_s: float) -> None:
        """The port goes away (USB re-enumeration); a new one appears ``down_s`` device
        seconds later, with a new path. Bytes in flight are lost."""
        with self._port_lock:
            if self._master < 0:
                return
            old = (self._master, self._slave)
            self._master = self._slave = -1
            self.vanishes += 1
        for fd in old:
            with contextlib.suppress(OSError):
                os.close(fd)
        timer = threading.Timer(self.clock.wall(down_s), self._reappear)
        timer.daemon = True
        timer.start()

    def _reappear(self) -> None:
        if self._stop.is_set():
            return
        master, slave, path = self._open_pty()
        with self._port_lock:
            self._master, self._slave, self.path = master, slave, path
        if self.on_reenumerate is not None:
            self.on_reenumerate(path)

    def _mangle(self, mangled: Mangled) -> bytes:
        """Apply a stall and a vanish the line chose; the bytes that still get through."""
        if mangled.stall_s:
            self.clock.sleep(mangled.stall_s)
        if mangled.vanish:
            self.vanish(self.faults.faults.vanish_s)
        return mangled.data

    @property
    def byte_time(self) -> float:
        """Device seconds to move one byte (the baud rate, or USB's speed for bursts)."""
        return USB_BYTE_S if self.bursts else BITS_PER_BYTE / self.baud

    @property
    def bursts(self) -> bool:
        """Whether received bytes reach the firmware in bursts (USB CDC-ACM), not paced."""
        return self.delivery == "burst"

    # --- firmware side -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for transmission; the TX thread paces them onto the wire."""
        if data:
            with self._tx_cond:
                self._tx.append(bytes(data))
                self._tx_cond.notify()

    def read(self, max_bytes: int, timeout_s: float | None, cancel: threading.Event) -> bytes:
        """Bytes received so far (at most ``max_bytes``); waits up to ``timeout_s`` device seconds.

        Raises ResetSignal when ``cancel`` is set: the CPU that was reading got reset.
        """
        deadline = None if timeout_s is None else self.clock.now() + timeout_s
        with self._rx_cond:
            while not self._rx:
                if cancel.is_set():
                    raise ResetSignal
                remaining = None if deadline is None else deadline - self.clock.now()
                if remaining is not None and remaining <= 0:
                    return b""
                wait = 0.05 if remaining is None else min(0.05, self.clock.wall(remaining))
                self._rx_cond.wait(wait)
            n = min(max_bytes, len(self._rx))
            return bytes(self._rx.popleft() for _ in range(n))

    def flush_rx(self) -> None:
        with self._rx_cond:
            self._rx.clear()

    def wake(self) -> None:
        """Wake readers so they notice a reset."""
        with self._rx_cond:
            self._rx_cond.notify_all()

    # --- wire side -----------------------------------------------------------------------------

    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            master = self._master
            if master < 0:  # the port is gone until it re-enumerates
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([master], [], [], 0.1)
                if not ready:
                    continue
                chunk = os.read(master, 4096)
            except (OSError, ValueError) as exc:
                # EBADF: the port vanished under the read; EIO: no host has it open.
                if getattr(exc, "errno", errno.EBADF) in (errno.EAGAIN, errno.EIO, errno.EBADF):
                    time.sleep(0.01)
                    continue
                raise
            # The bytes arrive at the line rate, not all at once.
            self.clock.sleep(len(chunk) * self.byte_time)
            chunk = self._mangle(self.faults.to_board.apply(chunk))
            if not chunk:
                continue
            with self._rx_cond:
                self._rx.extend(chunk)
                self._rx_cond.notify_all()

    def _tx_loop(self) -> None:
        while not self._stop.is_set():
            with self._tx_cond:
                while not self._tx and not self._stop.is_set():
                    self._tx_cond.wait(0.1)
                if self._stop.is_set():
                    return
                data = self._tx.popleft()
                self._tx_busy = True
            for start in range(0, len(data), 64):
                chunk = data[start : start + 64]
                self.clock.sleep(len(chunk) * self.byte_time)
                chunk = self._mangle(self.faults.to_host.apply(chunk))
                master = self._master
                try:
                    if master < 0:
                        raise BlockingIOError
                    os.write(master, chunk)
                except (BlockingIOError, OSError):
                    # Nobody reads the port and the pty buffer is full, or the port is gone:
                    # the bytes are lost, as on a real UART with no listener.
                    self.dropped_tx += len(chunk)
            with self._tx_cond:
                self._tx_busy = bool(self._tx)
                self._tx_cond.notify_all()

    def wait_tx_idle(self, timeout_s: float) -> bool:
        """Wait until every byte the firmware wrote is on the pty (for test rigs that must not
        read one boot's late output as the next boot's); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._tx_cond:
            while self._tx or self._tx_busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._tx_cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        self._stop.set()
        with self._tx_cond:
            self._tx_cond.notify_all()
        for t in self._threads:
            t.join(timeout=2)
        with self._port_lock:
            fds = (self._master, self._slave)
            self._master = self._slave = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

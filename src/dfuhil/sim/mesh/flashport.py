"""How the mesh firmwares reach their own flash: straight through, or through a queue.

The serial bootloader drives the NVMC itself and the CPU stalls during each operation, so its
writes are synchronous (DirectFlash). The application shares flash with the SoftDevice and the
mesh stack: its DFU module pushes operations to a queue (mesh_flash) that drains in the
background, and while anything is queued every incoming DFU packet is refused with
NRF_ERROR_BUSY (nrf_mesh_dfu_rx: mesh_flash_in_progress()). QueuedFlash models that with one
worker thread; reads wait for the queue so the firmware always reads what it wrote.

Both only use FirmwareContext's flash calls, so NOR rules and flash timing are the board's.
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol

from dfuhil.sim.clock import ResetSignal
from dfuhil.sim.runtime import FirmwareContext


class FlashPort(Protocol):
    page_size: int

    def read(self, address: int, length: int) -> bytes: ...

    def write(self, address: int, data: bytes) -> None: ...

    def erase(self, address: int, length: int) -> None: ...

    def busy(self) -> bool: ...


class DirectFlash:
    """Every operation completes before the call returns."""

    def __init__(self, ctx: FirmwareContext) -> None:
        self.ctx = ctx
        self.page_size = ctx.board.chip.page_size

    def read(self, address: int, length: int) -> bytes:
        return self.ctx.read(address, length)

    def write(self, address: int, data: bytes) -> None:
        self.ctx.flash_write(address, data)

    def erase(self, address: int, length: int) -> None:
        """Erase every page that ``[address, address + length)`` touches."""
        for page in _pages(address, length, self.page_size):
            self.ctx.flash_erase_page(page)

    def busy(self) -> bool:
        return False


class QueuedFlash:
    """Operations queue up and complete in the background, in order."""

    POLL_WALL_S = 0.05

    def __init__(self, ctx: FirmwareContext) -> None:
        self.ctx = ctx
        self.page_size = ctx.board.chip.page_size
        self._ops: queue.Queue[tuple[str, int, bytes]] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"{ctx.board.name}-mesh-flash", daemon=True
        )
        self._thread.start()

    def read(self, address: int, length: int) -> bytes:
        self.drain()
        return self.ctx.read(address, length)

    def write(self, address: int, data: bytes) -> None:
        self._push("write", address, bytes(data))

    def erase(self, address: int, length: int) -> None:
        for page in _pages(address, length, self.page_size):
            self._push("erase", page, b"")

    def busy(self) -> bool:
        with self._idle:
            return self._pending > 0

    def drain(self) -> None:
        """Wait until every queued operation has completed (or the CPU was reset)."""
        with self._idle:
            while self._pending > 0:
                if self.ctx.cancel.is_set() or self._stop.is_set():
                    raise ResetSignal
                self._idle.wait(self.POLL_WALL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _push(self, kind: str, address: int, data: bytes) -> None:
        with self._idle:
            self._pending += 1
        self._ops.put((kind, address, data))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    kind, address, data = self._ops.get(timeout=self.POLL_WALL_S)
                except queue.Empty:
                    continue
                if kind == "write":
                    self.ctx.flash_write(address, data)
                else:
                    self.ctx.flash_erase_page(address)
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
        except ResetSignal:
            return


def _pages(address: int, length: int, page_size: int) -> range:
    first = address - address % page_size
    return range(first, address + max(length, 1), page_size)

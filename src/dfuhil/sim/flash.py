"""NOR flash with the semantics that make real provisioning bugs show up.

Erased cells read 0xFF; a write can only clear bits (new = old & data), so writing over
programmed flash without an erase silently corrupts, as on silicon; writes are whole 32-bit
words at word-aligned addresses (the NVMC's unit); erase works on whole pages. Each operation
costs the product specification's time on the farm's virtual clock and is counted, so benches
can report bytes erased, bytes written and modelled device time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from dfuhil.formats.chips import FlashTiming
from dfuhil.sim.clock import VirtualClock

WORD = 4


class FlashFault(Exception):
    """An operation the NVMC would refuse (misaligned, out of range)."""


@dataclass
class FlashStats:
    bytes_written: int = 0
    bytes_erased: int = 0
    pages_erased: int = 0
    erase_all: int = 0
    operations: int = 0
    device_time_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


# Called before each operation with (kind, address); may raise to simulate a power cut.
FaultHook = Callable[[str, int], None]


class NorFlash:
    def __init__(
        self,
        *,
        base: int,
        size: int,
        page_size: int,
        timing: FlashTiming,
        clock: VirtualClock,
        name: str = "flash",
    ) -> None:
        self.base = base
        self.size = size
        self.page_size = page_size
        self.timing = timing
        self.clock = clock
        self.name = name
        self.stats = FlashStats()
        self.fault_hook: FaultHook | None = None
        self._data = bytearray(b"\xff" * size)
        self._lock = threading.Lock()

    def contains(self, address: int, length: int = 1) -> bool:
        return self.base <= address and address + length <= self.base + self.size

    def read(self, address: int, length: int) -> bytes:
        self._check_range(address, length)
        offset = address - self.base
        with self._lock:
            return bytes(self._data[offset : offset + length])

    def write(self, address: int, data: bytes) -> None:
        """Program whole words; each bit can only go from 1 to 0."""
        if address % WORD or len(data) % WORD:
            raise FlashFault(
                f"{self.name}: NVMC writes whole words; 0x{address:08X}+{len(data)} is not aligned"
            )
        self._check_range(address, len(data))
        self._before("write", address)
        offset = address - self.base
        with self._lock:
            for i, byte in enumerate(data):
                self._data[offset + i] &= byte
        self._spend(len(data) // WORD * self.timing.write_word_s, written=len(data))

    def erase_page(self, address: int) -> None:
        page = address - (address - self.base) % self.page_size
        self._check_range(page, self.page_size)
        self._before("erase_page", page)
        offset = page - self.base
        with self._lock:
            self._data[offset : offset + self.page_size] = b"\xff" * self.page_size
        self.stats.pages_erased += 1
        self._spend(self.timing.erase_page_s, erased=self.page_size)

    def erase_all(self) -> None:
        self._before("erase_all", self.base)
        with self._lock:
            self._data[:] = b"\xff" * self.size
        self.stats.erase_all += 1
        self._spend(self.timing.erase_all_s, erased=self.size)

    def load(self, address: int, data: bytes) -> None:
        """Put bytes in place with no cost or semantics: for restoring a saved board only."""
        self._check_range(address, len(data))
        offset = address - self.base
        with self._lock:
            self._data[offset : offset + len(data)] = data

    def _before(self, kind: str, address: int) -> None:
        self.stats.operations += 1
        if self.fault_hook is not None:
            self.fault_hook(kind, address)

    def _spend(self, device_s: float, *, written: int = 0, erased: int = 0) -> None:
        self.stats.bytes_written += written
        self.stats.bytes_erased += erased
        self.stats.device_time_s += device_s
        self.clock.sleep(device_s)

    def _check_range(self, address: int, length: int) -> None:
        if length < 0 or not self.contains(address, max(length, 1)):
            raise FlashFault(
                f"{self.name}: 0x{address:08X}+{length} is outside "
                f"0x{self.base:08X}..0x{self.base + self.size:08X}"
            )

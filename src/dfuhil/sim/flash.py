"""NOR flash with the semantics that make real provisioning bugs show up.

Erased cells read 0xFF; a write can only clear bits (new = old & data), so writing over
programmed flash without an erase silently corrupts, as on silicon; writes are whole 32-bit
words at word-aligned addresses (the NVMC's unit); erase works on whole pages. Each operation
costs the product specification's time on the farm's virtual clock and is counted, so benches
can report bytes erased, bytes written and modelled device time.

A power cut (the fault hook raising) normally lands *before* an operation, which is then not
performed at all. With :meth:`NorFlash.tear_next_cut` armed, the hook calls
:meth:`NorFlash.tear_interrupted` before it cuts, and the cut lands *inside* the operation: the
page is left torn as :mod:`dfuhil.sim.torn` models (partly written or partly erased words), and
the page stays marked torn until it is erased whole.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from dfuhil.formats.chips import FlashTiming
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.torn import Tear, tear_erase, tear_write

log = logging.getLogger(__name__)

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
# Leaves an interrupted operation's bytes (in place) as the cut would: (words done, words torn).
TearFn = Callable[[bytearray, random.Random], tuple[int, int]]
_Pending = tuple[str, int, int, TearFn]


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
        self.torn_pages: set[int] = set()  # pages a cut tore, until erased whole
        self.last_tear: Tear | None = None
        self._tear_seed: int | None = None
        self._op = threading.local()  # the operation under way in each thread (for a tear)
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
        self._before("write", address, len(data), lambda old, rng: tear_write(old, data, rng))
        offset = address - self.base
        with self._lock:
            for i, byte in enumerate(data):
                self._data[offset + i] &= byte
        self._spend(len(data) // WORD * self.timing.write_word_s, written=len(data))

    def erase_page(self, address: int) -> None:
        page = address - (address - self.base) % self.page_size
        self._check_range(page, self.page_size)
        offset = page - self.base
        self._before("erase_page", page, self.page_size, tear_erase)
        with self._lock:
            self._data[offset : offset + self.page_size] = b"\xff" * self.page_size
            self.torn_pages.discard(page)
        self.stats.pages_erased += 1
        self._spend(self.timing.erase_page_s, erased=self.page_size)

    def erase_all(self) -> None:
        self._before("erase_all", self.base, self.size, tear_erase)
        with self._lock:
            self._data[:] = b"\xff" * self.size
            self.torn_pages.clear()
        self.stats.erase_all += 1
        self._spend(self.timing.erase_all_s, erased=self.size)

    def load(self, address: int, data: bytes) -> None:
        """Put bytes in place with no cost or semantics: for restoring a saved board only."""
        self._check_range(address, len(data))
        offset = address - self.base
        with self._lock:
            self._data[offset : offset + len(data)] = data
            self.torn_pages -= set(self._pages(address, len(data)))

    # --- torn operations -------------------------------------------------------------------------

    def tear_next_cut(self, seed: int | None) -> None:
        """With a seed, the next cut the fault hook raises tears the operation it interrupts;
        with None, the cut lands before it (the operation is not performed at all)."""
        self._tear_seed = seed

    def is_torn(self, address: int, length: int) -> bool:
        """Whether ``[address, address + length)`` touches a page a cut left torn."""
        return any(page in self.torn_pages for page in self._pages(address, length))

    def _pages(self, address: int, length: int) -> range:
        first = address - (address - self.base) % self.page_size
        return range(first, address + max(length, 1), self.page_size)

    def tear_interrupted(self) -> Tear | None:
        """For a fault hook about to cut the power: with a seed armed (:meth:`tear_next_cut`),
        leave the operation under way in this thread torn, before the board goes dark (so
        nothing sees the board off and the page not yet torn). Returns what it left."""
        pending: _Pending | None = getattr(self._op, "pending", None)
        seed, self._tear_seed = self._tear_seed, None
        if pending is None or seed is None:
            return None
        self._tear(*pending, seed)
        return self.last_tear

    def _before(self, kind: str, address: int, length: int, tear: TearFn) -> None:
        self.stats.operations += 1
        hook = self.fault_hook
        if hook is None:
            return
        self._op.pending = (kind, address, length, tear)
        try:
            hook(kind, address)  # raises for a power cut: the operation goes no further
        finally:
            self._op.pending = None

    def _tear(self, kind: str, address: int, length: int, tear: TearFn, seed: int) -> None:
        offset = address - self.base
        rng = random.Random(f"{seed}:{kind}:{address:#x}")
        with self._lock:
            region = bytearray(self._data[offset : offset + length])
            done, torn = tear(region, rng)
            self._data[offset : offset + length] = region
            self.torn_pages |= set(self._pages(address, length))
        self.last_tear = Tear(kind, address, length // WORD, done, torn, seed)
        log.info("%s: %s", self.name, self.last_tear.describe())

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

"""What a NOR page holds when the supply fails in the middle of an erase or a write (seeded).

MCUboot's simulator, and the farm's whole-operation cut, interrupt *between* flash operations.
On silicon the cut lands inside one: Zephyr's nRF flash driver (``drivers/flash/soc_flash_nrf.c``)
programs a buffer one 32-bit word per NVMC cycle through ``nrfx_nvmc_word_write`` (Zephyr's own
flash tests wrap that function to count the writes), and a page erase is one long operation
(t_ERASEPAGE, 89.7 ms in dfuhil.formats.chips). Only the power-fail comparator stops the NVMC from
starting a write at low supply (nRF52840 PS v1.7, POFWARN), and POFCON is off at reset;
nothing finishes an operation the supply dropped under. Software that lives on NOR assumes
such torn data: MCUboot's status scan reports "an error writing status on the last swap"
(swap_scratch.c:124-126 at v2.1.0), and Zephyr's NVS writes data before CRC-protected metadata
so a cut-off write is ignored. The model, per cut, from the seed:

- **torn write** (``write`` of n words): the words before a seeded word ``k`` were programmed,
  the words after it were not; word ``k`` has a seeded subset of the bits it was clearing
  cleared (NOR only ever clears bits in a write, so no bit goes to 1).
- **torn erase** (``erase_page``, ``erase_all``): the erase had a seeded progress ``p``; each
  word is, with probability ``p``, fully erased, else with probability ``(1 - p) / 2`` partly
  erased (a seeded subset of its 0 bits read 1), else untouched.

Not modelled (real silicon can be worse): an erase's pre-programming phase (bits going to 0),
and marginal cells that read differently on each read. Each tear is reported as a
:class:`Tear` so a campaign can say what the page was left with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WORD = 4
ALL_ONES = 0xFFFFFFFF


@dataclass(frozen=True)
class Tear:
    """What one torn operation left behind (for logs and campaign reports)."""

    kind: str
    address: int
    words: int
    done: int  # words fully programmed / erased (that were not already)
    torn: int  # words partly programmed / erased
    seed: int

    def describe(self) -> str:
        unchanged = self.words - self.done - self.torn
        verb = "erased" if self.kind.startswith("erase") else "written"
        return (
            f"torn {self.kind} at 0x{self.address:08X} (seed {self.seed}): of {self.words} "
            f"words {self.done} {verb}, {self.torn} partly, {unchanged} unchanged"
        )


def _word(data: bytearray | bytes, i: int) -> int:
    return int.from_bytes(data[i * WORD : i * WORD + WORD], "little")


def _put(data: bytearray, i: int, value: int) -> None:
    data[i * WORD : i * WORD + WORD] = value.to_bytes(WORD, "little")


def _some(bits: int, rng: random.Random) -> int:
    """A seeded, non-empty (when ``bits`` is) strict subset of ``bits`` where one exists."""
    chosen = bits & rng.getrandbits(32)
    if bits and bin(bits).count("1") > 1 and chosen in (0, bits):
        low = bits & -bits
        chosen = low if chosen == 0 else bits & ~low
    return chosen


def tear_write(old: bytearray, data: bytes, rng: random.Random) -> tuple[int, int]:
    """Apply a write interrupted at a seeded word to ``old`` (in place): (done, torn)."""
    words = len(data) // WORD
    k = rng.randrange(words)
    for i in range(k):
        _put(old, i, _word(old, i) & _word(data, i))
    current = _word(old, k)
    clearing = current & ~_word(data, k) & ALL_ONES
    _put(old, k, current & ~_some(clearing, rng))
    return k, 1 if clearing else 0


def tear_erase(page: bytearray, rng: random.Random) -> tuple[int, int]:
    """Apply an erase interrupted at a seeded progress to ``page`` (in place): (done, torn)."""
    progress = rng.random()
    done = torn = 0
    for i in range(len(page) // WORD):
        current = _word(page, i)
        u = rng.random()
        if u < progress:
            new = ALL_ONES
        elif u < progress + (1 - progress) / 2:
            new = current | _some(~current & ALL_ONES, rng)
        else:
            new = current
        if new != current:
            _put(page, i, new)
            if new == ALL_ONES:
                done += 1
            else:
                torn += 1
    return done, torn

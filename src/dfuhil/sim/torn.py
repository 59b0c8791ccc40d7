"""What a NOR page holds when the supply fails in the middle of an erase or a write (seeded).

MCUboot's simulator, and the farm's whole-operation cut, interrupt *between* flash operations.
On silicon the cut lands inside one: the NVMC programs a buffer word after word (Zephyr's
``drivers/flash/soc_flash_nrf.c`` writes one 32-bit word per NVMC program cycle) and erases a
page as one long operation (t_ERASEPAGE, ~85 ms on an nRF52840). Nordic's product
specifications promise nothing about a word or page whose write or erase did not finish (the
NVMC chapter only says a write or erase must not be interrupted; see also the nRF Connect SDK's
partial-erase notes), and MCUboot's own design documents treat such data as possible
(``docs/design.md``, "Swap status": a status write interrupted by a reset; Zephyr's NVS and
ZMS document the same "torn write" case for their ATEs). The model, per cut, from the seed:

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

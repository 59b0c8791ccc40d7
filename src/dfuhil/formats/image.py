"""Intel HEX images as what they put into flash: runs of bytes, split into flash and UICR parts.

Loading goes through intelhex; every failure becomes an InputError naming the file, so a broken
hex is refused before any board is touched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from intelhex import HexReaderError, IntelHex

from dfuhil.errors import InputError, Problem
from dfuhil.formats.chips import UICR_BASE, Chip

ERASED = 0xFF


@dataclass(frozen=True)
class Run:
    """A contiguous run of bytes at ``start``."""

    start: int
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(frozen=True)
class FlashImage:
    path: Path
    runs: tuple[Run, ...]

    @classmethod
    def load(cls, path: Path, *, field: str = "") -> FlashImage:
        ih = IntelHex()
        try:
            ih.loadhex(str(path))
        except FileNotFoundError:
            raise InputError(
                Problem(
                    str(path),
                    None,
                    field,
                    "file not found (run `make firmware` for the "
                    "virtual farm's sample images, or drop your image there)",
                )
            ) from None
        except (HexReaderError, ValueError, UnicodeDecodeError) as exc:
            raise InputError(
                Problem(str(path), None, field, f"not a valid Intel HEX file: {exc}")
            ) from None
        runs = tuple(
            Run(start, bytes(ih.tobinarray(start=start, end=end - 1)))
            for start, end in ih.segments()
        )
        if not runs:
            raise InputError(Problem(str(path), None, field, "the hex file contains no data"))
        return cls(path=path, runs=runs)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for run in self.runs:
            h.update(run.start.to_bytes(4, "little") + run.data)
        return h.hexdigest()

    @property
    def size(self) -> int:
        return sum(len(r.data) for r in self.runs)

    def flash_runs(self) -> list[Run]:
        return [r for r in self.runs if r.start < UICR_BASE]

    def uicr_runs(self) -> list[Run]:
        return [r for r in self.runs if r.start >= UICR_BASE]

    def flash_span(self) -> tuple[int, int] | None:
        runs = self.flash_runs()
        if not runs:
            return None
        return runs[0].start, max(r.end for r in runs)

    def pages(self, chip: Chip) -> dict[int, bytes]:
        """Desired content of every flash page the image touches: its bytes over erased flash.

        This is what ``nrfjprog --program --sectorerase`` leaves: a touched page is erased, so
        bytes of it that the image does not cover read 0xFF.
        """
        pages: dict[int, bytearray] = {}
        size = chip.page_size
        for run in self.flash_runs():
            offset = 0
            while offset < len(run.data):
                address = run.start + offset
                page = address - address % size
                buf = pages.setdefault(page, bytearray(b"\xff" * size))
                n = min(len(run.data) - offset, page + size - address)
                buf[address - page : address - page + n] = run.data[offset : offset + n]
                offset += n
        return {page: bytes(buf) for page, buf in sorted(pages.items())}

    def uicr_words(self, chip: Chip) -> dict[int, int]:
        """UICR content as word address -> value (bytes the image leaves out stay 0xFF)."""
        words: dict[int, bytearray] = {}
        for run in self.uicr_runs():
            for i, byte in enumerate(run.data):
                address = run.start + i
                word = address - address % 4
                words.setdefault(word, bytearray(b"\xff" * 4))[address % 4] = byte
        return {a: int.from_bytes(w, "little") for a, w in sorted(words.items())}

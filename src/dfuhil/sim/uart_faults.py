"""Faults on a virtual board's serial line: what a noisy cable or a flaky USB hub does to bytes.

A real lab line corrupts bits (ground loops, long unshielded cables), loses bytes (a UART
overrun, a USB-serial bridge dropping a packet), repeats them (a bridge resending), injects
bursts of garbage (a hot-plugged cable, a board resetting mid-byte), stalls (a USB hub busy with
another device) and vanishes altogether (USB re-enumeration: the port closes and comes back).
:class:`LineMangler` applies those faults to the bytes of one direction of a
:class:`~dfuhil.sim.uart.PtyUart`, byte by byte, from its own seeded random stream: the same
seed and the same bytes give the same faults, so a failing campaign run can be replayed.

The settings (:class:`~dfuhil.farm.model.LineFaults`) come from boards.yaml
(``virtual_farm.line_faults``) or from the debug port at run time (``FaultInjector``).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import ValidationError

from dfuhil.farm.model import LineFaults
from dfuhil.farm.schema import LineFaultsSchema

__all__ = [
    "Direction",
    "LineFaults",
    "LineMangler",
    "LineStats",
    "Mangled",
    "UartFaults",
    "checked_line_faults",
]

Direction = Literal["to_board", "to_host"]


def checked_line_faults(settings: dict[str, object]) -> LineFaults:
    """Settings as boards.yaml spells them, checked the same way; ValueError names each bad
    key and what is allowed."""
    try:
        checked = LineFaultsSchema.model_validate(settings)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"bad line faults: {problems}") from None
    return LineFaults(**checked.model_dump())


@dataclass
class LineStats:
    """What the faults did to one direction, since the faults were last set."""

    bytes_in: int = 0
    flipped: int = 0
    dropped: int = 0
    duplicated: int = 0
    garbage: int = 0
    stalls: int = 0
    vanishes: int = 0

    @property
    def faults(self) -> int:
        return (
            self.flipped
            + self.dropped
            + self.duplicated
            + self.garbage
            + self.stalls
            + (self.vanishes)
        )


@dataclass(frozen=True)
class Mangled:
    """One chunk after the line: the bytes that arrive, a stall before them, a vanish after."""

    data: bytes
    stall_s: float = 0.0
    vanish: bool = False


@dataclass
class LineMangler:
    """The faults of one direction, with their own random stream (seed, direction)."""

    faults: LineFaults
    direction: Direction
    stats: LineStats = field(default_factory=LineStats)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.faults.seed}/{self.direction}")
        # Probability that a byte has at least one flipped bit (8 data bits per byte).
        self._p_byte_flip = 1.0 - (1.0 - self.faults.bit_error_rate) ** 8
        self._countdown = self.faults.vanish_after_bytes

    @property
    def active(self) -> bool:
        return self.faults.applies_to(self.direction) and self.faults.any()

    def apply(self, data: bytes) -> Mangled:
        if not self.active or not data:
            return Mangled(bytes(data))
        f, rng, stats = self.faults, self._rng, self.stats
        out = bytearray()
        stall = 0.0
        vanish = False
        for byte in data:
            stats.bytes_in += 1
            if f.stall_rate and rng.random() < f.stall_rate:
                stats.stalls += 1
                stall += f.stall_s
            if f.garbage_rate and rng.random() < f.garbage_rate:
                burst = rng.randbytes(rng.randint(1, f.garbage_len))
                stats.garbage += len(burst)
                out += burst
            if f.drop_rate and rng.random() < f.drop_rate:
                stats.dropped += 1
            else:
                if self._p_byte_flip and rng.random() < self._p_byte_flip:
                    byte ^= 1 << rng.randrange(8)
                    stats.flipped += 1
                out.append(byte)
                if f.duplicate_rate and rng.random() < f.duplicate_rate:
                    stats.duplicated += 1
                    out.append(byte)
            if self._countdown is not None:
                self._countdown -= 1
                if self._countdown <= 0:  # the port goes away right after this byte
                    self._countdown = None
                    vanish = True
                    break
            if f.vanish_rate and rng.random() < f.vanish_rate:
                vanish = True
                break
        if vanish:
            stats.vanishes += 1
        return Mangled(bytes(out), stall, vanish)


class UartFaults:
    """Both directions of one board's line; replaced whole when the settings change."""

    def __init__(self, faults: LineFaults | None = None) -> None:
        self.set(faults or LineFaults())

    def set(self, faults: LineFaults) -> None:
        self.faults = faults
        self.to_board = LineMangler(faults, "to_board")
        self.to_host = LineMangler(faults, "to_host")

    def describe(self) -> dict[str, object]:
        """Settings and counters, as the debug port answers them."""
        return {
            "faults": asdict(self.faults),
            "to_board": asdict(self.to_board.stats),
            "to_host": asdict(self.to_host.stats),
        }

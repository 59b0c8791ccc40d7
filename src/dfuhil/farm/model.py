"""The farm as the rest of dfuhil sees it: resolved, checked, immutable.

Everything here has already been validated by :mod:`dfuhil.farm.loader`: chips are catalogue
objects, references are followed, defaults are filled in, paths are absolute. Code that takes a
:class:`BoardSpec` never has to re-check the YAML or guess a default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dfuhil.errors import InputError, Problem
from dfuhil.formats.chips import BoardType, Chip
from dfuhil.formats.meshdfu import STARTED_APPLICATION_PATTERN

VIRTUAL_PORT = "virtual"


@dataclass(frozen=True)
class Region:
    """A named span of flash ``[start, end)``."""

    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        """First address past the region."""
        return self.start + self.size

    def contains(self, addr: int, length: int = 1) -> bool:
        """Whether ``[addr, addr + length)`` lies entirely inside the region."""
        return self.start <= addr and addr + length <= self.end

    def __str__(self) -> str:
        return f"{self.name} 0x{self.start:X}..0x{self.end:X}"


@dataclass(frozen=True)
class FlashLayout:
    """How one chip's flash is carved up, by region name (e.g. ``bootloader``, ``slot0``)."""

    name: str
    chip: Chip
    regions: dict[str, Region]

    def region(self, name: str) -> Region:
        """The region called ``name``; the KeyError lists what the layout does have."""
        try:
            return self.regions[name]
        except KeyError:
            have = ", ".join(self.regions) or "none"
            raise KeyError(
                f"flash layout {self.name!r} has no region {name!r}; its regions: {have}"
            ) from None

    def find(self, name: str) -> Region | None:
        """The region called ``name`` or None, for code that has a fallback."""
        return self.regions.get(name)

    def __hash__(self) -> int:
        # The dict would make the generated hash fail; boards are used as cache keys.
        return hash((self.name, self.chip, tuple(self.regions.items())))


@dataclass(frozen=True)
class ImageRef:
    """One image of a firmware set; ``file`` is absolute (resolved against the YAML's folder)."""

    role: str
    file: Path
    banner: str | None
    protocol: str = "text"  # "text" (banner on the console) or "mesh-serial" (binary events)

    @property
    def boot_pattern(self) -> str | None:
        """What the board's console shows once this image has booted (None: nothing known).

        Mesh serial firmware prints no text; the console renders its DEVICE_STARTED event.
        """
        if self.protocol == "mesh-serial":
            return STARTED_APPLICATION_PATTERN
        return self.banner


@dataclass(frozen=True)
class FirmwareSet:
    """The images a board is provisioned with; any of them may be absent."""

    name: str
    chip: Chip
    softdevice: ImageRef | None
    bootloader: ImageRef | None
    application: ImageRef | None
    device_page: ImageRef | None
    # Not flashed: the application the DFU suites send over the air (the guide sends blinky).
    dfu_update: ImageRef | None = None

    def images(self) -> list[ImageRef]:
        """Present images in provisioning order: the SoftDevice first, the device page last."""
        ordered = (self.softdevice, self.bootloader, self.application, self.device_page)
        return [image for image in ordered if image is not None]


@dataclass(frozen=True)
class ProbeSpec:
    """How to reach the board's SWD port."""

    backend: Literal["jlink", "virtual"]
    snr: int
    ip: str | None
    speed_khz: int

    def __str__(self) -> str:
        where = f" @{self.ip}" if self.ip else ""
        return f"{self.backend} {self.snr}{where}"


@dataclass(frozen=True)
class SerialSpec:
    """The console UART: a device path, an rfc2217://, socket:// URL, or ``virtual``."""

    port: str
    baud: int
    rtscts: bool

    @property
    def is_virtual(self) -> bool:
        """The virtual farm assigns the real port at run time."""
        return self.port == VIRTUAL_PORT


@dataclass(frozen=True)
class LedSpec:
    """LED pins as flat GPIO numbers; empty when neither the file nor the board type says."""

    pins: tuple[int, ...]
    active_low: bool


@dataclass(frozen=True)
class BoardSpec:
    """One board of the farm, fully resolved; ``line`` is where it starts in the YAML."""

    name: str
    chip: Chip
    board_type: BoardType | None
    probe: ProbeSpec
    serial: SerialSpec
    leds: LedSpec
    roles: tuple[str, ...]
    firmware: FirmwareSet | None
    layout: FlashLayout
    line: int

    @property
    def is_virtual(self) -> bool:
        """Whether the board lives in the virtual farm rather than on a bench."""
        return self.probe.backend == "virtual"


@dataclass(frozen=True)
class RadioSpec:
    """The virtual farm's radio medium (real boards share the real air, nothing to configure)."""

    loss: float = 0.0  # probability that one receiver misses one packet
    neighbours: tuple[tuple[str, tuple[str, ...]], ...] = ()  # empty: everyone hears everyone
    seed: int = 1

    def hears(self, sender: str, receiver: str) -> bool:
        """Whether ``receiver`` is in radio range of ``sender`` (links are symmetric)."""
        if sender == receiver:
            return False
        if not self.neighbours:
            return True
        table = dict(self.neighbours)
        return receiver in table.get(sender, ()) or sender in table.get(receiver, ())


@dataclass(frozen=True)
class Farm:
    """Every board of one boards.yaml, plus the virtual farm's settings."""

    path: Path
    boards: tuple[BoardSpec, ...]
    time_scale: float
    radio: RadioSpec = RadioSpec()

    def names(self) -> list[str]:
        """Board names in file order."""
        return [b.name for b in self.boards]

    def board(self, name: str) -> BoardSpec:
        """The board called ``name``; a typo gets an InputError listing the names that exist."""
        for spec in self.boards:
            if spec.name == name:
                return spec
        raise InputError(
            Problem(
                file=str(self.path),
                line=None,
                field="",
                message=f"no board named {name!r}; boards there: {', '.join(self.names())}",
            )
        )

    def select(self, names: Sequence[str] = (), roles: Sequence[str] = ()) -> list[BoardSpec]:
        """Boards in file order that are named in ``names`` (all if empty) and carry every role.

        Unknown names are an error (a typo must not shrink a nightly run silently); a role that
        no board has just selects nothing, so the caller can skip with a reason.
        """
        chosen = [self.board(n) for n in names] if names else list(self.boards)
        wanted = set(roles)
        picked = {b.name for b in chosen if wanted <= set(b.roles)}
        return [b for b in self.boards if b.name in picked]

    def virtual_boards(self) -> list[BoardSpec]:
        """The boards the virtual farm process has to simulate."""
        return [b for b in self.boards if b.is_virtual]

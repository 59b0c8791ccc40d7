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
from dfuhil.formats.ble_link import STOCK_LINK, LinkConfig
from dfuhil.formats.chips import BoardType, Chip
from dfuhil.formats.mcuboot import PublicKey, load_public_key
from dfuhil.formats.mcuboot_build import FlashGeometry, SerialRecovery, Slot
from dfuhil.formats.mcuboot_trailer import Mode, TrailerLayout
from dfuhil.formats.meshdfu import STARTED_APPLICATION_PATTERN
from dfuhil.formats.smp_uart import SmpUart

VIRTUAL_PORT = "virtual"

# MCUboot's image slots under their Partition Manager names (nRF Connect SDK).
PRIMARY_SLOT = "mcuboot_primary"
SECONDARY_SLOT = "mcuboot_secondary"
SCRATCH_AREA = "mcuboot_scratch"
# Provisioning looks regions up by image role; an MCUboot layout names them the PM way.
ROLE_REGIONS: dict[str, tuple[str, ...]] = {
    "bootloader": ("mcuboot",),
    "application": (PRIMARY_SLOT, "app"),
}


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
class McubootSlots:
    """MCUboot's areas in a layout; secondary is None for single-slot, scratch for non-scratch."""

    primary: Region | None
    secondary: Region | None
    scratch: Region | None

    def geometry(
        self,
        mode: Mode,
        *,
        sector_size: int,
        max_align: int = 8,
        write_size: int = 4,
        max_sectors: int = 128,
    ) -> FlashGeometry:
        """The slots as the virtual MCUboot and app are built with (descriptor params)."""
        if self.primary is None:
            raise ValueError(f"no {PRIMARY_SLOT} region: MCUboot has nowhere to boot from")

        def slot(region: Region | None) -> Slot | None:
            return Slot(region.start, region.size) if region is not None else None

        primary = slot(self.primary)
        assert primary is not None
        return FlashGeometry(
            mode=mode,
            primary=primary,
            secondary=None if mode == "single-slot" else slot(self.secondary),
            scratch=slot(self.scratch) if mode == "swap-scratch" else None,
            sector_size=sector_size,
            max_align=max_align,
            write_size=write_size,
            max_sectors=max_sectors,
        )


@dataclass(frozen=True)
class FlashLayout:
    """How one chip's flash is carved up, by region name (e.g. ``bootloader``, ``slot0``).

    ``containers`` names regions that span others (Partition Manager ``span`` partitions such
    as ``mcuboot_primary`` = ``mcuboot_pad`` + ``app``); ``source`` is the pm_static.yml the
    regions came from, if any.
    """

    name: str
    chip: Chip
    regions: dict[str, Region]
    containers: frozenset[str] = frozenset()
    source: Path | None = None

    def region(self, name: str) -> Region:
        """The region called ``name``; the KeyError lists what the layout does have."""
        found = self.find(name)
        if found is None:
            have = ", ".join(self.regions) or "none"
            raise KeyError(
                f"flash layout {self.name!r} has no region {name!r}; its regions: {have}"
            )
        return found

    def find(self, name: str) -> Region | None:
        """The region called ``name`` or None, for code that has a fallback.

        An image role (``bootloader``, ``application``) missing from an MCUboot layout falls
        back to its Partition Manager name (``mcuboot``, ``mcuboot_primary``).
        """
        if name in self.regions:
            return self.regions[name]
        for alias in ROLE_REGIONS.get(name, ()):
            if alias in self.regions:
                return self.regions[alias]
        return None

    def mcuboot_slots(self) -> McubootSlots:
        """MCUboot's primary, secondary and scratch areas (PM names), each None if absent."""
        return McubootSlots(
            primary=self.regions.get(PRIMARY_SLOT),
            secondary=self.regions.get(SECONDARY_SLOT),
            scratch=self.regions.get(SCRATCH_AREA),
        )

    def __hash__(self) -> int:
        # The dict would make the generated hash fail; boards are used as cache keys.
        return hash((self.name, self.chip, tuple(self.regions.items()), self.containers))


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
class McubootSpec:
    """What a board's MCUboot was built with (the ``mcuboot:`` block of its firmware set).

    ``key`` is the PEM file of the key MCUboot trusts (absolute); ``builds`` are the unsigned
    application builds suites sign at test time, by name.
    """

    mode: Mode
    key: Path
    header_size: int = 0x200
    max_align: int = 8
    write_size: int = 4
    max_sectors: int = 128
    downgrade_prevention: bool = False
    allow_sample_keys: bool = False
    confirm: Literal["host", "app"] = "host"
    transports: tuple[str, ...] = ("serial",)
    dfu_lock_timeout_ms: int = 0
    serial_recovery: SerialRecovery | None = None
    builds: tuple[tuple[str, Path], ...] = ()
    smp_uart: SmpUart | None = None  # the app's SMP UART as boards.yaml states it
    ble_link: LinkConfig = STOCK_LINK  # the app's Bluetooth LE link (stock unless stated)

    @property
    def uart(self) -> SmpUart:
        """The app's SMP UART: as stated, else Zephyr's stock one reached in bursts."""
        return self.smp_uart if self.smp_uart is not None else SmpUart()

    def public_key(self) -> PublicKey:
        """The key MCUboot verifies with (KeyFileError if the file is unusable)."""
        return load_public_key(self.key)

    @property
    def can_sign(self) -> bool:
        """Whether ``key`` holds a private key, so suites can sign updates with it."""
        try:
            return b"PRIVATE KEY" in self.key.read_bytes()
        except OSError:
            return False

    def build(self, name: str) -> Path:
        """The unsigned build called ``name``; the KeyError lists what there is."""
        for build_name, path in self.builds:
            if build_name == name:
                return path
        have = ", ".join(n for n, _ in self.builds) or "none"
        raise KeyError(f"no MCUboot build {name!r}; builds: {have}")

    @property
    def build_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.builds)

    def geometry(self, layout: FlashLayout) -> FlashGeometry:
        """Slots and trailer geometry of this MCUboot on ``layout`` (descriptor params)."""
        return layout.mcuboot_slots().geometry(
            self.mode,
            sector_size=layout.chip.page_size,
            max_align=self.max_align,
            write_size=self.write_size,
            max_sectors=self.max_sectors,
        )

    def trailer(self, slot_size: int) -> TrailerLayout:
        """The trailer this mode keeps at the end of a slot of ``slot_size`` bytes."""
        return TrailerLayout.for_mode(
            self.mode,
            slot_size,
            max_align=self.max_align,
            write_size=self.write_size,
            max_sectors=self.max_sectors,
        )


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
    mcuboot: McubootSpec | None = None  # set when the bootloader is MCUboot

    def images(self) -> list[ImageRef]:
        """Present images in provisioning order: the SoftDevice first, the device page last."""
        ordered = (self.softdevice, self.bootloader, self.application, self.device_page)
        return [image for image in ordered if image is not None]


JLINK_REMOTE_PORT = 19020  # SEGGER J-Link Remote Server's default port


@dataclass(frozen=True)
class ProbeSpec:
    """How to reach the board's SWD port.

    ``backend`` is the tool that drives a real J-Link (``nrfutil``, ``pynrfjprog``, or
    ``jlink``, pynrfjprog's former name here) or ``virtual``; ``chosen`` says where it came
    from (``board``, ``farm``: the farm's probe_backend, ``auto``: nrfutil found on PATH or not).
    ``ip``/``port`` are the J-Link Remote Server, if the probe sits behind one.
    """

    backend: Literal["nrfutil", "pynrfjprog", "jlink", "virtual"]
    snr: int
    ip: str | None
    speed_khz: int
    port: int | None = None
    allow_recover: bool = False
    chosen: Literal["board", "farm", "auto"] = "board"

    @property
    def tool(self) -> Literal["nrfutil", "pynrfjprog", "virtual"]:
        """The backend, with the former spelling ``jlink`` read as pynrfjprog."""
        return "pynrfjprog" if self.backend == "jlink" else self.backend

    @property
    def kind(self) -> Literal["jlink", "virtual"]:
        """What the probe is, whatever drives it (one J-Link is one lease under any tool)."""
        return "virtual" if self.backend == "virtual" else "jlink"

    @property
    def remote(self) -> str | None:
        """``HOST:PORT`` of the J-Link Remote Server, or None for a local probe."""
        if self.ip is None:
            return None
        return f"{self.ip}:{self.port or JLINK_REMOTE_PORT}"

    def __str__(self) -> str:
        where = f" @{self.ip}" if self.ip else ""
        where += f":{self.port}" if self.ip and self.port else ""
        how = f" ({self.chosen})" if self.chosen != "board" else ""
        return f"{self.backend}{how} {self.snr}{where}"


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
class BleSpec:
    """The board's advertised name (CONFIG_BT_DEVICE_NAME) and, if known, its address."""

    name: str
    address: str | None = None


@dataclass(frozen=True)
class PowerSpec:
    """A board's supply switch, as labgrid's NetworkPowerPort: model, host, outlet index."""

    model: str
    host: str
    index: int

    def __str__(self) -> str:
        return f"{self.model} PDU {self.host} outlet {self.index}"


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
    smp_udp: str | None = None  # "virtual" or "host:port": SMP over UDP, if the board has it
    place: str | None = None  # the labgrid place holding it, when it lives on another lab host
    lab_host: str | None = None  # the lab host whose exporter publishes it
    ble: BleSpec | None = None  # how a host finds it on the air (SMP over Bluetooth LE)
    power: PowerSpec | None = None  # its supply switch, reached through its labgrid place

    @property
    def is_virtual(self) -> bool:
        """Whether the board lives in the virtual farm rather than on a bench."""
        return self.probe.backend == "virtual"

    @property
    def mcuboot(self) -> McubootSpec | None:
        """The board's MCUboot settings, if its firmware set has an MCUboot."""
        return self.firmware.mcuboot if self.firmware is not None else None


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


LineDirection = Literal["both", "to_board", "to_host"]
LINE_DIRECTIONS: tuple[LineDirection, ...] = ("both", "to_board", "to_host")


@dataclass(frozen=True)
class LineFaults:
    """Faults on one virtual board's serial line (dfuhil.sim.uart_faults applies them).

    Rates are probabilities per byte on the wire (``bit_error_rate`` per bit); a garbage burst
    is 1..``garbage_len`` random bytes; a stall holds the line for ``stall_s`` device seconds;
    the port vanishes (USB re-enumeration) after ``vanish_after_bytes`` bytes or at
    ``vanish_rate`` per byte, and a new port appears ``vanish_s`` device seconds later.
    ``seed`` makes every run with the same bytes fault the same way.
    """

    bit_error_rate: float = 0.0
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    garbage_rate: float = 0.0
    garbage_len: int = 16
    stall_rate: float = 0.0
    stall_s: float = 0.5
    vanish_rate: float = 0.0
    vanish_after_bytes: int | None = None
    vanish_s: float = 1.0
    direction: LineDirection = "both"
    seed: int = 1

    def any(self) -> bool:
        """Whether any fault is switched on."""
        rates = (self.bit_error_rate, self.drop_rate, self.duplicate_rate, self.garbage_rate)
        return (
            any(rates)
            or bool(self.stall_rate or self.vanish_rate)
            or (self.vanish_after_bytes is not None)
        )

    def applies_to(self, direction: str) -> bool:
        return self.direction in ("both", direction)


@dataclass(frozen=True)
class Farm:
    """Every board of one boards.yaml, plus the virtual farm's settings."""

    path: Path
    boards: tuple[BoardSpec, ...]
    time_scale: float
    radio: RadioSpec = RadioSpec()
    line_faults: tuple[tuple[str, LineFaults], ...] = ()  # board name -> its line's faults
    coordinator: str | None = None  # labgrid coordinator host:port as the file states it
    ble_hci: str | None = None  # the lab's Bluetooth controller (bumble transport name)

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

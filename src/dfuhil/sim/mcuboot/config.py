"""What a virtual MCUboot and a virtual Zephyr SMP app were "built" with.

A real MCUboot has its partition layout, upgrade mode and trusted key compiled in; a Zephyr app
knows its partitions from devicetree and its SMP buffer sizes from Kconfig. The virtual farm's
images carry the same facts as behaviour descriptor parameters (dfuhil.sim.descriptor). The
firmware generator writes them with ``to_params()`` and the plug-ins read them with
``from_params()``, so the two can never disagree about a key name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from dfuhil.formats.mcuboot_trailer import MODES, Mode, TrailerLayout

Fault = Literal["crash-at-boot", "never-confirm"]


@dataclass(frozen=True)
class Slot:
    """A flash partition ``[start, start + size)``."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def to_params(self) -> list[int]:
        return [self.start, self.size]

    @classmethod
    def from_params(cls, value: Any) -> Slot | None:
        if value is None:
            return None
        start, size = value
        return cls(int(start), int(size))


@dataclass(frozen=True)
class FlashGeometry:
    """The image slots and trailer geometry shared by MCUboot and the app (one build config)."""

    mode: Mode
    primary: Slot
    secondary: Slot | None  # None for single-slot
    scratch: Slot | None = None  # swap-scratch only
    sector_size: int = 4096
    max_align: int = 8  # BOOT_MAX_ALIGN
    write_size: int = 4
    max_sectors: int = 128

    def layout(self, slot: Slot) -> TrailerLayout:
        return TrailerLayout.for_mode(
            self.mode,
            slot.size,
            max_align=self.max_align,
            write_size=self.write_size,
            max_sectors=self.max_sectors,
        )

    def to_params(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "primary": self.primary.to_params(),
            "secondary": self.secondary.to_params() if self.secondary else None,
            "scratch": self.scratch.to_params() if self.scratch else None,
            "sector_size": self.sector_size,
            "max_align": self.max_align,
            "write_size": self.write_size,
            "max_sectors": self.max_sectors,
        }

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> FlashGeometry:
        mode = str(p["mode"])
        if mode not in MODES:
            raise ValueError(f"unknown MCUboot mode {mode!r} (known: {', '.join(MODES)})")
        primary = Slot.from_params(p["primary"])
        assert primary is not None
        return cls(
            mode=mode,
            primary=primary,
            secondary=Slot.from_params(p.get("secondary")),
            scratch=Slot.from_params(p.get("scratch")),
            sector_size=int(p.get("sector_size", 4096)),
            max_align=int(p.get("max_align", 8)),
            write_size=int(p.get("write_size", 4)),
            max_sectors=int(p.get("max_sectors", 128)),
        )


@dataclass(frozen=True)
class SerialRecovery:
    """MCUboot's serial recovery (boot_serial): an SMP server in the bootloader.

    Entered when GPREGRET holds 0x01 (the app's SMP reset with ``boot_mode: 1``), when no
    bootable image is in the primary slot (BOOT_SERIAL_NO_APPLICATION), or when an SMP frame
    arrives within ``wait_ms`` of boot (BOOT_SERIAL_WAIT_FOR_DFU).
    """

    wait_ms: int = 0
    buf_size: int = 1024  # BOOT_SERIAL_MAX_RECEIVE_SIZE
    echo: bool = True  # BOOT_MGMT_ECHO
    mcumgr_params: bool = True  # BOOT_MGMT_MCUMGR_PARAMS
    image_state: bool = True  # BOOT_SERIAL_IMG_GRP_IMAGE_STATE


@dataclass(frozen=True)
class McubootBuild:
    """Descriptor params of kind ``mcuboot``."""

    geometry: FlashGeometry
    key_type: str  # dfuhil.formats.mcuboot.KEY_TYPES
    key_der: bytes  # PublicKey.der: the key this MCUboot verifies with
    downgrade_prevention: bool = False
    validate_primary: bool = True
    serial_recovery: SerialRecovery | None = None
    mcuboot_version: str = "v2.1.0"
    zephyr_version: str = "v3.7.99-ncs1"

    def to_params(self) -> dict[str, Any]:
        sr = self.serial_recovery
        return {
            **self.geometry.to_params(),
            "key_type": self.key_type,
            "key": self.key_der.hex(),
            "downgrade_prevention": self.downgrade_prevention,
            "validate_primary": self.validate_primary,
            "serial_recovery": None if sr is None else dict(sr.__dict__),
            "mcuboot_version": self.mcuboot_version,
            "zephyr_version": self.zephyr_version,
        }

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> McubootBuild:
        sr = p.get("serial_recovery")
        return cls(
            geometry=FlashGeometry.from_params(p),
            key_type=str(p["key_type"]),
            key_der=bytes.fromhex(str(p["key"])),
            downgrade_prevention=bool(p.get("downgrade_prevention", False)),
            validate_primary=bool(p.get("validate_primary", True)),
            serial_recovery=None if sr is None else SerialRecovery(**sr),
            mcuboot_version=str(p.get("mcuboot_version", "v2.1.0")),
            zephyr_version=str(p.get("zephyr_version", "v3.7.99-ncs1")),
        )


@dataclass(frozen=True)
class SmpAppBuild:
    """Descriptor params of kind ``smp_app``: a Zephyr app with an SMP server (smp_svr-like)."""

    geometry: FlashGeometry
    buf_size: int = 1024  # CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE
    buf_count: int = 4  # CONFIG_MCUMGR_TRANSPORT_NETBUF_COUNT
    confirm_at_boot: bool = False  # nRF Desktop style: the app confirms itself once it runs
    fault: Fault | None = None  # a broken build: crashes at boot, or never confirms
    udp: bool = False  # an SMP server on UDP too (the board's network port)
    dfu_lock_timeout_ms: int = 0  # nRF Desktop DFU lock across transports; 0: no lock
    led: int = 0  # the LED this build blinks
    period_ms: int = 500
    name: str = "smp_svr"

    def to_params(self) -> dict[str, Any]:
        return {
            **self.geometry.to_params(),
            "buf_size": self.buf_size,
            "buf_count": self.buf_count,
            "confirm_at_boot": self.confirm_at_boot,
            "fault": self.fault,
            "udp": self.udp,
            "dfu_lock_timeout_ms": self.dfu_lock_timeout_ms,
            "led": self.led,
            "period_ms": self.period_ms,
            "name": self.name,
        }

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> SmpAppBuild:
        fault = p.get("fault")
        if fault not in (None, "crash-at-boot", "never-confirm"):
            raise ValueError(f"unknown smp_app fault {fault!r}")
        return cls(
            geometry=FlashGeometry.from_params(p),
            buf_size=int(p.get("buf_size", 1024)),
            buf_count=int(p.get("buf_count", 4)),
            confirm_at_boot=bool(p.get("confirm_at_boot", False)),
            fault=cast(Fault | None, fault),
            udp=bool(p.get("udp", False)),
            dfu_lock_timeout_ms=int(p.get("dfu_lock_timeout_ms", 0)),
            led=int(p.get("led", 0)),
            period_ms=int(p.get("period_ms", 500)),
            name=str(p.get("name", "smp_svr")),
        )

"""Pre-flight for a mesh DFU: will this board install this package?

A mesh DFU that the device does not want fails slowly and quietly: an application that is not
an upgrade just relays the transfer and keeps running (every ack SUCCESS), a bootloader ignores
it, and a missing or wrong signature is only noticed after the last segment (UNAUTHORIZED,
shared/specs/mesh-dfu.md §4.3, §4.4). Ten minutes of transfer, then nothing. So before any
frame is sent, the package is compared with what the board's device page and SoftDevice say,
and every reason it would not be installed is reported with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dfuhil.errors import DfuhilError
from dfuhil.formats.chips import Chip
from dfuhil.formats.devpage import (
    FLAG_APP_INTACT,
    DevicePage,
    EntryType,
    Fwid,
    read_device_page,
)
from dfuhil.formats.meshkeys import verify
from dfuhil.formats.meshpkg import SD_ANY, UNKNOWN_START, DfuType, MeshPackage, signed_message
from dfuhil.formats.softdevice import (
    InstalledSoftDevice,
    read_installed_softdevice,
    softdevice_by_fwid,
)

__all__ = [
    "Mismatch",
    "PreflightError",
    "check_package",
    "preflight_notes",
    "read_board_state",
]

_SEGMENT_OF = {
    DfuType.APP: EntryType.SEGMENT_APP,
    DfuType.BL: EntryType.SEGMENT_BL,
    DfuType.SD: EntryType.SEGMENT_SD,
}


@dataclass(frozen=True)
class Mismatch:
    """One reason the board would not install the package, and what to do about it."""

    field: str
    package_value: str
    board_value: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: package {self.package_value}, board {self.board_value} — {self.fix}"


class PreflightError(DfuhilError):
    """The package does not fit the board; nothing was sent. Bad input, so exit code 2."""

    exit_code = 2

    def __init__(self, board: str, package: str, mismatches: list[Mismatch]) -> None:
        self.board = board
        self.mismatches = mismatches
        lines = "\n".join(f"  - {m}" for m in mismatches)
        super().__init__(
            f"package {package} does not fit board {board} (nothing was sent):\n{lines}"
        )


class MemoryReader(Protocol):
    def read(self, address: int, length: int) -> bytes: ...


def read_board_state(
    probe: MemoryReader, chip: Chip
) -> tuple[DevicePage | None, InstalledSoftDevice | None]:
    """The device page (or its backup) and the SoftDevice information structure, over SWD."""
    return read_device_page(probe.read, chip), read_installed_softdevice(probe.read)


def _hex_key(key: bytes) -> str:
    return f"public key {key[:8].hex().upper()}…"


def _sd_name(fwid: int) -> str:
    known = softdevice_by_fwid(fwid)
    return f"0x{fwid:04X} ({known.name})" if known else f"0x{fwid:04X}"


def check_package(
    package: MeshPackage,
    page: DevicePage | None,
    installed_sd: InstalledSoftDevice | None,
    board_name: str,
) -> list[Mismatch]:
    """Every reason ``board_name`` would not take ``package``; empty when it fits."""
    flash_page = (
        f"flash the device page: dfuhil provision --board {board_name} --steps device_page, or "
        "dfuhil devpage -d CHIP -sd SOFTDEVICE -c CONFIG.json and flash the hex it writes"
    )
    if page is None:
        return [Mismatch("device_page", "needs one", "none (both pages erased)", flash_page)]
    missing = page.missing_required()
    version = page.version
    if missing or version is None:
        return [
            Mismatch(
                "device_page",
                "needs FLAGS, VERSION, SEGMENT_APP, SEGMENT_SD, SEGMENT_BL",
                f"lacks {', '.join(missing) or 'VERSION'}",
                flash_page + " (the bootloader ends every transfer with "
                "INVALID_PERSISTENT_STORAGE without them)",
            )
        ]
    init = package.init
    found: list[Mismatch] = []
    if init.dfu_type == DfuType.APP:
        found += _app_identity(package, version, page.flags)
    elif init.dfu_type == DfuType.BL:
        found += _bootloader_identity(package, version)
    else:
        found.append(
            Mismatch(
                "dfu_type",
                "softdevice",
                "running",
                "the DFU example never requests a SoftDevice transfer and the bootloader takes "
                "one only while its SoftDevice is not intact; update the SoftDevice over SWD "
                f"(dfuhil provision --board {board_name} --steps softdevice)",
            )
        )
    found += _signature(package, page)
    found += _placement(package, page)
    found += _sd_requirement(package, page, installed_sd)
    return found


def _app_identity(package: MeshPackage, fwid: Fwid, flags: int | None) -> list[Mismatch]:
    init = package.init
    found: list[Mismatch] = []
    if init.company_id != fwid.company_id:
        found.append(
            Mismatch(
                "company_id",
                f"0x{init.company_id:X}",
                f"0x{fwid.company_id:X}",
                "a device only takes images of its own company; rebuild the package with "
                f"--company-id 0x{fwid.company_id:X}",
            )
        )
    if init.application_id != fwid.app_id:
        found.append(
            Mismatch(
                "application_id",
                str(init.application_id),
                str(fwid.app_id),
                "a device only takes its own application; rebuild the package with "
                f"--application-id {fwid.app_id}",
            )
        )
    app_intact = flags is None or bool(flags & FLAG_APP_INTACT)
    if app_intact and init.application_version <= fwid.app_version:
        why = (
            "the same package sent twice is never installed"
            if init.application_version == fwid.app_version
            else "a downgrade is never installed"
        )
        found.append(
            Mismatch(
                "application_version",
                str(init.application_version),
                str(fwid.app_version),
                "version must be strictly higher than the installed one; rebuild the package "
                f"with --application-version {fwid.app_version + 1} ({why})",
            )
        )
    return found


def _bootloader_identity(package: MeshPackage, fwid: Fwid) -> list[Mismatch]:
    init = package.init
    found: list[Mismatch] = []
    if init.bl_id != fwid.bl_id:
        found.append(
            Mismatch(
                "bootloader_id",
                str(init.bl_id),
                str(fwid.bl_id),
                "a bootloader is only replaced by one with the same id; rebuild the package "
                f"with bootloader id {fwid.bl_id}",
            )
        )
    if init.bl_version <= fwid.bl_version:
        found.append(
            Mismatch(
                "bootloader_version",
                str(init.bl_version),
                str(fwid.bl_version),
                "version must be strictly higher than the installed one; rebuild the package "
                f"with bootloader version {fwid.bl_version + 1}",
            )
        )
    return found


def _signature(package: MeshPackage, page: DevicePage) -> list[Mismatch]:
    key = page.public_key
    init = package.init
    if key is None:
        return []  # any transfer is accepted unsigned; preflight_notes() mentions a signed one
    after = (
        "the board's device page holds a public key, so it accepts only transfers signed with "
        "the matching private key, and rejects anything else only after the last segment "
        "(UNAUTHORIZED)"
    )
    if not init.signed:
        return [
            Mismatch(
                "signature",
                "unsigned",
                _hex_key(key),
                f"{after}; rebuild the package with --key-file KEY (the key whose "
                "`dfuhil mesh keys KEY --show-vk hex` matches the board)",
            )
        ]
    if not verify(key, signed_message(init, package.image), init.signature):
        return [
            Mismatch(
                "signature",
                "signed with another key (or not over this image)",
                _hex_key(key),
                f"{after}; rebuild the package with the key whose public key is on the board "
                "(`dfuhil mesh keys KEY --show-vk hex` shows it)",
            )
        ]
    return []


def _placement(package: MeshPackage, page: DevicePage) -> list[Mismatch]:
    init = package.init
    entry = _SEGMENT_OF[DfuType(init.dfu_type)]
    segment = page.segment(entry)
    if segment is None:
        return []  # missing_required() has covered the segments the bootloader needs
    start, length = segment
    where = f"{entry.name} 0x{start:X}+0x{length:X} ({length} bytes)"
    found: list[Mismatch] = []
    if len(package.image) > length:
        found.append(
            Mismatch(
                "length",
                f"{len(package.image)} bytes",
                where,
                "the image does not fit the segment the bootloader writes it to; make the image "
                "smaller or give the board a device page for a smaller SoftDevice",
            )
        )
    if init.start_addr != UNKNOWN_START and not (
        start <= init.start_addr and init.start_addr + len(package.image) <= start + length
    ):
        found.append(
            Mismatch(
                "start_addr",
                f"0x{init.start_addr:X}",
                where,
                "the device refuses a transfer outside its segment; rebuild the package without "
                "a start address (0xFFFFFFFF: the segment start)",
            )
        )
    return found


def _sd_requirement(
    package: MeshPackage, page: DevicePage, installed_sd: InstalledSoftDevice | None
) -> list[Mismatch]:
    required = package.sd_req
    if not required or SD_ANY in required:
        return []
    version = page.version
    fwid = installed_sd.fwid if installed_sd is not None else version.sd if version else None
    if fwid is None or fwid in required:
        return []
    listed = ", ".join(f"0x{v:04X}" for v in required)
    source = "installed" if installed_sd is not None else "per the device page"
    return [
        Mismatch(
            "sd_req",
            listed,
            f"{_sd_name(fwid)} {source}",
            "the package says it needs another SoftDevice, so the application was likely built "
            "for it and will not run here (the device itself does not check sd_req for an "
            f"application); rebuild the package with --sd-req 0x{fwid:04X}",
        )
    ]


def preflight_notes(
    package: MeshPackage, page: DevicePage | None, installed_sd: InstalledSoftDevice | None
) -> list[str]:
    """Things that do not stop the transfer but a person should know."""
    notes: list[str] = []
    if page is None:
        return notes
    if package.init.signed and page.public_key is None:
        notes.append(
            "the package is signed but the board's device page has no public key: the "
            "signature is not checked (the board accepts unsigned transfers too)"
        )
    flags = page.flags
    if package.init.dfu_type == DfuType.APP and flags is not None and not flags & FLAG_APP_INTACT:
        notes.append(
            "the board's application is not intact (FLAGS app_intact=0): its bootloader takes "
            "any version of this application"
        )
    version = page.version
    if installed_sd is not None and version is not None and installed_sd.fwid != version.sd:
        notes.append(
            f"the device page says SoftDevice {_sd_name(version.sd)} but "
            f"{_sd_name(installed_sd.fwid)} is installed: the page was made for another "
            "SoftDevice"
        )
    if not package.sd_req:
        notes.append("the package has no SoftDevice requirement (--sd-req none)")
    return notes

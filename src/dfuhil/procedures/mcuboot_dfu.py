"""MCUboot DFU steps shared by ``dfuhil mcuboot`` and the ``mcuboot`` fixture.

The Zephyr flow a person types (``mcumgr image upload``, ``image list``, ``image test <hash>``,
reset, ``image confirm``) has two traps this module closes before anything reaches the board:
the hash ``test``/``confirm`` take is the image hash (the SHA TLV that ``image list`` shows),
not the SHA256 of the file; and a hash (or prefix) that matches no slot is refused here, by
name, instead of coming back as HASH_NOT_FOUND after the fact. Waiting for a reboot reads the
console the SMP link shares, so the boot log of every step is kept and diagnosed.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from dfuhil.errors import InputError, Problem
from dfuhil.formats.mcuboot import ImageFormatError, ImageVersion, parse_image
from dfuhil.links.console import Console, ExpectTimeout
from dfuhil.links.smp_link import SlotState
from dfuhil.procedures.boot_diagnosis import Diagnosis, diagnose

__all__ = [
    "Boot",
    "ImageInfo",
    "describe_slots",
    "find_slot",
    "image_info",
    "parse_hash",
    "running_version",
    "wait_for_boot",
]

# MCUboot gave up: nothing will boot until someone acts (spec §3).
BOOT_GAVE_UP = (
    r"Unable to find bootable image|Enter the serial recovery mode|Entering serial recovery"
)
FATAL = r">>> ZEPHYR FATAL ERROR|\*{5} [A-Z ]+ FAULT \*{5}"
_HEX = re.compile(r"^[0-9a-fA-F]+$")


# --- images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """The two hashes of an image file, and its version."""

    image_hash: bytes  # the SHA TLV: what `image test` / `image confirm` take
    file_sha256: bytes  # what the upload sends as `sha` (resume, match)
    version: ImageVersion
    size: int


def image_info(data: bytes, source: str = "image") -> ImageInfo:
    """Parse an image file; an unreadable one is an InputError naming the file."""
    try:
        parsed = parse_image(data, source=source)
    except ImageFormatError as exc:
        raise InputError(Problem(source, None, "", str(exc))) from None
    if parsed.image_hash is None:
        raise InputError(
            Problem(source, None, "", "the image has no SHA TLV: sign it (`dfuhil image sign`)")
        )
    return ImageInfo(parsed.image_hash, hashlib.sha256(data).digest(), parsed.version, len(data))


# --- hashes on the command line ---------------------------------------------------------------


def parse_hash(text: str) -> str:
    """A hex image hash or prefix, lower case; InputError for anything else."""
    cleaned = text.strip().lower().removeprefix("0x")
    if not cleaned or not _HEX.match(cleaned) or len(cleaned) > 64:
        raise InputError(
            Problem(
                "",
                None,
                "hash",
                f"{text!r} is not an image hash: give the hex digits (or a unique prefix) "
                "that `dfuhil mcuboot list` shows",
            )
        )
    return cleaned


def describe_slots(slots: list[SlotState]) -> str:
    return "\n".join(f"  {s}" for s in slots) or "  (no slot holds a valid image)"


def find_slot(slots: list[SlotState], text: str, *, file_sha256: bytes | None = None) -> SlotState:
    """The slot whose image hash starts with ``text``; refused unless exactly one matches."""
    prefix = parse_hash(text)
    matches = [s for s in slots if s.hash_hex.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputError(
            Problem(
                "",
                None,
                "hash",
                f"{text} matches {len(matches)} slots; give more digits:\n"
                + describe_slots(matches),
            )
        )
    hint = "`dfuhil mcuboot list` shows the image hashes; the file SHA256 is not the image hash"
    if file_sha256 is not None and file_sha256.hex().startswith(prefix):
        hint = "that is the SHA256 of the file; test/confirm take the image hash (its SHA TLV)"
    raise InputError(
        Problem(
            "",
            None,
            "hash",
            f"no slot holds image hash {prefix[:16]}{'…' if len(prefix) > 16 else ''}; "
            f"nothing was sent. {hint}. The board has:\n{describe_slots(slots)}",
        )
    )


def running_version(slots: list[SlotState]) -> ImageVersion | None:
    active = [s for s in slots if s.active]
    if not active:
        return None
    try:
        return ImageVersion.parse(active[0].version)
    except ValueError:
        return None


# --- boots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    """What the console showed from a reset until the application was up (or MCUboot gave up)."""

    log: str
    booted: bool  # the application's banner came and it did not crash within the settle time
    version: str | None  # MCUboot's "Image version: v..." line of the last boot
    diagnosis: Diagnosis

    @property
    def swap_types(self) -> list[str]:
        return re.findall(r"Swap type: (\w+)", self.log)


def wait_for_boot(
    console: Console,
    *,
    banner: str,
    timeout_s: float,
    settle_s: float = 0.0,
) -> Boot:
    """Read the console from its cursor until the app's ``banner`` (or MCUboot gives up).

    With ``settle_s`` (wall seconds), an application that crashes within that time after its
    banner does not count: the wait goes on for the next boot (MCUboot may revert it).
    """
    deadline = time.monotonic() + timeout_s
    start = len(console.text()) - len(console.unread())
    booted = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            match = console.expect(f"{banner}|{BOOT_GAVE_UP}", timeout=remaining)
        except ExpectTimeout:
            break
        if re.search(BOOT_GAVE_UP, match.group(0)):
            break
        if settle_s <= 0:
            booted = True
            break
        settle = min(settle_s, deadline - time.monotonic())
        if settle < settle_s:
            break  # the deadline cuts the settle time short: not seen to stay up
        try:
            console.expect(FATAL, timeout=settle)
        except ExpectTimeout:
            booted = True  # no crash within the settle time: it is up
            break
        # it crashed: wait for the next boot (MCUboot may revert it)
    log = console.text()[start:]
    versions = re.findall(r"Image version: v(\d+\.\d+\.\d+)", log)
    return Boot(log, booted, versions[-1] if versions else None, diagnose(log))

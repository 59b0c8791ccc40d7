"""Boot-log diagnosis: MCUboot's and Zephyr's failure lines turned into a cause and a fix.

A nightly report that says "Image in the primary slot is not valid!" sends the QA engineer to a
forum; one that also says "signed with another key than MCUboot trusts, or flashed unsigned:
run ``dfuhil image check``" sends them to the fix. The texts are those printed by MCUboot
(boot/bootutil/src/loader.c, bootutil_public.c, swap_*.c, boot/zephyr/main.c; spec §3) and by
Zephyr's fatal error handler, in every log format a board prints them in (minimal ``E: ...``,
full ``[00:00:00.001,312] <err> mcuboot: ...``, colour codes, dfuhil's timestamped log file).

Pure functions over text: the fixture feeds it the console, the CLI a log file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Diagnosis", "Finding", "diagnose", "message_of"]

Severity = Literal["error", "warning", "info"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# dfuhil's own log files stamp every line: "[2024-05-01 02:13:07.412] "
_DFUHIL_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] ")
# Zephyr full logging: "[00:00:00.001,312] <err> mcuboot: "
_ZEPHYR_FULL = re.compile(r"^\[[\d:.,]+\] <(?:err|wrn|inf|dbg)> [\w.]+: ")
# Zephyr minimal logging: "E: " / "W: " / "I: " / "D: "
_ZEPHYR_MINIMAL = re.compile(r"^[EWID]: ")


def message_of(line: str) -> str:
    """The message of one log line, without colour codes, timestamps and level prefixes."""
    text = _ANSI.sub("", line).strip()
    text = _DFUHIL_STAMP.sub("", text)
    text = _ZEPHYR_FULL.sub("", text)
    return _ZEPHYR_MINIMAL.sub("", text).strip()


@dataclass(frozen=True)
class Finding:
    """One recognised line: what it means and what to do about it."""

    rule: str  # stable id, e.g. "primary-invalid"
    severity: Severity
    line_no: int  # 1-based, in the text given to diagnose()
    line: str  # the message as printed (prefixes stripped)
    cause: str
    fix: str

    def __str__(self) -> str:
        return (
            f"[{self.severity}] line {self.line_no}: {self.line}\n"
            f"    cause: {self.cause}\n"
            f"    fix:   {self.fix}"
        )


@dataclass(frozen=True)
class Diagnosis:
    """Every finding of one boot log, plus what finally booted (if the log says)."""

    findings: tuple[Finding, ...]
    boots: int = 0  # "Starting bootloader" lines seen
    booted_version: str | None = None  # the last "Image version: v..." line
    lines: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """No error and no warning: nothing in the log needs a person."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}

    def has(self, rule: str) -> bool:
        return rule in self.rules()

    def __str__(self) -> str:
        head = f"boot-log diagnosis: {self.lines} lines, {self.boots} bootloader start(s)" + (
            f", last booted image v{self.booted_version}" if self.booted_version else ""
        )
        if not self.findings:
            return head + "\nno MCUboot or Zephyr failure lines found"
        body = "\n".join(str(f) for f in self.findings)
        notes = "".join(f"\nnote: {n}" for n in self.notes)
        return f"{head}\n{body}{notes}"


@dataclass(frozen=True)
class _Rule:
    rule: str
    severity: Severity
    pattern: re.Pattern[str]
    cause: str | Callable[[re.Match[str]], str]
    fix: str | Callable[[re.Match[str]], str]


def _r(
    rule: str,
    severity: Severity,
    pattern: str,
    cause: str | Callable[[re.Match[str]], str],
    fix: str | Callable[[re.Match[str]], str],
) -> _Rule:
    return _Rule(rule, severity, re.compile(pattern), cause, fix)


_CHECK = "`dfuhil image check IMAGE --board NAME` names the rule the image breaks"

_RULES: tuple[_Rule, ...] = (
    _r(
        "primary-invalid",
        "error",
        r"^Image in the primary slot is not valid!",
        "the image in the primary slot failed MCUboot's validation: its hash or signature does "
        "not match (signed with another key than the one MCUboot was built with, not signed at "
        "all, or corrupted), or its header is wrong (header size, image larger than the slot)",
        "flash the SIGNED image (zephyr.signed.hex / app_update.bin, not zephyr.hex) signed with "
        f"the key this MCUboot trusts; {_CHECK}",
    ),
    _r(
        "secondary-invalid",
        "error",
        r"^Image in the secondary slot is not valid!",
        "the uploaded update failed validation (wrong key, unsigned, signed with "
        "--public-key-format full instead of the key hash, encrypted for an MCUboot without a "
        "decryption key, corrupted upload or truncated file, header size mismatch); MCUboot "
        "erased it and kept the running image",
        f"sign the update with the board's key and upload it again; {_CHECK}",
    ),
    _r(
        "no-bootable-image",
        "error",
        r"^Unable to find bootable image",
        "no slot holds an image MCUboot accepts, so it halts (or waits in serial recovery when "
        "built with BOOT_SERIAL_NO_APPLICATION)",
        "reflash a signed application with the programmer (`dfuhil provision --board NAME`), or "
        "upload one through serial recovery (`dfuhil mcuboot upload --port PORT IMAGE`); the "
        "lines above say why each slot was refused",
    ),
    _r(
        "bad-magic",
        "error",
        r"^[Bb]ad image magic 0x([0-9a-fA-F]+)",  # v2.1.0: "bad", later: "Bad"
        lambda m: (
            "the primary slot holds no MCUboot image header"
            + (
                " (it is erased)"
                if m.group(1).lower() == "ffffffff"
                else f" (magic 0x{m.group(1)} instead of 0x96f3b83d)"
            )
            + ": the application was flashed unsigned, at the wrong address, or not at all"
        ),
        "flash the signed image at the start of the primary slot (the mcuboot_primary partition "
        "in pm_static.yml / boards.yaml), not zephyr.hex",
    ),
    _r(
        "not-bootable",
        "error",
        r"^Image not bootable",
        "the image header carries the NON_BOOTABLE flag",
        "sign the image without --non-bootable",
    ),
    _r(
        "too-large",
        "error",
        r"^Image size bigger than designated area: (\d+) > (\d+)",
        lambda m: (
            f"the image ({m.group(1)} bytes with header and protected TLVs) does not fit the "
            f"slot ({m.group(2)} bytes)"
        ),
        "shrink the application or enlarge the slots (pm_static.yml); sign with --slot-size so "
        f"imgtool refuses an image that cannot fit; {_CHECK}",
    ),
    _r(
        "too-large",
        "error",
        r"^Error: Image size \(0x([0-9a-fA-F]+)\) \+ trailer \(0x([0-9a-fA-F]+)\) exceeds "
        r"requested size 0x([0-9a-fA-F]+)",
        lambda m: (
            f"imgtool refused to sign: image 0x{m.group(1)} plus trailer 0x{m.group(2)} bytes "
            f"exceed the slot (0x{m.group(3)}); the image is too large for the internal-flash "
            "slots"
        ),
        "shrink the application (disable logging/shell, optimise for size), move the secondary "
        "slot to external flash, or enlarge the partitions in pm_static.yml",
    ),
    _r(
        "too-large",
        "error",
        r"region `FLASH' overflowed by (\d+) bytes",
        lambda m: (
            f"the linker could not fit the application into its partition ({m.group(1)} "
            "bytes too many)"
        ),
        "shrink the application or enlarge the mcuboot_primary_app partition (pm_static.yml)",
    ),
    _r(
        "not-enough-space",
        "warning",
        r"^Not enough free space to run swap upgrade",
        "the update is too large for swap-using-move/offset: those need one spare sector plus "
        "the trailer in the primary slot; the upgrade was skipped and the old image boots",
        f"make the image at least one sector plus the trailer smaller than the slot; {_CHECK}",
    ),
    _r(
        "cannot-upgrade",
        "warning",
        r"^Cannot upgrade: (.*)",
        lambda m: (
            f"MCUboot found the slots incompatible ({m.group(1)}); the update was not applied and "
            "the primary image boots"
        ),
        "give primary and secondary the same size and sector layout (and a scratch area that "
        "holds the largest sector), identically in MCUboot's and the application's partition "
        "configuration (pm_static.yml)",
    ),
    _r(
        "downgrade-refused",
        "warning",
        r"^[Ii]nsufficient version in secondary slot",  # v2.1.0: lower case
        "downgrade prevention: the update's version is lower than the running image's; MCUboot "
        "erased it (an equal version is allowed)",
        "sign the update with a higher version (`dfuhil image sign --version X.Y.Z`)",
    ),
    _r(
        "downgrade-refused",
        "warning",
        r"^Image (\d+) in slot 1 erased due to downgrade prevention",
        "downgrade prevention: the update's version is lower than the running image's; MCUboot "
        "erased it (an equal version is allowed)",
        "sign the update with a higher version (`dfuhil image sign --version X.Y.Z`)",
    ),
    _r(
        "security-counter",
        "warning",
        r"^Image security counter value (\d+) lower than monotonic value (\d+)",
        lambda m: (
            f"rollback protection: the image's security counter {m.group(1)} is below the "
            f"board's stored counter {m.group(2)}"
        ),
        "sign with --security-counter at least the stored value",
    ),
    _r(
        "wrong-slot-address",
        "warning",
        r"^Image in (primary|secondary) slot at (0x[0-9a-fA-F]+) has been built for offset "
        r"(0x[0-9a-fA-F]+)",
        lambda m: (
            f"direct-xip: the image in the {m.group(1)} slot ({m.group(2)}) was linked for "
            f"{m.group(3)}, so MCUboot skips it"
        ),
        "build and sign one image per slot (imgtool --rom-fixed with the slot's address) and "
        "upload the one linked for the inactive slot",
    ),
    _r(
        "wrong-upload-address",
        "error",
        r"^(Secondary header magic detected in first sector, wrong upload address\?|Binary in "
        r"secondary slot of image \d+ is not designated for the primary slot)",
        "the update was written where MCUboot does not expect it (wrong slot or offset)",
        "upload with `dfuhil mcuboot upload` (image 0, the server picks the slot), or build the "
        "image for the primary slot",
    ),
    _r(
        "revert",
        "warning",
        r"Swap type: revert",
        "an unconfirmed test image was reverted: after a test swap the new image must be "
        "confirmed before the next reset; the old image is back",
        "confirm after testing (`dfuhil mcuboot confirm --board NAME`, `mcumgr image confirm`), "
        "or check why the application's confirm-at-boot (boot_write_img_confirmed()) did not "
        "run: it crashed or was reset before it got there",
    ),
    _r(
        "panic",
        "error",
        r"^panic!",
        "MCUboot hit an unrecoverable swap state (swap type PANIC: a failed flash operation or "
        "a corrupted status area)",
        "read the lines before it; reflash bootloader and application with the programmer",
    ),
    _r(
        "inconsistent-status",
        "error",
        r"^Detected inconsistent status!",
        "the swap status area contradicts the trailers (a power loss at an unlucky moment, or "
        "flash written behind MCUboot's back); MCUboot cannot resume the swap",
        "reflash bootloader and application with the programmer; if it recurs, check the "
        "supply during updates",
    ),
    _r(
        "hash-not-found",
        "error",
        r"^Did not find image with specified hash",
        "serial recovery was asked to mark an image whose hash no slot holds",
        "use the image hash `dfuhil mcuboot list` shows (the SHA TLV), not the file's SHA256",
    ),
    _r(
        "sectors",
        "warning",
        r"^Failed reading sectors; BOOT_MAX_IMG_SECTORS=(\d+) - too small\?",
        lambda m: f"the slots have more sectors than MCUboot was built for ({m.group(1)})",
        "rebuild MCUboot with a larger CONFIG_BOOT_MAX_IMG_SECTORS",
    ),
    _r(
        "serial-recovery",
        "info",
        r"^(Enter the serial recovery mode|Entering serial recovery)",
        "MCUboot entered serial recovery (button, GPREGRET boot mode, or no application): it "
        "waits for an SMP upload into the primary slot",
        "upload a signed image (`dfuhil mcuboot upload --port PORT IMAGE`) and reset",
    ),
    _r(
        "zephyr-fatal",
        "error",
        r">>> ZEPHYR FATAL ERROR (\d+): ([^\n]*)",
        lambda m: (
            f"the application crashed (Zephyr fatal error {m.group(1)}: {m.group(2).strip()}); "
            "if this image was under test and not yet confirmed, MCUboot reverts it at the next "
            "reset"
        ),
        "read the fault lines above it (faulting PC and thread); reproduce with the same build "
        "on a bench board; do not confirm this image",
    ),
    _r(
        "cpu-fault",
        "error",
        r"\*{5} ((?:HARD|BUS|MPU|USAGE|SECURE|MEM MANAGE|DEBUG MONITOR) FAULT) \*{5}",
        lambda m: f"the CPU took a {m.group(1).lower()} in the application",
        "read the register dump that follows (PC, LR) and map it to the source with addr2line",
    ),
)

_BOOTLOADER_START = re.compile(r"^Starting (?:Direct-XIP )?bootloader")
_CHAINLOAD = re.compile(r"^Bootloader chainload address offset: 0x([0-9a-fA-F]+)")
_JUMP = re.compile(r"^Jumping to the (?:first )?image slot")
_APP_KERNEL = re.compile(r"\*\*\* Booting Zephyr OS build")
_FAULT_PC = re.compile(r"^Faulting instruction address \(r15/pc\): 0x([0-9a-fA-F]+)")
_IMAGE_VERSION = re.compile(r"^Image version: v(\d+\.\d+\.\d+)")
_BOOT_SOURCE_NONE = re.compile(r"^Boot source: none")
_FAILURE_RULES = frozenset(
    {
        "primary-invalid",
        "secondary-invalid",
        "no-bootable-image",
        "bad-magic",
        "panic",
        "wrong-link-address",
    }
)


def _text(value: str | Callable[[re.Match[str]], str], match: re.Match[str]) -> str:
    return value if isinstance(value, str) else value(match)


def diagnose(text: str | Iterable[str]) -> Diagnosis:
    """Every failure line of a boot log with its cause and fix, in the order printed."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    findings: list[Finding] = []
    boots = 0
    version: str | None = None
    boot_source_none: list[tuple[int, str]] = []
    seen: set[tuple[int, str, str]] = set()  # MCUboot prints some lines several times per boot
    for number, raw in enumerate(lines, start=1):
        message = message_of(raw)
        if not message:
            continue
        if _BOOTLOADER_START.search(message):
            boots += 1
        if (m := _IMAGE_VERSION.search(message)) is not None:
            version = m.group(1)
        if _BOOT_SOURCE_NONE.search(message):
            boot_source_none.append((number, message))
        for rule in _RULES:
            match = rule.pattern.search(message)
            if match is not None:
                if (boots, rule.rule, message) in seen:
                    break
                seen.add((boots, rule.rule, message))
                findings.append(
                    Finding(
                        rule.rule,
                        rule.severity,
                        number,
                        message,
                        _text(rule.cause, match),
                        _text(rule.fix, match),
                    )
                )
                break
    findings += _early_faults(lines)
    failed = any(f.rule in _FAILURE_RULES for f in findings)
    for number, message in boot_source_none[:1]:
        findings.append(_boot_source_none(number, message, failed))
    findings.sort(key=lambda f: f.line_no)
    notes = _notes(findings, boots)
    return Diagnosis(tuple(findings), boots, version, len(lines), notes)


def _early_faults(lines: list[str]) -> list[Finding]:
    """A CPU fault after MCUboot's jump and before the application's kernel printed its banner.

    The image's first instructions faulted: on an nRF5 that is almost always an image linked
    for another address (a direct-xip build for the other slot: its reset vector leads into
    the other slot's flash), when the faulting PC lies outside the slot MCUboot started.
    """
    found: list[Finding] = []
    offset: int | None = None
    jumped = False
    for number, raw in enumerate(lines, start=1):
        message = message_of(raw)
        if _BOOTLOADER_START.search(message):
            offset, jumped = None, False
        elif (m := _CHAINLOAD.search(message)) is not None:
            offset = int(m.group(1), 16)
        elif _JUMP.search(message):
            jumped = True
        elif _APP_KERNEL.search(message):
            jumped = False  # the application's kernel started: a later fault is its own
        elif jumped and offset is not None and (m := _FAULT_PC.search(message)) is not None:
            jumped = False
            pc = int(m.group(1), 16)
            where = (
                f", below the slot at 0x{offset:x} it was started from"
                if pc < offset
                else f", while MCUboot started the image at 0x{offset:x}"
            )
            found.append(
                Finding(
                    "wrong-link-address",
                    "error",
                    number,
                    message,
                    f"the CPU faulted at 0x{pc:x}{where}, before the application's kernel "
                    "printed its banner: the image's reset vector leads out of its slot, so it "
                    "is linked for another address (in direct-xip: an image built for the other "
                    "slot; each slot needs its own build)",
                    "upload the build linked for the slot the image goes to (NCS: "
                    "mcuboot_secondary_app for the secondary) and sign it with --slot; "
                    f"{_CHECK} (it compares the reset vector with the slot)",
                )
            )
    return found


def _boot_source_none(number: int, message: str, failed: bool) -> Finding:
    """The line forum threads blame, which is almost never the problem."""
    if failed:
        cause = (
            "'Boot source: none' only says no swap was in progress; the real problem is the "
            "validation failure reported on the other lines"
        )
        fix = "follow the fix of the error lines, not this one"
    else:
        cause = (
            "normal: no swap was in progress, so MCUboot reads no swap status; it is a problem "
            "only together with 'not valid' or 'Unable to find bootable image' lines"
        )
        fix = "nothing to do"
    return Finding("boot-source-none", "info", number, message, cause, fix)


def _notes(findings: list[Finding], boots: int) -> tuple[str, ...]:
    notes: list[str] = []
    crashes = sum(1 for f in findings if f.rule == "zephyr-fatal")
    if crashes and boots > 1:
        notes.append(
            f"{crashes} application crash(es) over {boots} boots: a boot loop; an unconfirmed "
            "test image is reverted at the next reset, a confirmed one keeps crashing"
        )
    reverts = [f for f in findings if f.rule == "revert"]
    if reverts and crashes:
        notes.append("the revert follows an application crash: the test image never confirmed")
    return tuple(notes)

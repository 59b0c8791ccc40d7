"""Would this board's MCUboot boot this image? Every rule, checked on the host before upload.

A refused DFU found at 2 a.m. costs a night: the board keeps its old image and the log says
"Image in the secondary slot is not valid!". These are the reasons MCUboot (or the upgrade
rules of the board) would refuse an image, checked from boards.yaml and the file alone, each
reported with both values and the fix:

- the file parses as a signed image (magic, sizes, TLV areas that add up);
- no header flag the board cannot boot (NON_BOOTABLE, encrypted, RAM-load, compressed);
- header size as the board's builds use (the app is linked behind it);
- it fits the slot after the trailer of the board's upgrade mode (imgtool's estimate; swap-move
  also keeps one sector free, MCUboot's ``app_max_size``);
- its ROM_FIXED load address names the slot it is meant for, in direct-xip only (MCUboot
  reads ROM_FIXED nowhere else: loader.c ``boot_rom_address_check``), and a .hex file puts it
  at the start of that slot;
- the reset vector of the body's vector table lies in the slot the image runs from (the one it
  sits in for direct-xip, else the primary): a non-relocatable image started elsewhere faults;
- signed with the key the board's MCUboot trusts, named by a KEYHASH TLV (MCUboot without
  MCUBOOT_HW_KEY ignores a PUBKEY TLV), and not with one of MCUboot's published sample keys
  unless the board allows them; an encrypted image is refused as such (no decryption key);
- version rules: downgrade prevention (equal is allowed), direct-xip (only a higher version
  ever boots);
- a padded file's trailer uses the board's BOOT_MAX_ALIGN magic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dfuhil.errors import InputError, Problem
from dfuhil.farm.model import BoardSpec, McubootSpec, Region
from dfuhil.formats.hexfile import read_hex
from dfuhil.formats.mcuboot import (
    F_NON_BOOTABLE,
    F_PIC,
    F_RAM_LOAD,
    SAMPLE_KEY_HASHES,
    ImageFormatError,
    ImageVersion,
    KeyFileError,
    McubootImage,
    TlvType,
    parse_image,
    reset_vector,
    verify_signature,
)
from dfuhil.formats.mcuboot_build import Slot
from dfuhil.formats.mcuboot_trailer import Flag, Magic, TrailerLayout, read_trailer, trailer_magic

Status = Literal["ok", "note", "fail"]
SlotName = Literal["primary", "secondary"]
_XIP = ("direct-xip", "direct-xip-revert")
_COMPRESSED = 0x200 | 0x400 | 0x800
_TAGS = {"ok": "ok  ", "note": "note", "fail": "FAIL"}
# boot_compare_version's message per mode when a downgrade is refused (spec §2.9, §3).
_DOWNGRADE_LOG = {
    "overwrite-only": "Insufficient version in secondary slot",
    "default": "Image 0 in slot 1 erased due to downgrade prevention",
}


@dataclass(frozen=True)
class Finding:
    """One rule's verdict; ``message`` carries both values, ``fix`` what to do on failure."""

    rule: str
    status: Status
    message: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"  {_TAGS[self.status]}  {self.rule:<13} {self.message}"]
        if self.fix and self.status == "fail":
            out.append(f"        {'':<13} fix: {self.fix}")
        return out


@dataclass(frozen=True)
class CheckReport:
    """Every rule's verdict for one image on one board."""

    source: str
    board: str
    mode: str
    slot: Region | None
    findings: tuple[Finding, ...]
    image: McubootImage | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    def lines(self) -> list[str]:
        where = f", slot {self.slot}" if self.slot is not None else ""
        out = [f"{self.source} on board {self.board} (MCUboot {self.mode}{where}):"]
        for finding in self.findings:
            out += finding.lines()
        if self.ok:
            out.append(f"OK: {self.board} would accept this image ({len(self.findings)} rules)")
        else:
            out.append(
                f"REFUSED: {len(self.failures)} of {len(self.findings)} rules failed; "
                "nothing was sent to the board"
            )
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def refusal(self) -> InputError | None:
        """The failures as an InputError (one problem per rule), or None if the image is fine."""
        if self.ok:
            return None
        return InputError(
            [
                Problem(self.source, None, f.rule, f"{f.message}; {f.fix}" if f.fix else f.message)
                for f in self.failures
            ]
        )

    def raise_if_refused(self) -> None:
        error = self.refusal()
        if error is not None:
            raise error


@dataclass(frozen=True)
class ImageFile:
    """An image file's bytes, and where a .hex file places them (None for a .bin)."""

    path: Path
    data: bytes
    address: int | None = None


def read_image_file(path: Path) -> ImageFile:
    """A .bin as is, or a .hex as the bytes from its lowest address (gaps read as erased)."""
    if path.suffix.lower() == ".hex":
        ih = read_hex(path, "image")
        if not ih.addresses():
            raise InputError(Problem(str(path), None, "", "the hex file contains no data"))
        start = ih.minaddr()
        data = bytes(ih.tobinarray(start=start, end=ih.maxaddr()))
        return ImageFile(path, data, start)
    try:
        return ImageFile(path, path.read_bytes())
    except FileNotFoundError:
        raise InputError(Problem(str(path), None, "", "image file not found")) from None
    except IsADirectoryError:
        raise InputError(Problem(str(path), None, "", "is a directory, not an image")) from None
    except OSError as exc:
        raise InputError(Problem(str(path), None, "", f"cannot read: {exc.strerror}")) from None


def max_image_size(spec: McubootSpec, board: BoardSpec, slot: Region) -> int:
    """The most bytes (header + body + TLVs) an image may have in ``slot`` of this board:
    MCUboot's ``bootutil_max_image_size`` for the board's mode (FlashGeometry knows the rules).
    """
    return spec.geometry(board.layout).max_image_size(Slot(slot.start, slot.size))


def target_slot(spec: McubootSpec, board: BoardSpec, slot: SlotName | None) -> Region:
    """Where an image for this board goes: the secondary (update) slot unless told otherwise.

    Single-slot boards take updates in the primary (serial recovery writes it directly).
    """
    slots = board.layout.mcuboot_slots()
    if spec.mode == "single-slot":
        if slot == "secondary":
            raise InputError(
                f"board {board.name} runs a single-slot MCUboot: there is no secondary slot"
            )
        slot = "primary"
    name = slot or "secondary"
    chosen = slots.secondary if name == "secondary" else slots.primary
    if chosen is None:
        raise InputError(
            f"flash layout {board.layout.name!r} of board {board.name} has no mcuboot_{name} region"
        )
    return chosen


BLE_OTA_REASON = (
    "BLE OTA needs two slots: the application receives the new image into the secondary slot "
    "while it runs, and board {board} has none ({why})"
)
BLE_OTA_FIX = (
    "use serial recovery: dfuhil mcuboot upgrade --board {board} (the serial transport; MCUboot "
    "writes the primary slot itself), or give the board a secondary slot (external flash)"
)


def ble_ota_problem(board: BoardSpec) -> str | None:
    """Why an image cannot go to ``board`` over Bluetooth LE, or None if it can."""
    spec = board.mcuboot
    if spec is None:
        return None
    if spec.mode == "single-slot":
        return "its MCUboot is single-slot, serial recovery only"
    if board.layout.mcuboot_slots().secondary is None:
        return f"flash layout {board.layout.name!r} has no mcuboot_secondary region"
    return None


def refuse_ble_ota(board: BoardSpec, boards_file: str = "") -> None:
    """Pre-flight for SMP over BLE: InputError on a board without a secondary slot, before
    any radio use (nothing is sent)."""
    why = ble_ota_problem(board)
    if why is not None:
        message = BLE_OTA_REASON.format(board=board.name, why=why)
        fix = BLE_OTA_FIX.format(board=board.name)
        raise InputError(
            Problem(
                boards_file,
                board.line or None,
                f"boards[{board.name}].firmware",
                f"{message}; nothing was sent. Fix: {fix}",
            )
        )


def shipped_version(board: BoardSpec) -> ImageVersion | None:
    """The version of the application boards.yaml provisions, if it is a readable signed image."""
    app = board.firmware.application if board.firmware else None
    primary = board.layout.mcuboot_slots().primary
    if app is None or primary is None or not app.file.is_file():
        return None
    try:
        loaded = read_image_file(app.file)
        data = loaded.data
        if loaded.address is not None and loaded.address != primary.start:
            data = data[primary.start - loaded.address :] if loaded.address < primary.start else b""
        return parse_image(data, source=str(app.file)).version
    except (InputError, ImageFormatError):
        return None


def _size(n: int) -> str:
    return f"0x{n:X} ({n} bytes)"


def check_image(
    data: bytes,
    board: BoardSpec,
    *,
    source: str = "image",
    current: ImageVersion | None = None,
    slot: SlotName | None = None,
    address: int | None = None,
    transport: str | None = None,
) -> CheckReport:
    """Check ``data`` (a .bin, or a .hex's bytes placed at ``address``) against ``board``.

    ``current`` is the version the board runs now (default: the version of the application
    boards.yaml provisions); ``slot`` the slot the image is meant for (default: where updates
    go; for direct-xip the slot its ROM_FIXED address names); ``transport`` the SMP transport
    it will travel over (``ble`` needs a secondary slot).
    """
    spec = board.mcuboot
    if spec is None:
        raise InputError(
            f"board {board.name} has no MCUboot (its firmware set has no mcuboot: block); "
            "there is nothing to check the image against"
        )
    checker = _Checker(data, board, spec, source, address)
    if transport == "ble":
        why = ble_ota_problem(board)
        if why is None:
            checker.add("transport", "ok", "BLE OTA: the board has a secondary slot")
        else:
            checker.add(
                "transport",
                "fail",
                BLE_OTA_REASON.format(board=board.name, why=why),
                BLE_OTA_FIX.format(board=board.name),
            )
    return checker.run(current if current is not None else shipped_version(board), slot)


def check_image_file(
    path: Path,
    board: BoardSpec,
    *,
    current: ImageVersion | None = None,
    slot: SlotName | None = None,
    transport: str | None = None,
) -> CheckReport:
    loaded = read_image_file(path)
    return check_image(
        loaded.data,
        board,
        source=str(path),
        current=current,
        slot=slot,
        address=loaded.address,
        transport=transport,
    )


@dataclass
class _Checker:
    data: bytes
    board: BoardSpec
    spec: McubootSpec
    source: str
    address: int | None
    findings: list[Finding] = field(default_factory=list)

    def add(self, rule: str, status: Status, message: str, fix: str = "") -> None:
        self.findings.append(Finding(rule, status, message, fix))

    def report(self, slot: Region | None, image: McubootImage | None) -> CheckReport:
        return CheckReport(
            self.source, self.board.name, self.spec.mode, slot, tuple(self.findings), image
        )

    @property
    def sign_hint(self) -> str:
        return f"dfuhil image sign --board {self.board.name}"

    def run(self, current: ImageVersion | None, slot: SlotName | None) -> CheckReport:
        try:
            image = parse_image(self.data, source=self.source)
        except ImageFormatError as exc:
            self.add(
                "format",
                "fail",
                str(exc).removeprefix(f"{self.source}: "),
                f"upload the signed image (zephyr.signed.bin, or `{self.sign_hint}` output), "
                "not the raw build",
            )
            return self.report(None, None)
        h = image.header
        tlv_bytes = image.size - h.hdr_size - h.img_size
        self.add(
            "format",
            "ok",
            f"MCUboot image {image.version}, {_size(image.size)}: header 0x{h.hdr_size:X}, "
            f"body 0x{h.img_size:X}, TLVs 0x{tlv_bytes:X}",
        )
        self._flags(image)
        self._header_size(image)
        region = self._slot(image, slot)
        if region is not None:
            self._fits(image, region)
            self._address(image, region)
        self._signature(image)
        self._sample_key(image)
        self._version(image, current, region)
        if region is not None:
            self._trailer(image, region)
        return self.report(region, image)

    # -- rules -----------------------------------------------------------------------------

    def _flags(self, image: McubootImage) -> None:
        flags = image.header.flags
        bad = [
            (F_NON_BOOTABLE, "NON_BOOTABLE: MCUboot never boots it ('Image not bootable')"),
            (F_PIC, "PIC: position-independent images are not supported by MCUboot"),
            (F_RAM_LOAD, f"RAM_LOAD: this board's MCUboot runs {self.spec.mode}, not RAM-load"),
            (_COMPRESSED, "compressed, which this board's MCUboot does not decompress"),
        ]
        failed = [text for bit, text in bad if flags & bit]
        for text in failed:
            self.add("flags", "fail", text, f"sign without that option ({self.sign_hint})")
        encryption = image.encryption()
        if encryption is not None:
            # boot_check_header_valid (bootutil_loader.c) refuses IS_ENCRYPTED(hdr) in a build
            # without MCUBOOT_ENC_IMAGES; the hash covers the plaintext, so it cannot match.
            self.add(
                "flags",
                "fail",
                f"encrypted ({encryption}), but this board's MCUboot has no decryption key "
                "configured (built without CONFIG_BOOT_ENCRYPT_IMAGE): it refuses the header "
                "and erases the upload ('Image in the secondary slot is not valid!')",
                "upload the image signed without --encrypt "
                f"({self.sign_hint}); encrypted updates need an MCUboot built with "
                "CONFIG_BOOT_ENCRYPT_IMAGE and the matching private key",
            )
        elif not failed:
            names = ", ".join(image.header.flag_names()) or "none"
            self.add("flags", "ok", f"0x{flags:08X} ({names})")

    def _header_size(self, image: McubootImage) -> None:
        have, want = image.header.hdr_size, self.spec.header_size
        if have == want:
            self.add("header size", "ok", f"0x{have:X}, as the board's builds (0x{want:X})")
        else:
            self.add(
                "header size",
                "fail",
                f"0x{have:X}, but the board's application is linked behind a 0x{want:X} header "
                "(mcuboot.header_size, CONFIG_ROM_START_OFFSET): its vector table would be in "
                "the wrong place",
                f"sign with --header-size 0x{want:X} (or {self.sign_hint})",
            )

    def _slot(self, image: McubootImage, slot: SlotName | None) -> Region | None:
        """The slot the image is for; direct-xip reads it from the ROM_FIXED address."""
        slots = self.board.layout.mcuboot_slots()
        h = image.header
        if self.spec.mode in _XIP and slot is None and h.rom_fixed:
            if slots.primary is not None and slots.primary.start == h.load_addr:
                slot = "primary"
            elif slots.secondary is not None and slots.secondary.start == h.load_addr:
                slot = "secondary"
        try:
            return target_slot(self.spec, self.board, slot)
        except InputError as exc:
            self.add("slot", "fail", str(exc), "pick a slot the board's layout has")
            return None

    def _fits(self, image: McubootImage, region: Region) -> None:
        budget = max_image_size(self.spec, self.board, region)
        trailer = self.spec.trailer(region.size)
        move = " and one spare sector for the move" if self.spec.mode == "swap-move" else ""
        room = (
            f"{region.name} is {_size(region.size)}; after the {self.spec.mode} trailer "
            f"(0x{trailer.size:X}){move}, 0x{budget:X} remain"
        )
        if image.size <= budget:
            self.add("size", "ok", f"{_size(image.size)} fits: {room}")
        else:
            self.add(
                "size",
                "fail",
                f"{_size(image.size)} is too large: {room}, {image.size - budget} bytes short",
                "shrink the build (CONFIG_SIZE_OPTIMIZATIONS, fewer features) or enlarge the "
                "slots in the flash layout (pm_static.yml)",
            )
        padded = len(self.data) > image.size and any(b != 0xFF for b in self.data[image.size :])
        if padded and len(self.data) != region.size:
            self.add(
                "size",
                "fail",
                f"the file is padded to {_size(len(self.data))}, but {region.name} is "
                f"{_size(region.size)}: its trailer would land in the wrong place",
                f"sign with --pad for this board ({self.sign_hint} --pad), or upload unpadded",
            )

    def _address(self, image: McubootImage, region: Region) -> None:
        h = image.header
        slots = self.board.layout.mcuboot_slots()
        primary = slots.primary or region
        if self.spec.mode in _XIP:
            self._rom_fixed(image, region)
        elif h.rom_fixed:
            # MCUboot reads ROM_FIXED only in direct-xip builds (boot_rom_address_check,
            # loader.c, under MCUBOOT_DIRECT_XIP): other modes copy the image to the primary.
            self.add(
                "load address",
                "note",
                f"ROM_FIXED 0x{h.load_addr:X}: MCUboot checks ROM_FIXED only in direct-xip "
                f"builds; {self.spec.mode} ignores it and runs the image from {primary.name} "
                f"at 0x{primary.start:X}",
            )
        else:
            self.add("load address", "ok", f"not ROM_FIXED (runs from {primary.name})")
        self._link_address(image, region if self.spec.mode in _XIP else primary)
        if self.address is not None and self.address != region.start:
            self.add(
                "load address",
                "fail",
                f"the .hex places the image at 0x{self.address:X}, but {region.name} starts at "
                f"0x{region.start:X}",
                "make the hex for that slot, or upload the .bin",
            )

    def _rom_fixed(self, image: McubootImage, region: Region) -> None:
        """Direct-xip: MCUboot skips an image whose ROM_FIXED address is not its slot's."""
        h = image.header
        if not h.rom_fixed:
            self.add(
                "load address",
                "note",
                "no ROM_FIXED address: a direct-xip image is linked for one slot, and MCUboot "
                "cannot tell which (sign with --slot to let it check)",
            )
        elif h.load_addr == region.start:
            self.add("load address", "ok", f"ROM_FIXED 0x{h.load_addr:X} = {region.name}")
        else:
            self.add(
                "load address",
                "fail",
                f"ROM_FIXED 0x{h.load_addr:X}, but {region.name} starts at 0x{region.start:X}: "
                "MCUboot skips an image built for another offset",
                f"sign for that slot ({self.sign_hint} --slot ...)",
            )

    def _link_address(self, image: McubootImage, runs_in: Region) -> None:
        """The body's Cortex-M reset vector must point into the slot the image runs from: a
        non-relocatable image started elsewhere jumps into the other slot and faults."""
        reset = None if image.encryption() else reset_vector(image, self.board.chip)
        if reset is None:
            return  # ciphertext, or not a Cortex-M vector table (a test pattern): no verdict
        handler = reset & ~1
        if runs_in.contains(handler):
            self.add(
                "link address",
                "ok",
                f"reset vector 0x{reset:08X} lies in {runs_in.name}, where the image runs",
            )
            return
        layout = self.board.layout
        slots = layout.mcuboot_slots()
        candidates = [slots.primary, slots.secondary, *layout.regions.values()]
        linked = next((r for r in candidates if r is not None and r.contains(handler)), None)
        where = f" (in {linked.name})" if linked is not None else ""
        self.add(
            "link address",
            "fail",
            f"reset vector 0x{reset:08X}{where}, but the image runs from {runs_in.name} "
            f"0x{runs_in.start:X}..0x{runs_in.end:X}: it is linked for another address, and "
            "the CPU faults when MCUboot jumps to it",
            f"upload the build linked for {runs_in.name} (for direct-xip, NCS builds one per "
            "slot: mcuboot_secondary_app for the secondary)",
        )

    def _signature(self, image: McubootImage) -> None:
        try:
            key = self.spec.public_key()
        except KeyFileError as exc:
            self.add(
                "signature",
                "fail",
                f"cannot check: {exc}",
                "fix mcuboot.key in the boards file",
            )
            return
        problem = verify_signature(image, key, encrypted_body=True)
        if problem is None:
            over = (
                " over the hash the image states (it covers the plaintext, which only a "
                "decrypting MCUboot can check)"
                if image.encryption() is not None
                else ""
            )
            self.add(
                "signature",
                "ok",
                f"valid{over}, by the key the board trusts ({key.type}, key hash "
                f"{key.key_hash.hex()[:16]}…)",
            )
        elif image.find(TlvType.KEYHASH) is None and image.find(TlvType.PUBKEY) is not None:
            self.add(
                "signature",
                "fail",
                problem,
                "sign with the key hash, imgtool's default (drop --public-key-format full, or "
                f"pass --public-key-format hash; {self.sign_hint} does)",
            )
        else:
            self.add(
                "signature",
                "fail",
                problem,
                f"sign with the board's key {self.spec.key} ({self.sign_hint})",
            )

    def _sample_key(self, image: McubootImage) -> None:
        key_hash = image.key_hash
        if key_hash is None:
            return
        sample = SAMPLE_KEY_HASHES.get(key_hash)
        if sample is None:
            self.add("sample key", "ok", "not signed with one of MCUboot's published sample keys")
        elif self.spec.allow_sample_keys:
            self.add(
                "sample key",
                "note",
                f"signed with MCUboot's sample key {sample} (allowed on this board)",
            )
        else:
            self.add(
                "sample key",
                "fail",
                f"signed with MCUboot's published sample key {sample}: anyone can make images "
                "a board trusting it accepts",
                "sign with your own key (dfuhil image keygen), or set allow_sample_keys: true "
                "for a development board",
            )

    def _version(
        self, image: McubootImage, current: ImageVersion | None, region: Region | None
    ) -> None:
        mode = self.spec.mode
        have = image.version
        rule = "downgrade prevention" if self.spec.downgrade_prevention else None
        if mode in _XIP:
            rule = "direct-xip"
        if rule is None:
            self.add("version", "ok", f"{have}; no version rule on this board")
            return
        if current is None:
            self.add(
                "version",
                "note",
                f"{have}; the board's current version is unknown, {rule} not checked "
                "(pass --current VERSION)",
            )
            return
        if rule == "direct-xip":
            if have.key() > current.key():
                self.add("version", "ok", f"{have} is higher than the current {current}")
            else:
                self.add(
                    "version",
                    "fail",
                    f"{have} is not higher than the current {current}: direct-xip boots the "
                    "slot with the highest version, so this image would never run",
                    f"sign with a version above {current} (--version)",
                )
            return
        if have.key() >= current.key():
            same = " (equal is allowed)" if have.key() == current.key() else ""
            self.add("version", "ok", f"{have} >= the current {current}{same}")
        else:
            log = _DOWNGRADE_LOG.get(mode, _DOWNGRADE_LOG["default"])
            self.add(
                "version",
                "fail",
                f"{have} is lower than the current {current}: with downgrade prevention "
                f"MCUboot erases it ('{log}')",
                f"sign with a version of at least {current} (--version)",
            )

    def _trailer(self, image: McubootImage, region: Region) -> None:
        if len(self.data) != region.size or len(self.data) <= image.size:
            return
        layout = TrailerLayout(region.size, max_align=self.spec.max_align)
        state = read_trailer(lambda a, n: self.data[a : a + n], 0, layout)
        if state.magic == Magic.BAD:
            self.add(
                "trailer",
                "fail",
                f"padded, but the trailer magic {self.data[-16:].hex()} is not this board's "
                f"({trailer_magic(self.spec.max_align).hex()}, BOOT_MAX_ALIGN "
                f"{self.spec.max_align})",
                f"sign with --max-align {self.spec.max_align} ({self.sign_hint})",
            )
            return
        request = {
            Magic.UNSET: "no request (magic unset)",
            Magic.GOOD: "a permanent request (image_ok set)"
            if state.image_ok == Flag.SET
            else "a test request (image_ok unset)",
        }[state.magic]
        self.add("trailer", "ok", f"padded to the slot; MCUboot reads {request}")

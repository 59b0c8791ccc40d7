"""The virtual farm's MCUboot firmware sets: one MCUboot per upgrade mode, its app, its keys.

Each set is what an nRF Connect SDK build of ``smp_svr`` with MCUboot would leave in
``build/zephyr``, made for a virtual board: ``mcuboot_<mode>.hex`` at 0x0 (a sample image whose
behaviour descriptor carries the MCUboot build configuration: slots, mode, the trusted key),
``smp_app.hex`` (the signed application, version 1.0.0, in the primary slot) and the unsigned
builds the suites sign at test time (``update`` blinks another LED, ``crash-at-boot`` and
``never-confirm`` are the faulty builds). boards.yaml describes the same sets; a test checks
that both agree on every slot and key.

Every build is linked for the primary slot (its vector table's reset vector lies there), as
the swap and overwrite modes run it. A direct-xip image runs where it sits, so those sets also
ship each build linked for the secondary slot, as nRF Connect SDK builds it a second time
(``mcuboot_secondary_app``): ``<build>.secondary.bin``, named ``<build>@secondary`` in
boards.yaml. Signing a primary build for the secondary would make an image that faults there.

Keys are derived from fixed seed strings, so they are the same on every machine (and useless
for anything but this virtual farm). ECDSA signatures are randomised: an already generated
``smp_app.hex`` is kept as long as its signed content is unchanged and it still verifies, so a
regeneration changes no byte.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from dfuhil.errors import InputError
from dfuhil.formats.chips import Chip
from dfuhil.formats.hexfile import hex_text
from dfuhil.formats.mcuboot import (
    ImageFormatError,
    PublicKey,
    parse_image,
    verify_signature,
)
from dfuhil.formats.mcuboot_trailer import FLAG_SET, Mode, TrailerLayout, field_write
from dfuhil.procedures.image_check import read_image_file
from dfuhil.procedures.image_sign import NO_STATUS_MODES, SignParams, image_hex, sign_image
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import (
    Segment,
    ram_end,
    sample_image,
    short_name,
    to_intelhex,
)
from dfuhil.formats.mcuboot_build import FlashGeometry, SerialRecovery, Slot
from dfuhil.sim.mcuboot.config import Fault, McubootBuild, SmpAppBuild, stock_netbufs

KeyKind = Literal["ecdsa-p256", "ed25519"]
HEADER_SIZE = 0x200
MCUBOOT_SIZE = 16 * 1024
APP_SIZE = 16 * 1024
APP_VERSION = "1.0.0"
KEYS_DIR = "keys"
BUILDS = ("update", "crash-at-boot", "never-confirm")
XIP_MODES = ("direct-xip", "direct-xip-revert")
SECONDARY = "@secondary"  # boards.yaml build-name suffix: the build linked for the secondary
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass(frozen=True)
class SeedKey:
    """A signing key derived from a seed string: the same PEM on every machine."""

    file: str
    kind: KeyKind
    seed: str

    def pem(self) -> bytes:
        digest = hashlib.sha256(self.seed.encode()).digest()
        key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        if self.kind == "ed25519":
            key = ed25519.Ed25519PrivateKey.from_private_bytes(digest)
        else:
            key = ec.derive_private_key(
                int.from_bytes(digest) % (_P256_ORDER - 1) + 1, ec.SECP256R1()
            )
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public(self) -> PublicKey:
        return PublicKey.from_pem(self.pem(), source=self.file)


KEYS: dict[str, SeedKey] = {
    "p256": SeedKey("mcuboot-p256.pem", "ecdsa-p256", "dfuhil virtual farm/MCUboot key/P-256"),
    "ed25519": SeedKey("mcuboot-ed25519.pem", "ed25519", "dfuhil virtual farm/MCUboot key/Ed25519"),
    # No board trusts it: what a "wrongly signed image" test signs with.
    "rogue": SeedKey("rogue-p256.pem", "ecdsa-p256", "dfuhil virtual farm/rogue key/P-256"),
}


@dataclass(frozen=True)
class McubootSet:
    """One virtual MCUboot build and its application (the slots are NCS-like defaults)."""

    chip: str
    mode: Mode
    key: str  # name in KEYS
    primary: tuple[int, int]
    secondary: tuple[int, int] | None = None
    scratch: tuple[int, int] | None = None
    downgrade_prevention: bool = False
    confirm_at_boot: bool = False  # nRF Desktop: the app confirms itself
    udp: bool = False
    ble: bool = False
    dfu_lock_timeout_ms: int = 0
    serial_recovery: SerialRecovery | None = None

    @property
    def directory(self) -> str:
        return f"mcuboot-{self.mode}"

    @property
    def mcuboot_file(self) -> str:
        return f"mcuboot_{self.mode}.hex"

    def geometry(self, chip: Chip) -> FlashGeometry:
        def slot(span: tuple[int, int] | None) -> Slot | None:
            return Slot(*span) if span is not None else None

        return FlashGeometry(
            mode=self.mode,
            primary=Slot(*self.primary),
            secondary=slot(self.secondary),
            scratch=slot(self.scratch),
            sector_size=chip.page_size,
        )

    @property
    def xip(self) -> bool:
        return self.mode in XIP_MODES

    def builds(self) -> dict[str, tuple[str, Slot]]:
        """boards.yaml build name -> (file name, slot it is linked for)."""
        primary = Slot(*self.primary)
        out = {name: (f"{name}.bin", primary) for name in BUILDS}
        if self.xip and self.secondary is not None:
            for name in BUILDS:
                out[name + SECONDARY] = (f"{name}.secondary.bin", Slot(*self.secondary))
        return out

    def mcuboot_build(self, chip: Chip) -> McubootBuild:
        key = KEYS[self.key].public()
        return McubootBuild(
            geometry=self.geometry(chip),
            key_type=key.type,
            key_der=key.der,
            downgrade_prevention=self.downgrade_prevention,
            serial_recovery=self.serial_recovery,
        )

    def app_build(self, chip: Chip, build: str | None = None) -> SmpAppBuild:
        """The application's params; ``build`` None is the shipped app, else one of BUILDS."""
        fault: Fault | None = None
        if build == "crash-at-boot":
            fault = "crash-at-boot"
        elif build == "never-confirm":
            fault = "never-confirm"
        buf_size, buf_count = stock_netbufs(udp=self.udp, ble=self.ble)
        return SmpAppBuild(
            geometry=self.geometry(chip),
            buf_size=buf_size,
            buf_count=buf_count,
            confirm_at_boot=self.confirm_at_boot,
            fault=fault,
            udp=self.udp,
            ble=self.ble,
            dfu_lock_timeout_ms=self.dfu_lock_timeout_ms,
            led=1 if build == "update" else 0,
        )


_XIP_SLOTS = {"primary": (0xC000, 0x76000), "secondary": (0x82000, 0x76000)}
MCUBOOT_SETS: tuple[McubootSet, ...] = (
    # The Zephyr flow (NCS default mode, the layout of examples/pm_static_nrf52840.yml): the
    # host tests and confirms; SMP over serial, UDP and Bluetooth LE with nRF Desktop's DFU lock.
    McubootSet(
        "nRF52840_xxAA",
        "swap-move",
        "p256",
        primary=(0xC000, 0x76000),
        secondary=(0x82000, 0x76000),
        udp=True,
        ble=True,
        dfu_lock_timeout_ms=5000,
    ),
    McubootSet(
        "nRF52840_xxAA",
        "swap-scratch",
        "ed25519",
        primary=(0xC000, 0x69000),
        secondary=(0x75000, 0x69000),
        scratch=(0xDE000, 0x1E000),
        downgrade_prevention=True,
    ),
    McubootSet(
        "nRF52833_xxAA",
        "overwrite-only",
        "p256",
        primary=(0xC000, 0x37000),
        secondary=(0x43000, 0x37000),
        downgrade_prevention=True,
    ),
    # nRF Desktop style: the higher version boots, the app confirms itself.
    McubootSet(
        "nRF52840_xxAA",
        "direct-xip",
        "p256",
        primary=_XIP_SLOTS["primary"],
        secondary=_XIP_SLOTS["secondary"],
        confirm_at_boot=True,
        udp=True,
        dfu_lock_timeout_ms=5000,
    ),
    McubootSet(
        "nRF52840_xxAA",
        "direct-xip-revert",
        "p256",
        primary=_XIP_SLOTS["primary"],
        secondary=_XIP_SLOTS["secondary"],
        confirm_at_boot=True,
    ),
    # Only serial recovery can update it: entered through GPREGRET or when no app is valid.
    McubootSet(
        "nRF52832_xxAA",
        "single-slot",
        "p256",
        primary=(0x10000, 0x6A000),
        serial_recovery=SerialRecovery(wait_ms=0),
    ),
)


def key_files() -> dict[str, bytes]:
    """``keys/<file>`` -> PEM of every seed key."""
    return {f"{KEYS_DIR}/{key.file}": key.pem() for key in KEYS.values()}


def app_body(
    mset: McubootSet, chip: Chip, build: str | None = None, slot: Slot | None = None
) -> bytes:
    """The unsigned application, linked behind the header at the start of ``slot`` (default:
    the primary): the reset vector in its vector table names that address."""
    name = "smp_svr" if build is None else f"smp_svr {build}"
    behaviour = Behaviour(
        kind="smp_app",
        name=name,
        version="",  # the version is the image header's
        banner="",  # the app prints its own Zephyr boot lines
        params=mset.app_build(chip, build).to_params(),
    )
    start = (slot.start if slot is not None else mset.primary[0]) + HEADER_SIZE
    seed = f"{chip.name}/{mset.directory}/{build or 'app'}"
    return sample_image(start, APP_SIZE, behaviour, seed, ram_end(chip))


def mcuboot_image(mset: McubootSet, chip: Chip) -> bytes:
    """MCUboot at 0x0: its build configuration in the behaviour descriptor."""
    behaviour = Behaviour(
        kind="mcuboot",
        name="MCUboot",
        version="2.1.0",
        banner="",  # the plug-in prints MCUboot's own banner and log
        params=mset.mcuboot_build(chip).to_params(),
    )
    return sample_image(
        0, MCUBOOT_SIZE, behaviour, f"{chip.name}/{mset.mcuboot_file}", ram_end(chip)
    )


def sign_params(mset: McubootSet) -> SignParams:
    """How the shipped app is signed: header 0x200, the primary slot's size, ROM_FIXED for
    direct-xip (it is linked for the primary slot)."""
    xip = mset.xip
    return SignParams(
        header_size=HEADER_SIZE,
        slot_size=mset.primary[1],
        align=4,
        max_align=8,
        overwrite_only=mset.mode in NO_STATUS_MODES,
        rom_fixed=mset.primary[0] if xip else None,
        mode=mset.mode,
    )


def signed_app(mset: McubootSet, body: bytes, key_path: Path, existing: Path | None) -> bytes:
    """The signed app as it sits in the primary slot (padded to it for direct-xip-revert).

    An existing file with the same signed content, the same trailer and a valid signature is
    returned as it is: ECDSA signatures differ on every run, the file must not.
    """
    fresh = sign_image(
        body,
        key_path,
        APP_VERSION,
        params=sign_params(mset),
        confirm=mset.mode == "direct-xip-revert",
        source=mset.directory,
    )
    if mset.mode == "direct-xip-revert":
        fresh = _selected(fresh)
    if existing is None or not existing.is_file():
        return fresh
    try:
        old_file = read_image_file(existing)
        old = parse_image(old_file.data, source=str(existing))
    except (InputError, ImageFormatError):
        return fresh
    new = parse_image(fresh)
    end = max(old.size, new.size)  # signature lengths vary: compare the trailer past both
    unpadded = len(old_file.data) == old.size and len(fresh) == new.size
    padded = len(old_file.data) == len(fresh) and old_file.data[end:] == fresh[end:]
    same = (
        old_file.address == mset.primary[0]
        and old.raw[: old.signed_size] == new.raw[: new.signed_size]
        and (unpadded or padded)
        and verify_signature(old, KEYS[mset.key].public()) is None
    )
    return old_file.data if same else fresh


def _selected(padded: bytes) -> bytes:
    """A confirmed image's trailer as MCUboot leaves it after the first direct-xip-revert boot.

    That mode erases a slot whose magic is not good, and marks the image it boots with
    copy_done ("selected"): the factory image is signed with --pad --confirm, and shipping the
    copy_done MCUboot would write anyway keeps re-provisioning a no-op.
    """
    layout = TrailerLayout(len(padded), status_records=0)
    offset, flag = field_write(layout, "copy_done", FLAG_SET)
    return padded[:offset] + flag + padded[offset + len(flag) :]


def mcuboot_files(chip: Chip, out: Path) -> dict[str, str | bytes]:
    """Relative path -> content for the chip's MCUboot sets (and the keys, if it has any).

    ``out`` is only read: an existing signed app there is kept when still valid.
    """
    sets = [m for m in MCUBOOT_SETS if m.chip == chip.name]
    if not sets:
        return {}
    files: dict[str, str | bytes] = dict(key_files())
    with tempfile.TemporaryDirectory(prefix="dfuhil-keys-") as tmp:
        for mset in sets:
            base = f"{short_name(chip)}/{mset.directory}"
            key_path = Path(tmp) / KEYS[mset.key].file
            if not key_path.exists():
                key_path.write_bytes(KEYS[mset.key].pem())
            app = signed_app(mset, app_body(mset, chip), key_path, out / base / "smp_app.hex")
            files[f"{base}/{mset.mcuboot_file}"] = hex_text(
                to_intelhex([Segment(0, mcuboot_image(mset, chip))])
            )
            files[f"{base}/smp_app.hex"] = hex_text(image_hex(app, mset.primary[0]))
            for name, (file, slot) in mset.builds().items():
                build = name.removesuffix(SECONDARY)
                files[f"{base}/{file}"] = app_body(mset, chip, build, slot)
    return files


def find_set(chip: str, mode: Mode) -> McubootSet:
    for mset in MCUBOOT_SETS:
        if mset.chip == chip and mset.mode == mode:
            return mset
    raise KeyError(f"no virtual MCUboot set for {chip} {mode}")

"""MCUboot signed images: header, TLV areas, hashes, keys and signatures, byte for byte.

One parser serves the host (``dfuhil image show|check``, the SMP host's hash lookups) and the
virtual farm (the simulated MCUboot validates slots with it, the simulated Zephyr app reports
image state with it), so both sides read an image the same way. Layout and constants are those
of MCUboot's ``boot/bootutil/include/bootutil/image.h`` (snapshot 2d4bacc3) and imgtool 2.5.0,
summarised in ../shared/specs/mcuboot-smp.md §1:

- header (32 bytes, little-endian) at offset 0, padded to ``ih_hdr_size``;
- body of ``ih_img_size`` bytes;
- optional protected TLV area (info magic 0x6908, ``it_tlv_tot`` includes its 4-byte info and
  equals ``ih_protect_tlv_size``), then the unprotected area (magic 0x6907);
- the hash covers ``[0, hdr + img + protected)``; the signature signs that digest.

Signing itself is imgtool's job (:mod:`dfuhil.procedures.image_sign`); this module only reads
and verifies, with ``cryptography``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from dfuhil.formats.chips import RAM_BASE, Chip

IMAGE_MAGIC = 0x96F3B83D
IMAGE_MAGIC_V1 = 0x96F3B83C
ERASED_MAGIC = 0xFFFFFFFF
HEADER = struct.Struct("<IIHHIIBBHII")  # 32 bytes
HEADER_SIZE = HEADER.size
TLV_INFO = struct.Struct("<HH")
TLV_ENTRY = struct.Struct("<HH")
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908

# IMAGE_F_* header flags
F_PIC = 0x01
F_ENCRYPTED_AES128 = 0x04
F_ENCRYPTED_AES256 = 0x08
F_NON_BOOTABLE = 0x10
F_RAM_LOAD = 0x20
F_ROM_FIXED = 0x100

FLAG_NAMES = {
    F_PIC: "PIC",
    F_ENCRYPTED_AES128: "ENCRYPTED_AES128",
    F_ENCRYPTED_AES256: "ENCRYPTED_AES256",
    F_NON_BOOTABLE: "NON_BOOTABLE",
    F_RAM_LOAD: "RAM_LOAD",
    F_ROM_FIXED: "ROM_FIXED",
    0x200: "COMPRESSED_LZMA1",
    0x400: "COMPRESSED_LZMA2",
    0x800: "COMPRESSED_ARM_THUMB_FLT",
}


class TlvType(IntEnum):
    """IMAGE_TLV_* from image.h (imgtool uses the same numbers)."""

    KEYHASH = 0x01
    PUBKEY = 0x02
    SHA256 = 0x10
    SHA384 = 0x11
    SHA512 = 0x12
    RSA2048_PSS = 0x20
    ECDSA224 = 0x21
    ECDSA_SIG = 0x22
    RSA3072_PSS = 0x23
    ED25519 = 0x24
    SIG_PURE = 0x25
    ENC_RSA2048 = 0x30
    ENC_KW = 0x31
    ENC_EC256 = 0x32
    ENC_X25519 = 0x33
    ENC_X25519_SHA512 = 0x34
    DEPENDENCY = 0x40
    SEC_CNT = 0x50
    BOOT_RECORD = 0x60
    DECOMP_SIZE = 0x70
    DECOMP_SHA = 0x71
    DECOMP_SIGNATURE = 0x72
    COMP_DEC_SIZE = 0x73
    UUID_VID = 0x74
    UUID_CID = 0x75


HASH_TLVS = {TlvType.SHA256: "sha256", TlvType.SHA384: "sha384", TlvType.SHA512: "sha512"}
SIGNATURE_TLVS = frozenset(
    {TlvType.RSA2048_PSS, TlvType.ECDSA_SIG, TlvType.RSA3072_PSS, TlvType.ED25519}
)
# The wrapped AES key of an encrypted image (imgtool --encrypt), one TLV per key-exchange scheme.
ENC_TLVS = frozenset(
    {
        TlvType.ENC_RSA2048,
        TlvType.ENC_KW,
        TlvType.ENC_EC256,
        TlvType.ENC_X25519,
        TlvType.ENC_X25519_SHA512,
    }
)
F_ENCRYPTED = F_ENCRYPTED_AES128 | F_ENCRYPTED_AES256


class ImageFormatError(ValueError):
    """The bytes are not a well-formed MCUboot image; the message says where and why."""


@dataclass(frozen=True, order=True)
class ImageVersion:
    """``major.minor.revision+build``; ordering is MCUboot's (build number excluded by default)."""

    major: int
    minor: int
    revision: int
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> ImageVersion:
        """``"1.2.3"``, ``"1.2.3+4"`` (imgtool) or ``"1.2.3.4"`` (SMP); ranges as in the header."""
        main, _, build = text.strip().partition("+")
        parts = main.split(".")
        if not build and len(parts) == 4:
            parts, build = parts[:3], parts[3]
        try:
            numbers = [int(p) for p in parts]
            while len(numbers) < 3:
                numbers.append(0)
            build_no = int(build) if build else 0
        except ValueError:
            raise ValueError(
                f"{text!r} is not a version; write major.minor.revision[+build]"
            ) from None
        if len(numbers) != 3:
            raise ValueError(f"{text!r} is not a version; write major.minor.revision[+build]")
        major, minor, revision = numbers
        if not (0 <= major <= 255 and 0 <= minor <= 255 and 0 <= revision <= 0xFFFF):
            raise ValueError(f"{text!r}: major and minor go to 255, revision to 65535")
        if not 0 <= build_no <= 0xFFFFFFFF:
            raise ValueError(f"{text!r}: the build number is a 32-bit unsigned value")
        return cls(major, minor, revision, build_no)

    def key(self, *, use_build: bool = False) -> tuple[int, ...]:
        """What ``boot_compare_version`` compares."""
        base = (self.major, self.minor, self.revision)
        return (*base, self.build) if use_build else base

    def __str__(self) -> str:
        """SMP's form: ``maj.min.rev`` plus ``.build`` only when build != 0."""
        text = f"{self.major}.{self.minor}.{self.revision}"
        return f"{text}.{self.build}" if self.build else text


@dataclass(frozen=True)
class ImageHeader:
    magic: int
    load_addr: int
    hdr_size: int
    protect_tlv_size: int
    img_size: int
    flags: int
    version: ImageVersion

    @classmethod
    def unpack(cls, raw: bytes) -> ImageHeader:
        magic, load, hdr, prot, size, flags, major, minor, rev, build, _pad = HEADER.unpack_from(
            raw
        )
        return cls(magic, load, hdr, prot, size, flags, ImageVersion(major, minor, rev, build))

    def flag_names(self) -> list[str]:
        names = [name for bit, name in FLAG_NAMES.items() if self.flags & bit]
        unknown = self.flags & ~sum(FLAG_NAMES)
        if unknown:
            names.append(f"0x{unknown:X}")
        return names

    @property
    def rom_fixed(self) -> bool:
        return bool(self.flags & F_ROM_FIXED)

    @property
    def bootable(self) -> bool:
        return not self.flags & F_NON_BOOTABLE

    @property
    def encrypted(self) -> bool:
        """``IS_ENCRYPTED(hdr)``: either IMAGE_F_ENCRYPTED_AES* flag."""
        return bool(self.flags & F_ENCRYPTED)


@dataclass(frozen=True)
class Tlv:
    """One TLV entry; ``offset`` is where its 4-byte entry header starts in the image."""

    type: int
    data: bytes
    protected: bool
    offset: int

    @property
    def name(self) -> str:
        try:
            return TlvType(self.type).name
        except ValueError:
            return f"0x{self.type:04X}"


@dataclass(frozen=True)
class McubootImage:
    """A parsed signed image. ``raw`` holds exactly header..end of the unprotected TLVs."""

    header: ImageHeader
    tlvs: tuple[Tlv, ...]
    raw: bytes

    @property
    def size(self) -> int:
        """Bytes from the header to the end of the TLVs (what an upload must carry at least)."""
        return len(self.raw)

    @property
    def signed_size(self) -> int:
        h = self.header
        return h.hdr_size + h.img_size + h.protect_tlv_size

    @property
    def body(self) -> bytes:
        h = self.header
        return self.raw[h.hdr_size : h.hdr_size + h.img_size]

    @property
    def version(self) -> ImageVersion:
        return self.header.version

    def find(self, tlv_type: int) -> Tlv | None:
        return next((t for t in self.tlvs if t.type == tlv_type), None)

    def find_all(self, tlv_type: int) -> list[Tlv]:
        return [t for t in self.tlvs if t.type == tlv_type]

    @property
    def hash_tlv(self) -> Tlv | None:
        return next((t for t in self.tlvs if t.type in HASH_TLVS and not t.protected), None)

    @property
    def image_hash(self) -> bytes | None:
        """The SHA TLV value: what SMP calls ``hash`` and what state-write selects."""
        tlv = self.hash_tlv
        return tlv.data if tlv is not None else None

    def computed_hash(self, algorithm: str | None = None) -> bytes:
        """The digest MCUboot computes: header (with padding), body and protected TLVs."""
        tlv = self.hash_tlv
        name = algorithm or (HASH_TLVS[TlvType(tlv.type)] if tlv is not None else "sha256")
        return hashlib.new(name, self.raw[: self.signed_size]).digest()

    @property
    def hash_ok(self) -> bool:
        tlv = self.hash_tlv
        return tlv is not None and tlv.data == self.computed_hash()

    def encryption(self) -> str | None:
        """What makes this an encrypted image: its IMAGE_F_ENCRYPTED_* flag (``IS_ENCRYPTED``)
        and the ENC TLV holding the wrapped AES key; None without the flag (an ENC TLV alone
        does not make MCUboot decrypt)."""
        flags = [
            FLAG_NAMES[bit]
            for bit in (F_ENCRYPTED_AES128, F_ENCRYPTED_AES256)
            if self.header.flags & bit
        ]
        if not flags:
            return None
        tlvs = [t.name for t in self.tlvs if t.type in ENC_TLVS]
        wrapped = f", TLV {'+'.join(tlvs)}" if tlvs else ", no ENC TLV"
        return f"flag IMAGE_F_{'+'.join(flags)}{wrapped}"

    @property
    def key_hash(self) -> bytes | None:
        """The hash of the signing key: the KEYHASH TLV, else the hash of a PUBKEY TLV (what
        identifies the key; MCUboot itself reads only KEYHASH, see :func:`verify_signature`)."""
        tlv = self.find(TlvType.KEYHASH)
        if tlv is not None:
            return tlv.data
        pub = self.find(TlvType.PUBKEY)
        return hashlib.sha256(pub.data).digest() if pub is not None else None

    @property
    def signature_tlv(self) -> Tlv | None:
        return next((t for t in self.tlvs if t.type in SIGNATURE_TLVS and not t.protected), None)

    @property
    def security_counter(self) -> int | None:
        tlv = self.find(TlvType.SEC_CNT)
        return (
            int.from_bytes(tlv.data, "little") if tlv is not None and len(tlv.data) == 4 else None
        )


def parse_image(data: bytes, *, source: str = "image") -> McubootImage:
    """Parse a signed image (file contents or slot contents; trailing bytes are ignored).

    Raises :class:`ImageFormatError` naming ``source`` and the offset that is wrong: a
    truncated file, a wrong magic, a TLV area whose sizes do not add up.
    """
    if len(data) < HEADER_SIZE:
        raise ImageFormatError(
            f"{source}: {len(data)} bytes is shorter than the 32-byte MCUboot image header "
            "(truncated file?)"
        )
    header = ImageHeader.unpack(data)
    if header.magic != IMAGE_MAGIC:
        if header.magic == ERASED_MAGIC:
            what = "erased flash (0xFFFFFFFF): no image here"
        elif header.magic == IMAGE_MAGIC_V1:
            what = "the legacy v1 magic 0x96F3B83C, which MCUboot no longer boots"
        else:
            what = f"0x{header.magic:08X}"
        raise ImageFormatError(
            f"{source}: image header magic is {what}, not 0x{IMAGE_MAGIC:08X}; is this a signed "
            "MCUboot image (imgtool sign / west sign output, e.g. zephyr.signed.bin)?"
        )
    if header.hdr_size < HEADER_SIZE:
        raise ImageFormatError(
            f"{source}: header size {header.hdr_size} is below the 32-byte minimum"
        )
    tlv_start = header.hdr_size + header.img_size
    if len(data) < tlv_start + TLV_INFO.size:
        raise ImageFormatError(
            f"{source}: {len(data)} bytes, but the header says the body ends at 0x{tlv_start:X} "
            "and a TLV area must follow (truncated file?)"
        )
    tlvs: list[Tlv] = []
    offset = tlv_start
    if header.protect_tlv_size:
        offset = _read_area(data, offset, TLV_PROT_INFO_MAGIC, True, tlvs, source)
        if offset - tlv_start != header.protect_tlv_size:
            raise ImageFormatError(
                f"{source}: protected TLV area is {offset - tlv_start} bytes but the header "
                f"says {header.protect_tlv_size}"
            )
    else:
        (magic,) = struct.unpack_from("<H", data, offset)
        if magic == TLV_PROT_INFO_MAGIC:
            raise ImageFormatError(
                f"{source}: protected TLV area at 0x{offset:X} but the header's "
                "ih_protect_tlv_size is 0"
            )
    end = _read_area(data, offset, TLV_INFO_MAGIC, False, tlvs, source)
    return McubootImage(header=header, tlvs=tuple(tlvs), raw=bytes(data[:end]))


def _read_area(
    data: bytes, start: int, magic: int, protected: bool, out: list[Tlv], source: str
) -> int:
    area = "protected" if protected else "unprotected"
    if len(data) < start + TLV_INFO.size:
        raise ImageFormatError(f"{source}: {area} TLV info at 0x{start:X} is past the end")
    found, total = TLV_INFO.unpack_from(data, start)
    if found != magic:
        raise ImageFormatError(
            f"{source}: expected the {area} TLV info magic 0x{magic:04X} at 0x{start:X} "
            f"(right after the body), found 0x{found:04X}"
        )
    end: int = start + total
    if total < TLV_INFO.size or end > len(data):
        raise ImageFormatError(
            f"{source}: {area} TLV area at 0x{start:X} claims {total} bytes, but the file has "
            f"{len(data) - start} from there (truncated, or a TLV area that lies about its size)"
        )
    offset = start + TLV_INFO.size
    while offset < end:
        if offset + TLV_ENTRY.size > end:
            raise ImageFormatError(
                f"{source}: {area} TLV entry header at 0x{offset:X} crosses the area's "
                f"end 0x{end:X}"
            )
        tlv_type, length = TLV_ENTRY.unpack_from(data, offset)
        if offset + TLV_ENTRY.size + length > end:
            raise ImageFormatError(
                f"{source}: TLV 0x{tlv_type:02X} at 0x{offset:X} says {length} bytes, which runs "
                f"past the {area} area's end 0x{end:X}"
            )
        value = bytes(data[offset + TLV_ENTRY.size : offset + TLV_ENTRY.size + length])
        out.append(Tlv(tlv_type, value, protected, offset))
        offset += TLV_ENTRY.size + length
    return end


def read_slot_image(
    read: Callable[[int, int], bytes], start: int, size: int, *, source: str = "slot"
) -> McubootImage | None:
    """The image at the start of a flash slot; None if the header is erased.

    Raises :class:`ImageFormatError` if something is there but it is not a sound image, or
    if its sizes run past the slot.
    """
    head = read(start, HEADER_SIZE)
    if int.from_bytes(head[:4], "little") == ERASED_MAGIC:
        return None
    header_magic = int.from_bytes(head[:4], "little")
    if header_magic != IMAGE_MAGIC:
        return parse_image(head, source=source)  # raises with the magic explained
    header = ImageHeader.unpack(head)
    tlv_start = header.hdr_size + header.img_size
    if tlv_start + TLV_INFO.size > size:
        raise ImageFormatError(
            f"{source}: header says the body ends at 0x{tlv_start:X}, past the slot's "
            f"0x{size:X} bytes"
        )
    prot = header.protect_tlv_size
    if tlv_start + prot + TLV_INFO.size > size:
        raise ImageFormatError(
            f"{source}: header says the protected TLVs end at 0x{tlv_start + prot:X}, past the "
            f"slot's 0x{size:X} bytes"
        )
    info = read(start + tlv_start + prot, TLV_INFO.size)
    _magic, unprot = TLV_INFO.unpack(info)
    end = min(size, tlv_start + prot + max(unprot, TLV_INFO.size))
    return parse_image(read(start, end), source=source)


VECTOR_TABLE = struct.Struct("<II")  # initial stack pointer, reset handler


def reset_vector(image: McubootImage, chip: Chip) -> int | None:
    """The reset vector of the body's Cortex-M vector table, if it starts with one.

    The body of an image for an nRF5 starts with the vector table its linker placed: an initial
    stack pointer in the chip's RAM, then the absolute address of the reset handler (Thumb bit
    set) in flash. That address says where the image was linked to run. None when the first two
    words are not such a pair (not ARM code, or a test pattern).
    """
    body = image.body
    if len(body) < VECTOR_TABLE.size:
        return None
    sp, reset = VECTOR_TABLE.unpack_from(body)
    in_ram = RAM_BASE < sp <= RAM_BASE + chip.ram_size
    if not (in_ram and reset & 1 and chip.is_flash(reset & ~1)):
        return None
    return int(reset)


# --- keys ------------------------------------------------------------------------------------

KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072")

SIGNATURE_TLV_OF = {
    "ecdsa-p256": TlvType.ECDSA_SIG,
    "ecdsa-p384": TlvType.ECDSA_SIG,
    "ed25519": TlvType.ED25519,
    "rsa-2048": TlvType.RSA2048_PSS,
    "rsa-3072": TlvType.RSA3072_PSS,
}

# SHA256 (SHA384 for P-384) of the public key DER of MCUboot's published sample keys (repo root
# root-*.pem), computed with imgtool 2.5.0 (spec §1.8): anyone can sign with these.
SAMPLE_KEY_HASHES: dict[bytes, str] = {
    bytes.fromhex(h): name
    for h, name in (
        ("fc5701dc6135e1323847bdc40f04d2e5bee5833b23c29f93593d00018cfa9994", "root-rsa-2048.pem"),
        ("449793fb65cd7698753d5b3f35fab15f1e3a45111ff24e1d46741de5ae12d59e", "root-rsa-3072.pem"),
        ("e30466f6b8470c1f29070b17f1e2d3e94d445e3f608087fdc711e4382bb538b6", "root-ec-p256.pem"),
        (
            "85b7bd5f5dff9a03a99927adaf6ca6febde822c1a480928324a8e60323715c57"
            "79461c496a95aee8c4f90b99779f848a",
            "root-ec-p384.pem",
        ),
        ("c1907fa4eac7fae3840a78902b6f0710b037e9968e5c6274a12a28790c7d4e3c", "root-ed25519.pem"),
    )
}


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and what was found."""


@dataclass(frozen=True)
class PublicKey:
    """A verification key as MCUboot embeds it: SPKI DER for EC/Ed25519, PKCS#1 DER for RSA."""

    type: str
    der: bytes

    @property
    def key_hash(self) -> bytes:
        """The KEYHASH TLV value an image signed with the matching private key carries."""
        if self.type == "ecdsa-p384":
            return hashlib.sha384(self.der).digest()
        return hashlib.sha256(self.der).digest()

    @property
    def sample_key(self) -> str | None:
        """The MCUboot sample key file this is, if it is one."""
        return SAMPLE_KEY_HASHES.get(self.key_hash)

    @classmethod
    def from_pem(cls, pem: bytes, *, source: str = "key") -> PublicKey:
        """From a private or public PEM (imgtool keygen / getpub output)."""
        loaded: object
        try:
            loaded = serialization.load_pem_private_key(pem, password=None).public_key()
        except TypeError as exc:
            raise KeyFileError(f"{source}: the private key is password-protected ({exc})") from None
        except (ValueError, UnsupportedAlgorithm):
            try:
                loaded = serialization.load_pem_public_key(pem)
            except (ValueError, UnsupportedAlgorithm):  # a damaged algorithm OID, too
                raise KeyFileError(
                    f"{source}: not a PEM private or public key (make one with "
                    "`dfuhil image keygen` or `imgtool keygen`)"
                ) from None
        return cls.from_crypto(loaded, source=source)

    @classmethod
    def from_crypto(cls, key: object, *, source: str = "key") -> PublicKey:
        if isinstance(key, ec.EllipticCurvePublicKey):
            curve = key.curve.name
            kind = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(curve)
            if kind is None:
                raise KeyFileError(f"{source}: curve {curve} is not one MCUboot verifies")
            der = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return cls(kind, der)
        if isinstance(key, ed25519.Ed25519PublicKey):
            der = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return cls("ed25519", der)
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size not in (2048, 3072):
                raise KeyFileError(f"{source}: RSA-{key.key_size}; MCUboot verifies 2048 or 3072")
            der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
            return cls(f"rsa-{key.key_size}", der)
        raise KeyFileError(f"{source}: {type(key).__name__} is not a key type MCUboot verifies")

    def crypto_key(self) -> object:
        """The ``cryptography`` public key object, for verification."""
        if self.type.startswith("rsa"):
            return _load_pkcs1(self.der)
        return serialization.load_der_public_key(self.der)


def _load_pkcs1(der: bytes) -> rsa.RSAPublicKey:
    """Decode a PKCS#1 RSAPublicKey (SEQUENCE{n, e}) without an ASN.1 library."""

    def read_len(buf: bytes, pos: int) -> tuple[int, int]:
        first = buf[pos]
        if first < 0x80:
            return first, pos + 1
        count = first & 0x7F
        return int.from_bytes(buf[pos + 1 : pos + 1 + count], "big"), pos + 1 + count

    def read_int(buf: bytes, pos: int) -> tuple[int, int]:
        if buf[pos] != 0x02:
            raise ValueError("not an INTEGER")
        length, pos = read_len(buf, pos + 1)
        return int.from_bytes(buf[pos : pos + length], "big"), pos + length

    if not der or der[0] != 0x30:
        raise ValueError("not a PKCS#1 RSAPublicKey")
    _length, pos = read_len(der, 1)
    n, pos = read_int(der, pos)
    e, _ = read_int(der, pos)
    return rsa.RSAPublicNumbers(e, n).public_key()


def load_public_key(path: Path) -> PublicKey:
    """The public half of a PEM key file (private or public), with errors naming the file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
    return PublicKey.from_pem(pem, source=str(path))


def verify_signature(
    image: McubootImage, key: PublicKey, *, encrypted_body: bool = False
) -> str | None:
    """None if ``image`` carries a valid signature by ``key``; otherwise why not (one line).

    Checks what ``bootutil_img_validate`` checks in an MCUboot built without
    ``MCUBOOT_HW_KEY`` (the default; image_validate.c, snapshot 2d4bacc3): a hash TLV that
    matches, a KEYHASH TLV naming this key (``EXPECTED_KEY_TLV`` is ``IMAGE_TLV_KEYHASH``; a
    PUBKEY TLV is not read, so its signature is skipped and the image is not valid), and the
    signature over the digest.

    An encrypted image's hash covers the plaintext: only an MCUboot with the decryption key can
    check it, so it is refused as encrypted. ``encrypted_body=True`` (the host, asking whether
    the signature itself is right) skips the hash comparison and checks the signature over the
    digest the image states.
    """
    digest = image.image_hash
    if digest is None:
        return "no SHA256/384/512 TLV (not an imgtool-signed image?)"
    encryption = image.encryption()
    if encryption is not None and not encrypted_body:
        return (
            f"encrypted ({encryption}): its hash covers the plaintext, which only an MCUboot "
            "built with the decryption key (CONFIG_BOOT_ENCRYPT_IMAGE) can check"
        )
    if encryption is None and not image.hash_ok:
        return "the image hash does not match its contents (corrupted in transit or in flash)"
    sig = image.signature_tlv
    if sig is None:
        return "unsigned: no signature TLV (signed without --key?)"
    keyhash = image.find(TlvType.KEYHASH)
    if keyhash is None:
        if image.find(TlvType.PUBKEY) is not None:
            return (
                "signed with --public-key-format full: the image carries the whole public key "
                "(PUBKEY TLV) and no KEYHASH TLV, but MCUboot built without a hardware key "
                "(MCUBOOT_HW_KEY) looks only for KEYHASH, skips the signature and finds the "
                "image not valid"
            )
        return "signature present but no KEYHASH TLV, so MCUboot cannot pick a key"
    key_hash = keyhash.data
    if key_hash != key.key_hash:
        sample = SAMPLE_KEY_HASHES.get(key_hash)
        which = f"MCUboot's sample key {sample}" if sample else f"key hash {key_hash.hex()[:16]}…"
        trusted = key.key_hash.hex()[:16]
        return f"signed with {which}, not with the key this MCUboot trusts ({trusted}…)"
    if sig.type != SIGNATURE_TLV_OF.get(key.type):
        return f"signature TLV {sig.name} does not fit a {key.type} key"
    pure = image.find(TlvType.SIG_PURE) is not None
    message = image.raw[: image.signed_size] if pure else digest
    try:
        _verify(key, sig.data, message)
    except InvalidSignature:
        return "bad signature: the key hash matches but the signature does not verify"
    except ValueError as exc:
        return f"malformed signature ({exc})"
    return None


def _verify(key: PublicKey, signature: bytes, message: bytes) -> None:
    public = key.crypto_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        algorithm: hashes.HashAlgorithm = (
            hashes.SHA384() if key.type == "ecdsa-p384" else hashes.SHA256()
        )
        # ECDSA-SHA256 over the digest: the digest is the "message" imgtool's sign() hashed.
        # imgtool signs the payload (hashing it itself), which equals signing the digest with
        # Prehashed; MCUboot verifies the digest with bootutil_ecdsa_verify.
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        public.verify(signature, message, ec.ECDSA(Prehashed(algorithm)))
    elif isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, message)
    elif isinstance(public, rsa.RSAPublicKey):
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        public.verify(
            signature,
            message,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            Prehashed(hashes.SHA256()),
        )
    else:  # pragma: no cover - from_crypto refuses other types
        raise ValueError(f"unsupported key {type(public).__name__}")

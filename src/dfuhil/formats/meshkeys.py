"""P-256 signing keys for mesh DFU, as nrfutil's mesh branch made and used them.

nrfutil (pc-nrfutil ``mesh_dfu``, nordicsemi/dfu/signing.py) kept its key as python-ecdsa's
``SigningKey.to_pem()`` output: an unencrypted SEC1 "EC PRIVATE KEY" on the named curve
prime256v1. Signatures are ECDSA with SHA-256 in the raw ``r || s`` form (``sigencode_string``)
and the public key the device page stores is the raw point ``Qx || Qy``; both 64 bytes,
big-endian (shared/specs/mesh-dfu.md 2.4). Keys written here are byte-identical to what
python-ecdsa 0.19 writes (same DER, base64 wrapped at 76 characters; the ecdsa 0.13 nrfutil ran
on wrapped at 64, which every reader, this one included, accepts too), so a lab can move keys
between nrfutil and dfuhil in either direction.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from dfuhil.errors import InputError, Problem

COORDINATE_LENGTH = 32
PUBLIC_KEY_LENGTH = 2 * COORDINATE_LENGTH  # Qx || Qy
SIGNATURE_LENGTH = 2 * COORDINATE_LENGTH  # r || s
PEM_LINE_LENGTH = 76  # python-ecdsa 0.19's der.topem() (0.13 used 64)
GEN_KEY_HINT = "make one with `dfuhil mesh keys --gen-key FILE` (or `nrfutil keys --gen-key FILE`)"

_PRIVATE_BLOCK = re.compile(
    rb"-----BEGIN (EC PRIVATE KEY|PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL
)

_OTHER_PRIVATE_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9]+) PRIVATE KEY-----")


@dataclass(frozen=True)
class SigningKey:
    """A P-256 private key; callers never touch cryptography's types directly."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def public_key(self) -> bytes:
        return public_key_bytes(self)


def generate_key() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()))


def _pem(der: bytes, label: str) -> bytes:
    """PEM the way python-ecdsa writes it (76-character lines), so files match nrfutil's."""
    b64 = base64.b64encode(der)
    lines = [b64[i : i + PEM_LINE_LENGTH] for i in range(0, len(b64), PEM_LINE_LENGTH)]
    body = b"".join(line + b"\n" for line in lines)
    return f"-----BEGIN {label}-----\n".encode() + body + f"-----END {label}-----\n".encode()


def private_key_pem(key: SigningKey) -> bytes:
    """SEC1 "EC PRIVATE KEY", named curve, unencrypted: python-ecdsa ``to_pem()`` bytes."""
    der = key.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return _pem(der, "EC PRIVATE KEY")


def public_key_pem(key: SigningKey) -> str:
    """SubjectPublicKeyInfo "PUBLIC KEY" PEM, as ``nrfutil keys --show-vk pem`` prints it."""
    der = key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _pem(der, "PUBLIC KEY").decode("ascii")


def write_key(key: SigningKey, path: str | Path, *, overwrite: bool = False) -> None:
    """Write the key readable by its owner only; refuse to replace a key unless asked."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise InputError(
            Problem(str(path), None, "", "already exists; refusing to overwrite a signing key")
        ) from None
    except OSError as exc:
        raise InputError(Problem(str(path), None, "", f"cannot write: {exc.strerror}")) from None
    with os.fdopen(fd, "wb") as out:
        out.write(private_key_pem(key))


def _key_problem(path: str | Path, reason: str) -> InputError:
    return InputError(
        Problem(
            str(path),
            None,
            "",
            f"{reason}; a P-256 (prime256v1) private key in PEM is required: {GEN_KEY_HINT}",
        )
    )


def _pkcs8_as_version_0(der: bytes) -> bytes | None:
    """python-ecdsa writes PKCS#8 with version 1 but no public key field, which cryptography
    refuses; with the version set to 0 it is the same key in the form everybody reads."""
    if len(der) < 2 or der[0] != 0x30:
        return None
    head = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    if der[head : head + 3] != b"\x02\x01\x01":
        return None
    return der[: head + 2] + b"\x00" + der[head + 3 :]


def _load_private_pem(block: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(block, password=None)
    except ValueError:
        if not block.startswith(b"-----BEGIN PRIVATE KEY-----"):
            raise
        body = b"".join(line for line in block.splitlines() if not line.startswith(b"-----"))
        fixed = _pkcs8_as_version_0(base64.b64decode(body))
        if fixed is None:
            raise
        return serialization.load_der_private_key(fixed, password=None)


def load_key(path: str | Path) -> SigningKey:
    """Read SEC1 "EC PRIVATE KEY" (nrfutil, python-ecdsa, openssl ecparam) or PKCS#8 PEM."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise _key_problem(path, "key file not found") from None
    except IsADirectoryError:
        raise _key_problem(path, "is a directory, not a key file") from None
    except OSError as exc:
        raise _key_problem(path, f"cannot read ({exc.strerror})") from None
    block = _PRIVATE_BLOCK.search(data)
    if block is None:
        other = _OTHER_PRIVATE_BLOCK.search(data)
        if other is not None and other.group(1) == b"EC":
            raise _key_problem(path, "the EC PRIVATE KEY block has no END line (truncated?)")
        if other is not None and other.group(1) == b"ENCRYPTED":
            raise _key_problem(path, "the key is encrypted (nrfutil never encrypted keys)")
        if other is not None:
            kind = other.group(1).decode("ascii", "replace")
            raise _key_problem(path, f"holds a key of type {kind}, not an EC key")
        if b"PUBLIC KEY-----" in data:
            raise _key_problem(path, "holds only a public key")
        if b"-----BEGIN " in data:
            raise _key_problem(path, "holds no private key PEM block")
        raise _key_problem(path, "is not a PEM file")
    try:
        loaded = _load_private_pem(block.group(0))
    except TypeError:
        raise _key_problem(path, "the key is encrypted (nrfutil never encrypted keys)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _key_problem(path, f"the PEM block cannot be decoded ({exc})") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        kind = type(loaded).__name__.removeprefix("_").replace("PrivateKey", "") or "unknown"
        raise _key_problem(path, f"holds a key of type {kind}, not an EC key")
    if not isinstance(loaded.curve, ec.SECP256R1):
        raise _key_problem(path, f"holds an EC key on {loaded.curve.name}, not P-256")
    return SigningKey(loaded)


def public_key_bytes(key: SigningKey) -> bytes:
    """Qx || Qy, 32 bytes each, big-endian: the device page's ECDSA_PUBLIC_KEY payload."""
    point = key.private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]  # drop the 0x04 "uncompressed" marker


def verification_key_lines(key: SigningKey) -> list[str]:
    """What ``nrfutil keys --show-vk hex`` prints (lowercase hex, X then Y)."""
    text = public_key_bytes(key).hex()
    return [f"Verification key Qx: {text[:64]}", f"Verification key Qy: {text[64:]}"]


def verification_key_code(key: SigningKey) -> list[str]:
    """What ``nrfutil keys --show-vk code`` prints: two C arrays."""
    raw = public_key_bytes(key)

    def array(name: str, coordinate: bytes) -> str:
        values = ", ".join(f"0x{b:02x}" for b in coordinate)
        return f"static uint8_t {name}[] = {{ {values} }};"

    return [array("Qx", raw[:COORDINATE_LENGTH]), array("Qy", raw[COORDINATE_LENGTH:])]


def sign(key: SigningKey, message: bytes) -> bytes:
    """ECDSA P-256 over SHA-256(message), as raw r || s (python-ecdsa ``sigencode_string``)."""
    der = key.private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(COORDINATE_LENGTH, "big") + s.to_bytes(COORDINATE_LENGTH, "big")


def _public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """Raises ValueError unless ``raw`` is Qx || Qy of a point on P-256."""
    if len(raw) != PUBLIC_KEY_LENGTH:
        raise ValueError(f"{len(raw)} bytes, expected {PUBLIC_KEY_LENGTH} (Qx || Qy)")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` (r || s) is valid; False for any bad key, signature or message."""
    if len(signature) != SIGNATURE_LENGTH:
        return False
    try:
        vk = _public_key(public_key)
        r = int.from_bytes(signature[:COORDINATE_LENGTH], "big")
        s = int.from_bytes(signature[COORDINATE_LENGTH:], "big")
        vk.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_from_hex(text: str, *, file: str = "", field: str = "public_key") -> bytes:
    """The device page config's ``public_key``: 128 hex characters, a point on P-256.

    Whitespace is ignored (the SDK generator's ``bytearray.fromhex`` does the same). A point off
    the curve is refused: the bootloader would then reject every signed transfer.
    """
    compact = "".join(text.split())
    if len(compact) != 2 * PUBLIC_KEY_LENGTH or not re.fullmatch(r"[0-9A-Fa-f]*", compact):
        raise InputError(
            Problem(
                file,
                None,
                field,
                f"must be {2 * PUBLIC_KEY_LENGTH} hex characters (Qx || Qy), got "
                f"{len(compact)} characters; print it with `dfuhil mesh keys --show-vk hex KEY`",
            )
        )
    raw = bytes.fromhex(compact)
    try:
        _public_key(raw)
    except ValueError:
        raise InputError(
            Problem(file, None, field, "is not a point on P-256; copy Qx then Qy from --show-vk")
        ) from None
    return raw
